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


def send_study_with_report(node: Node, settings, study, seed: int, tmp_path) -> int:
    """Put the synthetic ``study``'s report in the embedded RIS and C-STORE its files to the node
    over one association (pynetdicom SCU); returns the number of instances sent."""
    from pgsam_node.commands.demo import send_files
    from pgsam_node.commands.ris_cmd import import_csv
    from pgsam_node.commands.synth_cmd import report_row, write_reports_csv

    csv_path = tmp_path / f"reports-{seed}.csv"
    write_reports_csv(csv_path, [report_row(study, seed)])
    import_csv(csv_path, settings, node.db)
    files = [p for paths in study.paths_by_role.values() for p in paths]
    return send_files(files, "127.0.0.1", node.listener.port, settings.dicom.ae_title)


def study_state(node: Node, study_uid: str) -> tuple[str | None, str | None]:
    """(state, state reason) of the study, (None, None) before it exists."""
    with node.db.session() as s:
        st = s.query(Study).filter_by(study_uid=study_uid).one_or_none()
        return (st.state, st.state_reason) if st is not None else (None, None)


def wait_finished(node: Node, study_uid: str, timeout: float = 240.0) -> tuple[str | None, str | None]:
    """Wait until the study is DONE, FAILED or NO_FINDING; returns (state, state reason)."""
    wait_for(lambda: study_state(node, study_uid)[0] in ("DONE", "FAILED", "NO_FINDING"), timeout, 0.5, what="study finished")
    return study_state(node, study_uid)
