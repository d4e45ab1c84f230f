"""Operator retry/resend through the real outbox sender to a real Storage SCP, and the
pipeline's ``finish_sent`` closing the study again (DONE)."""

from __future__ import annotations

import threading

from pynetdicom import AE, AllStoragePresentationContexts, evt

from pgsam_node.flow import actions
from pgsam_node.config import Destination
from pgsam_node.db import Database
from pgsam_node.db.models import OutboxItem, Run, Study
from pgsam_node.deliver.outbox import process_due
from pgsam_node.flow.pipeline import finish_sent

from ..helpers import free_port
from ..opsdata import seed_study


def test_retry_after_dead_delivery_and_resend(settings):
    got: list[str] = []
    lock = threading.Lock()

    def on_store(event):
        with lock:
            got.append(event.dataset.SOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    settings.destinations = [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)]
    db = Database(settings.database_url)
    try:
        dead = seed_study(db, settings.storage_root, "SENDING", outbox_state="DEAD")
        failed_run = seed_study(db, settings.storage_root, "FAILED", accession="A2")
        finish_sent(db)  # the pipeline's outbox job: a DEAD item fails the study
        with db.session() as s:
            st = s.get(Study, dead.study_id)
            assert st.state == "FAILED" and "delivery failed" in st.state_reason
            seg_uid = s.query(OutboxItem).filter_by(study_id=dead.study_id).one().sop_instance_uid

        # Retry of a delivery failure sends again instead of running the model again.
        with db.transaction() as s:
            res = actions.retry(s, s.get(Study, dead.study_id), "alice")
        assert (res.from_state, res.to_state, res.outbox_requeued) == ("FAILED", "SENDING", 1)
        assert process_due(db, settings)["sent"] == 1
        assert got == [seg_uid]
        finish_sent(db)
        with db.session() as s:
            assert s.get(Study, dead.study_id).state == "DONE"
            assert s.query(Run).filter_by(study_id=dead.study_id).one().status == "SENT"

        # Resend a delivered study: sent once more, DONE again.
        with db.transaction() as s:
            res = actions.resend(s, s.get(Study, dead.study_id), "alice")
        assert (res.from_state, res.to_state) == ("DONE", "SENDING")
        assert process_due(db, settings)["sent"] == 1
        assert got == [seg_uid, seg_uid]
        finish_sent(db)
        with db.session() as s:
            st = s.get(Study, dead.study_id)
            assert st.state == "DONE"
            assert [e.actor for e in st.events[-4:]] == ["alice", "node", "alice", "node"]

        # Retry of a failed run goes back to the worker queue.
        with db.transaction() as s:
            res = actions.retry(s, s.get(Study, failed_run.study_id), "alice")
        assert (res.from_state, res.to_state) == ("FAILED", "READY")
    finally:
        server.shutdown()
        db.dispose()
