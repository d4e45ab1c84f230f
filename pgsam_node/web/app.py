"""The FastAPI application: REST API (``/api/v1``), operator dashboard, metrics and health.

Build it with :func:`create_app`; :class:`pgsam_node.web.server.WebServer` runs it in a thread.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pgsam_node.flow import actions as default_actions
from pgsam_node.web.auth import Authenticator, LoginLimiter, SessionSigner, load_or_create_secret
from pgsam_node.web.metrics import DatabaseCollector, readiness

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


def create_app(settings, db, actions: Any = None, findings_from_text=None, on_action=None, model_status=None) -> FastAPI:
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
        :mod:`pgsam_node.flow.actions` (the integrator may wrap them, e.g. to wake a worker).
    findings_from_text
        Report parser ``text -> Findings`` for the findings shown with the matched report when
        the newest run did not record them (``Run.metrics["findings"]``); default
        :func:`pgsam_node.reports.parse.parse_report`.
    on_action
        Called with the :class:`~pgsam_node.flow.actions.ActionResult` after an action committed,
        or with the list of changed :class:`~pgsam_node.db.switches.SwitchState` after a pause or
        resume (the node passes one that wakes its embedded worker).
    model_status
        Callable returning the embedded worker's model load state (``state``: "loading", "loaded",
        "failed", ...), shown by ``/readyz`` under ``checks.model``; a failed load makes it 503.
    """
    from pgsam_node.web.api import router as api_router
    from pgsam_node.web.dashboard import router as dash_router
    from pgsam_node.web.fhir import router as fhir_router

    if findings_from_text is None:
        from pgsam_node.reports.parse import parse_report as findings_from_text
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
    def readyz(request: Request):
        ok, checks = readiness(db, settings)
        if app.state.ctx.auth.authenticate(request) is None:
            # Free bytes and the watermark are for operators only (they tell an attacker how close
            # a flood is to stopping the node); anonymous probes see the verdicts.
            for key in ("free_bytes", "watermark_bytes"):
                checks.get("disk", {}).pop(key, None)
        if model_status is not None:
            # Informational: the node receives while its model loads, so loading is not "unready".
            st = model_status()
            checks["model"] = {"ok": st.get("state") != "failed", **st}
            ok = ok and checks["model"]["ok"]
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
    app.include_router(fhir_router)
    return app
