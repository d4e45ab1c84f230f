from sqlalchemy import inspect

from pgsam_node.db import Base, Database, Study


def _check_schema_matches_models(db: Database) -> None:
    insp = inspect(db.engine)
    tables = set(insp.get_table_names())
    for name, table in Base.metadata.tables.items():
        assert name in tables, f"migration lacks table {name}"
        cols = {c["name"] for c in insp.get_columns(name)}
        assert cols == {c.name for c in table.columns}, f"columns of {name} differ from the models"


def test_sqlite_migrates_and_keeps_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.sqlite3'}"
    db = Database(url)
    _check_schema_matches_models(db)
    with db.transaction() as s:
        s.add(Study(study_uid="1.2.3"))
    db.dispose()
    db2 = Database(url)  # re-open runs the upgrade again: a no-op that keeps rows
    with db2.session() as s:
        assert s.query(Study).filter_by(study_uid="1.2.3").count() == 1
