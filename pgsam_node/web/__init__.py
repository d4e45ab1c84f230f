"""Web service: REST API, operator dashboard, Prometheus metrics, health endpoints."""

from pgsam_node.web.app import create_app  # noqa: F401
from pgsam_node.web.server import WebServer, announce_first_run_token  # noqa: F401
