"""Bind the DICOM port before anything heavy is imported (``python -m pgsam_node serve`` with
``dicom.acceptor_processes`` > 1; issue 17: the port accepts within 2 s of ``serve``, even on a
busy machine).

Only the standard library and PyYAML: the configuration is read for ``dicom.bind``,
``dicom.port`` and ``dicom.acceptor_processes`` (file, then ``PGSAM_DICOM__…`` variables), not
validated. ``serve`` validates the settings as always and uses this socket only if they name the
same address (:func:`take`); anything unexpected here means no early socket, never an error.
"""

from __future__ import annotations

import os
import socket
import sys

_early: tuple[str, int, socket.socket] | None = None


def _env(name: str) -> str | None:
    want = f"PGSAM_DICOM__{name}".upper()
    return next((v for k, v in os.environ.items() if k.upper() == want), None)


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return os.environ.get("PGSAM_CONFIG") or None


def bind_early(argv: list[str] | None = None) -> None:
    """For ``serve`` with acceptor worker processes: listen on the configured DICOM port now."""
    global _early
    argv = sys.argv[1:] if argv is None else argv
    if "serve" not in argv[:1] or any(a in ("-h", "--help") for a in argv):
        return
    try:
        dicom: dict = {}
        path = _config_path(argv)
        if path:
            import yaml

            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
            dicom = dict(data.get("dicom") or {})
        processes = _env("ACCEPTOR_PROCESSES") or dicom.get("acceptor_processes", 1)
        if isinstance(processes, bool) or int(processes) <= 1:
            return
        bind = str(_env("BIND") or dicom.get("bind", "127.0.0.1")).strip()
        port = int(_env("PORT") or dicom.get("port", 11112))
        if not 1 <= port <= 65535:
            return
        _early = (bind, port, socket.create_server((bind, port), backlog=128))
    except Exception:  # noqa: BLE001 - serve binds after validation and reports any problem itself
        _early = None


def take(bind: str, port: int) -> socket.socket | None:
    """The early socket if it listens on (``bind``, ``port``) as validated; else it is closed."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if (early[0], early[1]) == (bind, port):
        return early[2]
    early[2].close()
    return None
