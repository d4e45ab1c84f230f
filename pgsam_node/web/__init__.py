"""Web service: REST API, operator dashboard, Prometheus metrics, health endpoints.

``create_app``, ``WebServer`` and ``announce_first_run_token`` load FastAPI and uvicorn on first
use (PEP 562), so commands that only need :mod:`pgsam_node.web.tokens` start fast.
"""

from __future__ import annotations

_LAZY = {
    "create_app": "pgsam_node.web.app",
    "WebServer": "pgsam_node.web.server",
    "announce_first_run_token": "pgsam_node.web.server",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
