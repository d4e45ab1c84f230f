import pytest

from pgsam_node.db import Database, Study, StudyState
from pgsam_node.errors import PipelineError
from pgsam_node.db.lifecycle import transition


def test_transitions_are_recorded_and_checked(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'n.sqlite3'}")
    with db.transaction() as s:
        st = Study(study_uid="1.2.3")
        s.add(st)
        s.flush()
        transition(s, st, StudyState.STABLE, "no instance for 30 s")
        transition(s, st, StudyState.WAITING_REPORT, "no report yet")
        with pytest.raises(PipelineError, match="not allowed"):
            transition(s, st, StudyState.DONE)
        transition(s, st, StudyState.FAILED, "deadline")
    with db.session() as s:
        st = s.query(Study).one()
        assert st.state == "FAILED"
        assert [(e.from_state, e.to_state) for e in st.events] == [
            ("RECEIVING", "STABLE"),
            ("STABLE", "WAITING_REPORT"),
            ("WAITING_REPORT", "FAILED"),
        ]
        assert st.events[-1].reason == "deadline"
