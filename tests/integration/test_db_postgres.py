from pgsam_node.db import Database, Study

from ..unit.test_db import _check_schema_matches_models


def test_postgres_migrates(pg_url):
    db = Database(pg_url)
    _check_schema_matches_models(db)
    with db.transaction() as s:
        s.add(Study(study_uid="1.2.3.4"))
    with db.session() as s:
        assert s.get(Study, 1).study_uid == "1.2.3.4"
    db.dispose()
