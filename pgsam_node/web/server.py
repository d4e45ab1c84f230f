"""Run the web application with uvicorn in a background thread (started by ``serve``)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import uvicorn

from pgsam_node.web import tokens
from pgsam_node.errors import WebError
from pgsam_node.web.app import create_app

log = logging.getLogger(__name__)


RECOVERY = "pgsam-node token create admin2 --scope admin --config <node.yaml>"


def token_file(storage_root) -> Path:
    """Where the first-run administrator token is written (mode 0600): ``secrets/first-run-admin-token``."""
    return Path(storage_root) / "secrets" / "first-run-admin-token"


def announce_first_run_token(db, storage_root=None, stream=None) -> str | None:
    """Create the first-run ``admin`` token if no token exists yet; say where it is.

    Called only once start-up has succeeded (a failed start creates nothing). The token is
    written to :func:`token_file` (0600) and shown on ``stream`` (stderr) only when that is a
    terminal: a service's stdout/stderr end up in its log (journald, ``docker logs``), and a
    secret never goes there. When tokens exist but none is a usable admin token, the recovery
    command is printed instead.

    Returns
    -------
    str or None
        The new token (tests sign in with it), or None when tokens already existed.
    """
    out = stream or sys.stderr
    with db.transaction() as s:
        token = tokens.ensure_first_run_token(s)
        usable = token is not None or tokens.has_usable_admin(s)
    if token:
        where = None
        if storage_root is not None:
            path = token_file(storage_root)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            os.chmod(path, 0o600)
            where = path
        bar = "=" * 78
        tty = hasattr(out, "isatty") and out.isatty()
        shown = f"\n    {token}\n\n" if tty else "\n"
        print(f"{bar}\nPG-SAM Node first run: an administrator access token was created.{shown}"
              + (f"It is in {where} (mode 0600): read it, sign in, then delete the file.\n" if where else "")
              + f"Sign in to the dashboard with it, or call the API with 'Authorization: Bearer <token>'.\n"
              f"Lost it? {RECOVERY}\n{bar}", file=out, flush=True)
        log.warning("first-run administrator token created%s (the token itself is never logged)",
                    f" and written to {where}" if where else "")
    elif not usable:
        print(f"PG-SAM Node: no usable administrator token exists (all revoked or without the admin scope).\n"
              f"Create one on this machine: {RECOVERY}", file=out, flush=True)
        log.warning("no usable administrator token; create one with: %s", RECOVERY)
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
        if announce:  # only once the service is up: a failed start creates no token
            self.first_run_token = announce_first_run_token(self.db, self.settings.storage_root)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and join its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
