"""Seeded, bounded fuzzing of the HL7 v2 / MLLP intake (issue 14), run by the normal test command.

One in-process :class:`Hl7Listener` takes garbage frames and several hundred mutated ORU^R01
messages whose PID name / ID and report text are marker strings, over a few connections, with
dripping peers alongside. Then the suite checks that

* every frame got an ACK (AA, AE or AR) or its connection was closed, never a hang;
* every stored report came from a message acknowledged AA (nothing is stored without AA);
* no log record (message or traceback) carries a marker name, ID or report text;
* peak RSS growth of this process stays under ``RSS_LIMIT``;
* a clean ORU is still acknowledged AA and stored afterwards.

``PGSAM_FUZZ_SEED`` overrides the seed to explore.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading

import pytest
from sqlalchemy import func, select

from pgsam_node.config import load_settings
from pgsam_node.db import Database, Report
from pgsam_node.reports.hl7 import Hl7Error, Hl7Listener, mllp_frame, read_frame
from tests.fuzz.test_ingest_fuzz import _RssWatch
from tests.helpers import free_port
from tests.hl7_messages import oru, segments

SEED = int(os.environ.get("PGSAM_FUZZ_SEED", "2718"))
N_MUTATED = 300
N_GARBAGE = 60
N_DRIPPERS = 3
RSS_LIMIT = 150 * 1024 * 1024
MARKER_NAME = "ZZHLSEVENMARKER"
MARKER_ID = "ZZHLID0815Q"
MARKER_TEXT = "ZZREPORTTEXTMARKER"
MARKERS = (MARKER_NAME, MARKER_ID, MARKER_TEXT)


def _message(rng: random.Random, i: int) -> str:
    msg = oru(control=f"FZ{i}", patient_id=MARKER_ID, accession=f"ACC{rng.randrange(10**6)}",
              lines=(f"Right parotid 2.1 cm mass {MARKER_TEXT}.", f"IMPRESSION: {MARKER_TEXT} adenoma."),
              status=rng.choice("FCP"))
    return msg.replace("DOE^JANE", f"{MARKER_NAME}^JANE")


def _mutate(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode("utf-8"))
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.randrange(9)
        pos = rng.randrange(len(data)) if data else 0
        if op == 0:  # flip a byte
            if data:
                data[pos] = rng.randrange(256)
        elif op == 1:  # truncate
            del data[pos:]
        elif op == 2:  # insert delimiters
            data[pos:pos] = rng.choice([b"|", b"^", b"~", b"\\", b"&", b"\r", b"||||||", b"^^^^"])
        elif op == 3:  # duplicate a segment
            segs = bytes(data).split(b"\r")
            s = rng.choice(segs)
            segs.insert(rng.randrange(len(segs) + 1), s)
            data = bytearray(b"\r".join(segs))
        elif op == 4:  # invalid UTF-8 / control bytes
            data[pos:pos] = rng.choice([b"\xff\xfe", b"\xc3", b"\x00", b"\x1b[2J", b"\n"])
        elif op == 5:  # shuffle segments
            segs = bytes(data).split(b"\r")
            rng.shuffle(segs)
            data = bytearray(b"\r".join(segs))
        elif op == 6:  # break MSH
            data[0:3] = rng.choice([b"MSX", b"", b"msh", b"MSH|MSH"])
        elif op == 7:  # many result groups
            obr = next((s for s in bytes(data).split(b"\r") if s.startswith(b"OBR")), b"OBR|1")
            data += (b"\r" + obr) * rng.choice([5, 30])
        else:  # long field
            data[pos:pos] = b"X" * rng.choice([100, 5000, 70000])
    return bytes(data)


def _exchange(sock: socket.socket, payload: bytes) -> str | None:
    """Send one frame; the ACK's MSA-1, or None when the listener closed the connection."""
    try:
        sock.sendall(mllp_frame(payload))
        ack = read_frame(sock, timeout=15)
    except (Hl7Error, OSError):
        return None
    msa = segments(ack).get("MSA", [])
    assert len(msa) > 1 and msa[1] in ("AA", "AE", "AR"), ack[:200]
    return msa[1]


def _dripper(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"\x0bMSH|^~\\&|")
                while not stop.wait(0.3):
                    s.sendall(b"X")
        except OSError:
            stop.wait(0.2)


@pytest.mark.timeout(300)
def test_hl7_fuzz(tmp_path, caplog):
    rng = random.Random(SEED)
    settings = load_settings(None, storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0},
                             hl7={"port": free_port(), "timeout_seconds": 5, "message_deadline_seconds": 2,
                                  "max_message_bytes": 64 * 1024, "max_connections_per_host": 8})
    caplog.set_level(logging.DEBUG)
    db = Database(settings.database_url)
    answers: dict[str | None, int] = {}
    aa = 0
    with Hl7Listener(settings, db) as lst:
        watch = _RssWatch()
        stop = threading.Event()
        drippers = [threading.Thread(target=_dripper, args=(lst.port, stop), daemon=True) for _ in range(N_DRIPPERS)]
        for t in drippers:
            t.start()
        sock = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
        try:
            frames = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 10, 300]))) for _ in range(N_GARBAGE)]
            frames += [_mutate(rng, _message(rng, i)) for i in range(N_MUTATED)]
            rng.shuffle(frames)
            for payload in frames:
                a = _exchange(sock, payload)
                answers[a] = answers.get(a, 0) + 1
                if a == "AA":
                    aa += 1
                if a is None:  # closed: the listener dropped this connection, open another
                    sock.close()
                    sock = socket.create_connection(("127.0.0.1", lst.port), timeout=10)
            # Still served afterwards: a clean ORU is acknowledged and stored.
            with db.session() as s:
                before = s.scalar(select(func.count()).select_from(Report))
            assert _exchange(sock, _message(rng, 10**6).encode()) == "AA"
            with db.session() as s:
                after = s.scalar(select(func.count()).select_from(Report))
            assert after == before + 1
        finally:
            sock.close()
            stop.set()
            for t in drippers:
                t.join(10)
        grew = watch.stop()
    db.dispose()

    # Nothing stored without an AA: every report row is one AA (duplicates may store nothing).
    assert before <= aa, (before, aa)
    formatter = logging.Formatter("%(name)s %(message)s")
    text = [formatter.format(r) for r in caplog.records]
    leaked = [t for t in text if any(m in t for m in MARKERS)]
    assert not leaked, leaked[:3]
    assert grew < RSS_LIMIT, f"RSS grew by {grew / 2**20:.0f} MiB"
    # The mutations meant something: some accepted, some refused, some connections dropped.
    assert answers.get("AA", 0) >= 10 and answers.get("AE", 0) + answers.get("AR", 0) >= 50, answers
    print(f"hl7 fuzz seed {SEED}: {N_GARBAGE} garbage frames, {N_MUTATED} mutated ORU, answers {answers}, "
          f"{before} reports stored, RSS +{grew / 2**20:.0f} MiB, {len(text)} log records checked")
