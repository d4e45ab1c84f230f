"""The FastAPI application: REST API (``/api/v1``), operator dashboard, metrics and health.

Build it with :func:`create_app`; :class:`pgsam_node.web.server.WebServer` runs it in a thread.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import actions as default_actions
from .. import tokens
from ..tokens import Principal
from .auth import SESSION_COOKIE, LoginLimiter, SessionData, SessionSigner, load_or_create_secret
from .metrics import DatabaseCollector, readiness

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent

CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_public(settings) -> bool:
    """``web.metrics_public``, or (unset) True only while the web service is bound to loopback."""
    mp = settings.web.metrics_public
    return is_loopback(settings.web.bind) if mp is None else bool(mp)


@dataclass
class Auth:
    principal: Principal
    via: str  # "token" or "session"
    session: SessionData | None = None

    @property
    def csrf(self) -> str | None:
        return self.session.csrf if self.session else None


class Authenticator:
    """Resolves a request to an :class:`Auth` (bearer token first, then the session cookie)."""

    CACHE_SECONDS = 60.0

    def __init__(self, db, signer: SessionSigner):
        self.db = db
        self.signer = signer
        self._cache: dict[str, tuple[int, float]] = {}
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def _by_token(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        with self.db.session() as s:
            if hit and hit[1] > now:
                p = tokens.principal_by_id(s, hit[0])  # re-checks revocation on every request
            else:
                p = tokens.verify_token(s, token)
                if p is not None:
                    with self._lock:
                        if len(self._cache) > 1000:
                            self._cache.clear()
                        self._cache[key] = (p.token_id, now + self.CACHE_SECONDS)
        if p is not None:
            self._touch(p.token_id)
        return p

    def _touch(self, token_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._touched.get(token_id, 0.0) > now - 60:
                return
            self._touched[token_id] = now
        with self.db.transaction() as s:
            tokens.touch(s, token_id)

    def authenticate(self, request: Request) -> Auth | None:
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None
            p = self._by_token(value.strip())
            return Auth(p, "token") if p else None
        data = self.signer.verify(request.cookies.get(SESSION_COOKIE))
        if data is None:
            return None
        with self.db.session() as s:
            p = tokens.principal_by_id(s, data.token_id)
        return Auth(p, "session", data) if p else None


def client_addr(request: Request) -> str | None:
    return request.client.host if request.client else None


def create_app(settings, db, actions: Any = None, findings_from_text=None, on_action=None) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings
        Node settings (``web.*``, storage root for the session secret).
    db
        :class:`pgsam_node.db.Database`.
    actions
        Object with ``retry``, ``reprocess`` and ``resend`` callables of signature
        ``(session, study, actor, remote_addr=None) -> ActionResult``; default
        :mod:`pgsam_node.actions` (the integrator may wrap them, e.g. to wake a worker).
    findings_from_text
        Report parser ``text -> Findings`` for the findings shown with the matched report when
        the newest run did not record them (``Run.metrics["findings"]``); default
        :func:`pgsam_node.report.parse_report`.
    on_action
        Called with the :class:`~pgsam_node.actions.ActionResult` after an action committed
        (the node passes one that wakes its embedded worker).
    """
    from .api import router as api_router
    from .dashboard import router as dash_router

    if findings_from_text is None:
        from ..report import parse_report as findings_from_text
    app = FastAPI(title="PG-SAM Node", version="1", docs_url=None, redoc_url=None, openapi_url="/api/v1/openapi.json")
    secret = load_or_create_secret(settings.storage_root)
    signer = SessionSigner(secret, settings.web.session_hours * 3600.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, settings))
    app.state.ctx = SimpleNamespace(
        settings=settings,
        db=db,
        actions=actions or default_actions,
        findings_from_text=findings_from_text,
        on_action=on_action,
        signer=signer,
        auth=Authenticator(db, signer),
        limiter=LoginLimiter(),
        registry=registry,
        secure_cookie=bool(settings.web.tls_cert_file),
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if not request.url.path.startswith("/static/"):
            h.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz():
        ok, checks = readiness(db, settings)
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request):
        if not metrics_public(settings):
            a = app.state.ctx.auth.authenticate(request)
            if a is None:
                raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api_router, prefix="/api/v1")
    app.include_router(dash_router)
    return app
