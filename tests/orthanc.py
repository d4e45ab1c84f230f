"""A real Orthanc (Debian's /usr/sbin/Orthanc) for tests: temp config, free ports, stopped by handle.

Usage::

    with OrthancServer(tmp_path, modalities={"pgsam": ("PGSAM", "127.0.0.1", 11112)}) as orthanc:
        orthanc.get("/instances")

Orthanc listens on all interfaces (its configuration has no bind address); remote access to the
REST API is off and DicomCheckCalledAet is on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import free_port, wait_for

ORTHANC_BIN = "/usr/sbin/Orthanc"


def orthanc_available() -> bool:
    return Path(ORTHANC_BIN).exists() or shutil.which("Orthanc") is not None


def require_orthanc() -> None:
    if not orthanc_available():
        pytest.skip(f"Orthanc not installed ({ORTHANC_BIN}); install Debian's orthanc package")


class OrthancServer:
    """One Orthanc process.

    Parameters
    ----------
    workdir
        Directory for the config, storage, index and log.
    aet
        Orthanc's DICOM AE title (``DicomAet``).
    modalities
        ``DicomModalities``: name → (AE title, host, port); Orthanc accepts associations from
        these AEs and can push to them.
    always_allow_store
        ``DicomAlwaysAllowStore``: when False (with echo/find/move/get also False), associations
        from AE titles not in ``modalities`` are rejected.
    extra
        More configuration keys (e.g. ``AcceptedTransferSyntaxes``).
    dicom_port
        Fixed DICOM port (default: a free one).
    """

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None,
                 always_allow_store: bool = True, extra: dict[str, Any] | None = None,
                 dicom_port: int | None = None):
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.always_allow_store = always_allow_store
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        allow = self.always_allow_store
        cfg: dict[str, Any] = {
            "Name": "pgsam-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomAlwaysAllowStore": allow,
            "DicomAlwaysAllowEcho": allow,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowMove": False,
            "DicomAlwaysAllowGet": False,
            "DicomCheckModalityHost": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "StableAge": 1,
        }
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancServer:
        require_orthanc()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        self._log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg_path)], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)

        def _up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            return httpx.get(self.url + "/system", timeout=1.0).status_code == 200

        try:
            wait_for(_up, timeout, interval=0.1, what="Orthanc REST API /system")
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.workdir / "orthanc.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    # ---- REST helpers ---------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params or None, timeout=10.0)
        r.raise_for_status()
        return r.json()

    def upload(self, path: Path) -> dict[str, Any]:
        r = httpx.post(self.url + "/instances", content=Path(path).read_bytes(), timeout=30.0)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        return self.get("/instances")

    def find_instance(self, sop_uid: str) -> list[str]:
        """Orthanc IDs of instances with this SOP Instance UID (via /tools/lookup)."""
        r = httpx.post(self.url + "/tools/lookup", content=sop_uid, timeout=10.0)
        r.raise_for_status()
        return [x["ID"] for x in r.json() if x["Type"] == "Instance"]

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
