"""Shared test helpers: free ports, polling with a deadline (never fixed sleeps)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data" / "tcia-pgbm"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - report the last one on timeout
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    def _open() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0

    wait_for(_open, timeout, what=f"port {host}:{port}")


def wait_echo(port: int, called_aet: str, host: str = "127.0.0.1", timeout: float = 120.0) -> None:
    """Wait until the node answers a C-ECHO (the port can accept before the node answers: on a
    loaded machine the first association of a starting node can take longer than a DIMSE timeout)."""
    from pynetdicom import AE

    def _echo() -> bool:
        ae = AE(ae_title="WAITECHO")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate(host, port, ae_title=called_aet)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and status.Status == 0x0000
        finally:
            assoc.release()

    wait_for(_echo, timeout, interval=0.5, what=f"C-ECHO answered on {host}:{port}")


def roles_by_headers(folder: Path) -> dict[str, str]:
    """Series folder name -> the role the node's classifier gives it, from its first file's headers
    (a phantom generator's study: one subfolder per series, no role in the names)."""
    import pydicom

    from pgsam_node.assemble.classify import classify_series, shared_exam_values
    from pgsam_node.ingest.evidence import classification_headers

    headers = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.dcm"))
        assert files, f"{sub.name}: no DICOM files"
        headers[sub.name] = classification_headers(pydicom.dcmread(files[0], stop_before_pixels=True))
    shared = shared_exam_values(list(headers.values()))
    return {name: classify_series(h, shared=shared)[0] for name, h in headers.items()}
