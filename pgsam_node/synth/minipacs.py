"""A small receiving PACS (Storage SCP) for the demo and for tests that need no Orthanc.

It stores every received object as a Part-10 file under ``root`` and remembers what it got.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification, _STORAGE_CLASSES

log = logging.getLogger(__name__)


class MiniPacs:
    """Storage SCP on ``host:port`` (0 = a free port), AE title ``ae_title``."""

    def __init__(self, root: Path, ae_title: str = "MINIPACS", host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ae_title, self.host, self._port = ae_title, host, port
        self.received: list[Path] = []
        self._lock = threading.Lock()
        self._got = threading.Condition(self._lock)
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = FileMetaDataset(event.file_meta)
        path = self.root / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._got:
            self.received.append(path)
            self._got.notify_all()
        return 0x0000

    def start(self) -> MiniPacs:
        ae = AE(ae_title=self.ae_title)
        for uid in _STORAGE_CLASSES.values():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server((self.host, self._port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def wait_for(self, n: int, timeout: float) -> list[Path]:
        """Block until ``n`` objects arrived or ``timeout`` seconds passed; returns what arrived."""
        with self._got:
            self._got.wait_for(lambda: len(self.received) >= n, timeout=timeout)
            return list(self.received)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server = None
