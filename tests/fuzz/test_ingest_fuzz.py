"""Seeded, bounded fuzzing of the receive path (issue 14), run by the normal test command.

One in-process listener (tight deadlines) takes, in order: malformed PDUs, slow peers that drip
bytes (running alongside everything else), UID edge cases, and several hundred mutated data sets
whose PatientName / PatientID are marker strings. Then the suite checks that

* every acknowledged instance (0x0000) is on disk byte-identical to what was sent and indexed once;
* no log record (message or traceback) carries a marker name or ID;
* peak RSS growth of this process stays under ``RSS_LIMIT``;
* DCMTK's storescu is still served normally.

Counts and the seed are constants below (``PGSAM_FUZZ_SEED`` overrides the seed to explore).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import func, select

from pgsam_node.config import load_settings
from pgsam_node.db.models import Instance
from pgsam_node.ingest.dicomnet import dimse, pdu
from tests.factories import Geometry, mr_instance
from tests.helpers import free_port, wait_for
from tests.integration.ingest_fixtures import running_listener
from tests.integration.test_acceptor import RawClient, _ctx, _encode_dataset

SEED = int(os.environ.get("PGSAM_FUZZ_SEED", "1414"))
N_MALFORMED_PDUS = 120
N_MUTATED = 300
N_SLOW_PEERS = 3
#: Peak RSS growth allowed over the whole run (the listener, its threads and buffers, pydicom).
RSS_LIMIT = 200 * 1024 * 1024
MARKER_NAME = "ZZFUZZMARKER^NAMEQ"
MARKER_ID = "ZZFUZZID4711Q"
MARKERS = ("ZZFUZZMARKER", "NAMEQ", "ZZFUZZID4711Q")


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _RssWatch:
    def __init__(self):
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join(2)
        return self.peak - self.base


def _malformed_pdu(rng: random.Random) -> bytes:
    kind = rng.choice([0x01, 0x01, 0x02, 0x04, 0x05, 0x07, 0x09, 0xFF, rng.randrange(256)])
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 17, 68, 70, 200, 1000])))
    declared = rng.choice([len(body), len(body) + 1, max(0, len(body) - 1), 0, 0xFFFFFFFF, 1 << 20])
    raw = struct.pack(">BBI", kind, 0, declared) + body
    if rng.random() < 0.3:
        raw = raw[: rng.randrange(1, len(raw) + 1)]
    return raw


def _send_malformed(port: int, rng: random.Random) -> None:
    for _ in range(N_MALFORMED_PDUS):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(_malformed_pdu(rng))
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(4096):
                pass  # A-ABORT / A-ASSOCIATE-RJ, then the node closes: never a hang
        except OSError:
            pass  # reset or already closed by the node
        finally:
            s.close()


def _slow_peer(port: int, stop: threading.Event, cut: list) -> None:
    """Drip one byte every 0.2 s: the A-ASSOCIATE-RQ deadline must cut it off, again and again."""
    while not stop.is_set():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.settimeout(0.2)
        t0 = time.monotonic()
        try:
            for b in struct.pack(">BBI", 1, 0, 300) + b"\x00" * 300:
                if stop.is_set():
                    break
                s.sendall(bytes((b,)))
                try:
                    s.recv(64)
                    cut.append(time.monotonic() - t0)
                    break
                except TimeoutError:
                    continue
        except OSError:
            cut.append(time.monotonic() - t0)
        finally:
            s.close()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.random()
        pos = rng.randrange(len(b)) if b else 0
        if op < 0.4:
            b[pos] = rng.randrange(256)
        elif op < 0.55:  # corrupt a length field-ish position near the header
            p = rng.randrange(min(len(b), 600))
            b[p:p + 2] = struct.pack("<H", rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
        elif op < 0.7:
            del b[pos:pos + rng.randrange(1, 64)]
        elif op < 0.85:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
        else:
            b = b[: rng.randrange(len(b) // 2, len(b) + 1)]
    return bytes(b)


def _uid_cases() -> list[tuple[str, bool]]:
    """(SOP Instance UID, should be stored)."""
    root = "1.2.826.0.1.3680043.8.498."
    return [
        ((root + "1" * 64)[:64], True),          # exactly 64
        ((root + "2" * 64)[:65], False),         # 65
        ((root + "3" * 64)[:67], False),         # 67
        (root + "4.5e", False),                  # a letter
        (root + "4..5", False),                  # empty component
        (root + "05", True),                     # leading zero: tolerated
        (root + "6\u00e9", False),               # non-ASCII
    ]


def _store(c: RawClient, msg_id: int, sop_uid: str, data: bytes) -> int:
    cmd = {dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: msg_id, dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage,
           dimse.AFFECTED_SOP_INSTANCE_UID: sop_uid, dimse.PRIORITY: 0}
    return c.message(1, cmd, data)[dimse.STATUS]


@pytest.mark.timeout(300)
def test_ingest_fuzz(tmp_path, caplog):
    rng = random.Random(SEED)
    settings = load_settings(None, dicom={"port": free_port(), "refuse_below_free_bytes": 0, "network_timeout": 5,
                                          "associate_rq_deadline": 1.0, "pdu_deadline": 3.0,
                                          "max_pending_per_host": 16, "max_associations_per_host": 8},
                             storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})
    caplog.set_level(logging.DEBUG)
    acked: dict[str, bytes] = {}
    statuses: dict[int, int] = {}
    with running_listener(settings) as (lst, db):
        watch = _RssWatch()
        stop, cut = threading.Event(), []
        slow = [threading.Thread(target=_slow_peer, args=(lst.port, stop, cut), daemon=True)
                for _ in range(N_SLOW_PEERS)]
        for t in slow:
            t.start()
        try:
            _send_malformed(lst.port, rng)

            study = generate_uid()
            c = RawClient(lst.port)
            assert c.associate([_ctx(1, MRImageStorage, ExplicitVRLittleEndian)])[0] == pdu.A_ASSOCIATE_AC
            msg = 0
            for sop_uid, ok in _uid_cases():
                ds = mr_instance(study, generate_uid(), 0)
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                data = _encode_dataset(ds)
                msg += 1
                st = _store(c, msg, sop_uid, data)
                assert (st == 0) == ok, (sop_uid.encode("unicode_escape"), hex(st))
                if st == 0:
                    acked[sop_uid] = data

            series = [generate_uid() for _ in range(4)]
            for i in range(N_MUTATED):
                ds = mr_instance(study, rng.choice(series), i, geometry=Geometry(rows=16, columns=16))
                ds.PatientName, ds.PatientID = MARKER_NAME, MARKER_ID
                data = _mutate(rng, _encode_dataset(ds))
                msg += 1
                try:
                    st = _store(c, msg, ds.SOPInstanceUID, data)
                except (AssertionError, OSError):
                    # The mutation broke the message framing and the node aborted: new association.
                    c.close()
                    c = RawClient(lst.port)
                    assert c.associate([_ctx(1, MRImageStorage, ExplicitVRLittleEndian)])[0] == pdu.A_ASSOCIATE_AC
                    continue
                statuses[st] = statuses.get(st, 0) + 1
                if st == 0:
                    acked[ds.SOPInstanceUID] = data
                    if rng.random() < 0.1:  # the same instance again: idempotent
                        msg += 1
                        assert _store(c, msg, ds.SOPInstanceUID, data) == 0
            c.release()
            c.close()
        finally:
            stop.set()
            for t in slow:
                t.join(10)
        grew = watch.stop()

        # Every acknowledged instance: on disk byte-identical, indexed exactly once.
        with db.session() as s:
            rows = {}
            for uid, path in s.execute(select(Instance.sop_instance_uid, Instance.path)):
                assert uid not in rows, "instance indexed twice"
                rows[uid] = path
            total = s.scalar(select(func.count()).select_from(Instance))
        assert total == len(acked), (total, len(acked))
        for uid, data in acked.items():
            assert uid in rows, "acknowledged instance not indexed"
            assert (settings.storage_root / rows[uid]).read_bytes().endswith(data), "stored bytes differ"

        # Slow peers were cut off by the A-ASSOCIATE-RQ deadline (1 s), not left hanging.
        assert cut and max(cut) < 5, cut

        if shutil.which("/usr/bin/storescu"):
            clean = mr_instance(generate_uid(), generate_uid(), 0)
            path = tmp_path / "clean.dcm"
            clean.save_as(path, enforce_file_format=True)
            r = subprocess.run(["/usr/bin/storescu", "-aec", "PGSAM", "127.0.0.1", str(lst.port), str(path)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            wait_for(lambda: _count(db) == total + 1, what="clean instance indexed")

    formatter = logging.Formatter("%(name)s %(message)s")
    leaked = [formatter.format(r) for r in caplog.records if any(m in formatter.format(r) for m in MARKERS)]
    assert not leaked, leaked[:3]
    assert grew < RSS_LIMIT, f"RSS grew by {grew / 2**20:.0f} MiB"
    # Enough of the mutations were stored, refused and aborted to mean something.
    assert statuses.get(0, 0) >= 20 and sum(v for k, v in statuses.items() if k) >= 20, statuses
    print(f"fuzz seed {SEED}: {N_MALFORMED_PDUS} malformed PDUs, {N_MUTATED} mutated data sets, statuses "
          f"{ {hex(k): v for k, v in sorted(statuses.items())} }, {len(acked)} acknowledged, RSS +{grew / 2**20:.0f} MiB, "
          f"slow peers cut after {min(cut):.1f}-{max(cut):.1f} s, {len(caplog.records)} log records checked")


def _count(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Instance))


