"""The SQLite ingest writer lock across processes (dicom.acceptor_processes > 1): while one
process holds it (indexing, or the assembly step between its stability check and the state
change), no other process of the storage root can take it."""

from __future__ import annotations

import subprocess
import sys

from pgsam_node.config import load_settings
from pgsam_node.ingest import index

_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("held")
"""


def _probe(path) -> str:
    return subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_the_writer_lock_excludes_other_processes_when_shared(tmp_path):
    s = load_settings(None, storage={"root": str(tmp_path)})
    path = tmp_path / index.WRITER_LOCK_NAME
    index.share_write_lock(s)
    try:
        with index._sqlite_write_lock:
            assert _probe(path) == "held"
        assert _probe(path) == "free"
    finally:
        index.share_write_lock(s, on=False)
    with index._sqlite_write_lock:  # back to a thread lock only (one process: as before)
        assert _probe(path) == "free"
