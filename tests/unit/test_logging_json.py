"""JSON log lines carry hashed study/job identifiers, never the raw UID or patient data."""

from __future__ import annotations

import json
import logging

from pgsam_node.flow import actions
from pgsam_node.db import Database
from pgsam_node.db.models import Study
from pgsam_node.logsetup import setup_logging, uid_hash

from ..opsdata import seed_study


def test_json_lines_have_hashed_uid_not_raw(settings, capsys):
    db = Database(settings.database_url)
    seeded = seed_study(db, settings.storage_root, "FAILED")
    capsys.readouterr()
    try:
        setup_logging("INFO", json_format=True)
        with db.transaction() as s:
            st = s.get(Study, seeded.study_id)
            actions.retry(s, st, "alice")
        logging.getLogger("pgsam_node.test").info("job finished", extra={"study": uid_hash(seeded.study_uid), "job": "run-1"})
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert lines, "no log line written"
    h = uid_hash(seeded.study_uid)
    with_study = [x for x in lines if x.get("study") == h]
    assert len(with_study) >= 3  # transition, action, and the job line
    assert any(x.get("job") == "run-1" and x["msg"] == "job finished" for x in lines)
    assert any(x["logger"] == "pgsam_node.db.lifecycle" and "FAILED -> READY" in x["msg"] for x in with_study)
    assert seeded.study_uid not in err and "OPS-TEST-0001" not in err and "Test^Ops" not in err
