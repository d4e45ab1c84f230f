"""Orthanc as the PACS of an end-to-end run: it pushes a study to the node (C-STORE, as an
auto-routing rule would) and the test reads the node's SEG back from it."""

from __future__ import annotations

import httpx

from pgsam_node.db import Run, Study
from pgsam_node.node import Node

from ..helpers import wait_for
from ..orthanc import OrthancServer


def push_and_wait(orthanc: OrthancServer, node: Node, files, study_uid: str, timeout: float = 150.0):
    """Upload ``files`` to Orthanc, have Orthanc C-STORE the study to the node, wait for the
    study to be DONE; returns (SOP Instance UIDs the run sent, the Study row)."""
    for f in files:
        orthanc.upload(f)
    orth_study = [s for s in orthanc.get("/studies") if orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == study_uid][0]
    # Orthanc pushes the study to the node (C-STORE SCU), as an auto-routing rule would.
    r = httpx.post(f"{orthanc.url}/modalities/pgsam/store", json={"Resources": [orth_study], "Synchronous": True}, timeout=120)
    r.raise_for_status()

    def done():
        with node.db.session() as s:
            st = s.query(Study).filter_by(study_uid=study_uid).one_or_none()
            if st is not None and st.state in ("FAILED", "NO_FINDING"):
                raise AssertionError(f"study ended {st.state}: {st.state_reason}")
            return st is not None and st.state == "DONE"

    wait_for(done, timeout, interval=0.3, what="study DONE")
    with node.db.session() as s:
        st = s.query(Study).filter_by(study_uid=study_uid).one()
        runs = s.query(Run).filter_by(study_id=st.id).all()
        assert len(runs) == 1
        return runs[0].output_uids, st


def fetch_from_orthanc(orthanc: OrthancServer, sop_uid: str, tmp_path):
    """The instance ``sop_uid`` as stored in Orthanc (exactly once), written to ``tmp_path``."""
    ids = orthanc.find_instance(sop_uid)
    assert len(ids) == 1, "the SEG is not stored exactly once in Orthanc"
    data = httpx.get(f"{orthanc.url}/instances/{ids[0]}/file", timeout=30).content
    path = tmp_path / "seg-from-orthanc.dcm"
    path.write_bytes(data)
    return path
