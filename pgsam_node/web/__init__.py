"""Web service: REST API, operator dashboard, Prometheus metrics, health endpoints."""

from .app import create_app  # noqa: F401
from .server import WebServer, announce_first_run_token  # noqa: F401
