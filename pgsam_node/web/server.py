"""Run the web application with uvicorn in a background thread (started by ``serve``)."""

from __future__ import annotations

import logging
import sys
import threading
import time

import uvicorn

from pgsam_node.web import tokens
from pgsam_node.errors import WebError
from pgsam_node.web.app import create_app

log = logging.getLogger(__name__)


def announce_first_run_token(db, stream=None) -> str | None:
    """Create the first-run ``admin`` token if no token exists yet and print it ONCE on ``stream``
    (stderr). Returns it (tests sign in with it), or None when tokens already exist."""
    with db.transaction() as s:
        token = tokens.ensure_first_run_token(s)
    if token:
        out = stream or sys.stderr
        bar = "=" * 78
        print(f"{bar}\nPG-SAM Node first run: the administrator access token (shown only this once):\n\n"
              f"    {token}\n\nSign in to the dashboard with it, or call the API with "
              f"'Authorization: Bearer <token>'.\nMore tokens: pgsam-node token create NAME [--scope ...]\n{bar}",
              file=out, flush=True)
        log.warning("first-run administrator token created and printed on the console (not logged)")
    return token


class WebServer:
    """The dashboard/API/metrics service on ``web.bind``:``web.port``.

    Parameters
    ----------
    settings, db
        Node settings and :class:`pgsam_node.db.Database`.
    app
        A prepared FastAPI app; default :func:`create_app(settings, db, **app_kwargs)`.
    """

    def __init__(self, settings, db, app=None, **app_kwargs):
        self.settings = settings
        self.db = db
        self.app = app or create_app(settings, db, **app_kwargs)
        self.first_run_token: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        srv = self._server
        if srv is not None and getattr(srv, "servers", None):
            for s in srv.servers:
                for sock in s.sockets:
                    return sock.getsockname()[1]
        return self.settings.web.port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.web.tls_cert_file else "http"
        host = self.settings.web.bind
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}"

    def start(self, timeout: float = 20.0, announce: bool = True) -> None:
        """Start serving in a daemon thread; returns once the socket is bound.

        Raises
        ------
        WebError
            The server did not come up (port in use, bad certificate).
        """
        if self._thread is not None:
            raise WebError("web server already started")
        if announce:
            self.first_run_token = announce_first_run_token(self.db)
        w = self.settings.web
        if bool(w.tls_cert_file) != bool(w.tls_key_file):
            raise WebError("web.tls_cert_file and web.tls_key_file go together")
        config = uvicorn.Config(
            self.app, host=w.bind, port=w.port, log_config=None, access_log=False, lifespan="off",
            ssl_certfile=str(w.tls_cert_file) if w.tls_cert_file else None,
            ssl_keyfile=str(w.tls_key_file) if w.tls_key_file else None,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the main thread owns signals
        self._thread = threading.Thread(target=self._server.run, name="pgsam-web", daemon=True)
        self._thread.start()
        waiter = threading.Event()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            waiter.wait(0.05)
        if not self._server.started:
            self.stop()
            raise WebError(f"web server did not start on {w.bind}:{w.port} (port in use or bad TLS files?)")
        log.info("web service on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and join its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
