"""`python -m pgsam_node serve` as a subprocess, driven by DCMTK echoscu/storescu and pynetdicom."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from pgsam_node.ingest.spool import leftover_tmp

from ..factories import mr_study
from ..helpers import PROJECT_ROOT, free_port, wait_for, wait_port

pytestmark = pytest.mark.skipif(not shutil.which("storescu"), reason="DCMTK storescu/echoscu not installed")
ENV = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TCP_NODELAY="1")


class Node:
    """A serve subprocess with its own config; stopped by handle."""

    def __init__(self, tmp: Path, **sections):
        self.port = free_port()
        self.root = tmp / "storage"
        cfg = {
            "dicom": {"port": self.port, "refuse_below_free_bytes": 0},
            "storage": {"root": str(self.root), "min_free_bytes": 0},
            "assembly": {"stable_seconds": 1, "check_interval_seconds": 0.2},
            "web": {"enabled": False},
        }
        for k, v in sections.items():
            cfg.setdefault(k, {}).update(v)
        self.config = tmp / "node.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = tmp / "serve.log"
        self.proc = None

    def start(self):
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "pgsam_node", "serve", "--config", str(self.config)],
                                     env=ENV, stdout=self._logf, stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._logf.close()
        return self.proc.returncode

    def status(self):
        r = subprocess.run([sys.executable, "-m", "pgsam_node", "status", "--json", "--config", str(self.config)],
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["studies"]


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path).start()
    yield n
    n.stop()


def test_echoscu_storescu_status_and_clean_shutdown(node, tmp_path):
    r = subprocess.run(["echoscu", "-aec", "PGSAM", "127.0.0.1", str(node.port)], env=ENV, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    specs = mr_study({"T1": 4, "T1C": 4, "T2": 5})  # SeriesNumber 1, 2, 3
    for role, spec in specs.items():
        spec.write(tmp_path / role.lower())
    study = specs["T1"].study_uid
    r = subprocess.run(["storescu", "-aec", "PGSAM", "-aet", "PACS", "+sd", "+r", "127.0.0.1", str(node.port),
                        str(tmp_path / "t1"), str(tmp_path / "t1c"), str(tmp_path / "t2")],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    studies = wait_for(lambda: [s for s in node.status() if s["state"] not in ("RECEIVING", None)], 60, 0.3, what="study assembled (past RECEIVING)")
    assert len(studies) == 1 and studies[0]["study_uid"] == study
    series = {s["series_number"]: s for s in studies[0]["series"]}
    assert {k: (v["role"], v["instance_count"], v["role_selected"]) for k, v in series.items()} == {
        1: ("T1", 4, True), 2: ("T1C", 4, True), 3: ("T2", 5, True)}
    assert "ContrastBolusAgent" in series[2]["role_reason"]
    table = subprocess.run([sys.executable, "-m", "pgsam_node", "status", "--config", str(node.config)],
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert study in table.stdout and "T1C" in table.stdout
    assert node.stop() == 0
    log = node.log.read_text()
    assert "DICOM listener PGSAM on 127.0.0.1" in log and "node stopped" in log
    assert study not in log  # UIDs are hashed in logs


def test_real_studies_classified_by_the_running_node(node, shared_data):
    r = subprocess.run(["storescu", "-aec", "PGSAM", "+sd", "+r", "127.0.0.1", str(node.port), str(shared_data)],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    studies = wait_for(lambda: (lambda s: s if len(s) == 2 and all(x["state"] not in ("RECEIVING", None) for x in s) else None)(node.status()),
                       90, 0.5, what="both studies assembled")
    expected = {"T1pre_reg": "T1", "T1post": "T1C", "T2_reg": "T2", "Mask_Tumor": "OTHER"}
    for st in studies:
        got = {s["description"]: s["role"] for s in st["series"]}
        assert got == expected
        mask = next(s for s in st["series"] if s["description"] == "Mask_Tumor")
        assert "Secondary Capture" in mask["role_reason"] and not mask["role_selected"]
        assert all(s["instance_count"] > 20 for s in st["series"])


def _acked_sender(port, dsets, acked, errors):
    from .ingest_fixtures import scu

    try:
        assoc = scu("KILLTEST").associate("127.0.0.1", port, ae_title="PGSAM")
        for ds in dsets:
            if not assoc.is_established:
                return
            rsp = assoc.send_c_store(ds)
            if rsp and "Status" in rsp and int(rsp.Status) == 0:
                acked.append(ds.SOPInstanceUID)
            else:
                return
        assoc.release()
    except Exception as exc:  # noqa: BLE001 - the peer died: expected here
        errors.append(exc)


def test_kill_9_mid_transfer_loses_no_acknowledged_instance(tmp_path):
    import threading

    import pydicom
    from sqlalchemy import create_engine, text

    from ..factories import Geometry, mr_instance

    node = Node(tmp_path).start()
    study, series = generate_uid(), generate_uid()
    dsets = [mr_instance(study, series, i, geometry=Geometry(rows=96, columns=96)) for i in range(200)]
    acked, errors = [], []
    t = threading.Thread(target=_acked_sender, args=(node.port, dsets, acked, errors))
    t.start()
    try:
        wait_for(lambda: len(acked) >= 25, 120, 0.01, what="25 acknowledged instances")
        node.proc.kill()  # SIGKILL in the middle of the transfer
        node.proc.wait(30)
    finally:
        t.join(60)
    assert 25 <= len(acked) < len(dsets), "the kill must land mid-transfer"
    by_uid = {ds.SOPInstanceUID: ds for ds in dsets}
    spool_files = list((node.root / "spool").rglob("*.dcm"))
    # No half file in the spool: every file there parses completely.
    for f in spool_files:
        assert (pydicom.dcmread(f).pixel_array == by_uid[f.stem].pixel_array).all()
    on_disk = {f.stem for f in spool_files}
    assert set(acked) <= on_disk
    engine = create_engine(f"sqlite:///{node.root / 'node.sqlite3'}")
    with engine.connect() as c:
        rows = {r[0] for r in c.execute(text("SELECT sop_instance_uid FROM instances"))}
    engine.dispose()
    assert set(acked) <= rows, "an acknowledged instance has no index row"
    # Restart: leftovers cleaned, index consistent, and the sender can finish the study.
    node._logf.close()
    node.start()
    try:
        wait_for(lambda: not leftover_tmp(node.root / "tmp"), 30, what="tmp cleaned")
        acked2, errors2 = [], []
        _acked_sender(node.port, dsets, acked2, errors2)
        assert len(acked2) == len(dsets) and not errors2
        st = node.status()
        assert len(st) == 1 and st[0]["series"][0]["instance_count"] == len(dsets)
    finally:
        assert node.stop() == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_gives_a700_and_keeps_every_acknowledged_instance(tmp_path, small_tmpfs):
    import pydicom

    from ..factories import Geometry, mr_instance

    node = Node(tmp_path, storage={"root": str(small_tmpfs), "min_free_bytes": 0},
                database={"url": f"sqlite:///{tmp_path / 'index.sqlite3'}"}).start()
    try:
        study, series = generate_uid(), generate_uid()
        dsets = [mr_instance(study, series, i, geometry=Geometry(rows=256, columns=256)) for i in range(40)]  # ~5 MB into a 3 MB disk
        from .ingest_fixtures import scu

        ae = scu()
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60  # serve loads the model meanwhile: slow on 2 busy cores
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PGSAM")
        assert assoc.is_established
        answers = [assoc.send_c_store(ds) for ds in dsets]
        assert all("Status" in a for a in answers), "a C-STORE got no answer (association aborted or timed out)"
        statuses = [int(a.Status) for a in answers]
        assoc.release()
        assert 0xA700 in statuses and statuses[0] == 0
        acked = [ds for ds, st in zip(dsets, statuses) if st == 0]
        for ds in acked:
            f = next((small_tmpfs / "spool").rglob(f"{ds.SOPInstanceUID}.dcm"))
            assert (pydicom.dcmread(f).pixel_array == ds.pixel_array).all()
        assert len(list((small_tmpfs / "spool").rglob("*.dcm"))) == len(acked)
        assert not leftover_tmp(small_tmpfs / "tmp")
        # still serving: echo works, and the instance count matches what was acknowledged
        r = subprocess.run(["echoscu", "-aec", "PGSAM", "127.0.0.1", str(node.port)], env=ENV, capture_output=True, timeout=60)
        assert r.returncode == 0
        assert node.status()[0]["series"][0]["instance_count"] == len(acked)
    finally:
        assert node.stop() == 0


def test_second_serve_on_the_same_storage_root_fails_before_touching_it(node, tmp_path):
    """The second node takes the storage root's lock first: it exits with a clear error and the
    live node's temporary files (an in-flight transfer) are left alone."""
    inflight = node.root / "tmp" / "12345-1-1.part"
    inflight.write_bytes(b"in flight")
    other = tmp_path / "second"
    other.mkdir()
    cfg = yaml.safe_load(node.config.read_text())
    cfg["dicom"]["port"] = free_port()
    (other / "node.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "pgsam_node", "serve", "--config", str(other / "node.yaml")],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "in use by another node" in r.stdout + r.stderr
    assert inflight.exists(), "the second serve deleted the live node's temporary file"
    r = subprocess.run(["echoscu", "-aec", "PGSAM", "127.0.0.1", str(node.port)], env=ENV, capture_output=True,
                       timeout=60)
    assert r.returncode == 0
