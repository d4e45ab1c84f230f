"""The Orthanc auto-routing recipe of deploy/orthanc in a real Orthanc: MR studies go to the node
once stable, each series once; the SEG coming back does not bounce the images again, and a late
MR series is forwarded on its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import MRImageStorage, SegmentationStorage

from ..helpers import PROJECT_ROOT, free_port, wait_for, wait_port
from ..factories import MRSeries
from ..opsdata import make_seg

ORTHANC = "/usr/sbin/Orthanc"
LUA = PROJECT_ROOT / "deploy" / "orthanc" / "autorouting.lua"


@pytest.fixture
def node_scp():
    """A storage SCP standing in for the node's listener (AE PGSAM); records what arrives."""
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_store(event):
        ds = event.dataset
        with lock:
            got.append((ds.Modality, ds.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PGSAM")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, got
    server.shutdown()


@pytest.fixture
def orthanc(tmp_path, node_scp):
    if not Path(ORTHANC).exists():
        pytest.skip("Debian package orthanc not installed")
    cfg_src = json.loads((PROJECT_ROOT / "deploy" / "orthanc" / "orthanc.json").read_text())
    dicom_port, http_port = free_port(), free_port()
    cfg = dict(cfg_src)
    cfg.update(
        StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"), DicomPort=dicom_port,
        HttpPort=http_port, RemoteAccessAllowed=False, AuthenticationEnabled=False, StableAge=1,
        LuaScripts=[str(LUA)], Plugins=[],
    )
    cfg["DicomModalities"] = {"pgsam": dict(cfg_src["DicomModalities"]["pgsam"], Host="127.0.0.1", Port=node_scp[0])}
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    log = open(tmp_path / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(http_port)
        wait_port(dicom_port)
        yield dicom_port, f"http://127.0.0.1:{http_port}", tmp_path / "orthanc.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _store(port: int, datasets) -> None:
    ae = AE(ae_title="MRSCANNER")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(SegmentationStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def test_stable_mr_study_is_forwarded_once(orthanc, node_scp):
    if not shutil.which(ORTHANC):
        pytest.skip("Orthanc not executable")
    dicom_port, rest, log = orthanc
    _port, got = node_scp
    study_uid = generate_uid()
    t1c = MRSeries(study_uid=study_uid, n_slices=4, series_number=5, description="T1 POST GD").datasets()
    _store(dicom_port, t1c)
    wait_for(lambda: len(got) >= 4, 30, what="MR series forwarded by the Lua script")
    assert sorted(u for _m, u in got) == sorted(d.SOPInstanceUID for d in t1c)

    # The node's SEG comes back into the same study: the study becomes stable again, but the MR
    # images are not sent a second time and the SEG is not sent to the node.
    seg, _best = make_seg(t1c, [0, 9, 16, 0])
    _store(dicom_port, [seg])
    studies = httpx.get(f"{rest}/studies").json()
    assert len(studies) == 1
    wait_for(lambda: httpx.get(f"{rest}/studies/{studies[0]}").json()["IsStable"], 30, what="study stable after SEG")
    # A late MR series afterwards is forwarded alone (it also proves the SEG's stable event ran).
    t2 = MRSeries(study_uid=study_uid, n_slices=2, series_number=3, description="T2 late").datasets()
    _store(dicom_port, t2)
    wait_for(lambda: len(got) >= 6, 30, what="late MR series forwarded")
    uids = [u for _m, u in got]
    assert len(uids) == len(set(uids)) == 6, "an instance was forwarded twice"
    assert {m for m, _u in got} == {"MR"} and seg.SOPInstanceUID not in uids
    assert "PG-SAM: forwarded" in log.read_text()
