"""Operator dashboard: server-rendered HTML (Jinja2), no CDN, no inline script or style (the CSP
forbids them); CSS and a few lines of JS come from ``/static``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from pgsam_node.web import tokens
from pgsam_node.db.models import AuditLog, OutboxState, Study
from pgsam_node.web import operations, queries
from pgsam_node.web.api import STATES, run_action
from pgsam_node.web.auth import Auth, client_addr
from pgsam_node.web.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, csrf_ok

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
STATE_CLASS = {
    "DONE": "ok", "NO_FINDING": "ok", "FAILED": "bad", "RUNNING": "busy", "ENCODED": "busy", "SENDING": "busy",
    "READY": "queued", "WAITING_REPORT": "wait", "WAITING_SEQUENCES": "wait", "RECEIVING": "wait", "STABLE": "wait",
}
templates.env.globals["state_class"] = lambda s: STATE_CLASS.get(s, "")
templates.env.globals["human_age"] = queries.human_age


def _ctx(request: Request):
    return request.app.state.ctx


def _auth(request: Request) -> Auth | None:
    return _ctx(request).auth.authenticate(request)


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)


def _safe_next(nxt: str | None) -> str:
    # Only local paths: no scheme, no host, no protocol-relative "//host".
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/"
    return nxt


def _flash_sig(request: Request, msg: str) -> str:
    key = _ctx(request).signer._key
    return hmac.new(key, b"flash\0" + msg.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _flash_param(request: Request, msg: str, kind: str) -> str:
    text = f"{kind}:{msg}"
    b = base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")
    return f"flash={b}.{_flash_sig(request, text)}"


def _read_flash(request: Request) -> dict | None:
    """A message our own redirect signed (so a crafted link cannot put words on the page)."""
    raw = request.query_params.get("flash")
    if not raw or "." not in raw:
        return None
    b, sig = raw.rsplit(".", 1)
    try:
        text = base64.urlsafe_b64decode(b + "=" * (-len(b) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(_flash_sig(request, text), sig):
        return None
    kind, _, msg = text.partition(":")
    return {"kind": kind, "msg": msg}


def _render(request: Request, name: str, a: Auth | None, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("refresh", 0)
    context.update(user=a.principal if a else None, csrf=a.csrf if a else None, flash=_read_flash(request))
    if a is not None:
        # The paused-parts banner on every page (one small read).
        states = context.get("switches") or operations.switch_states(request)
        context["paused"] = [st for st in states.values() if st.paused]
    return templates.TemplateResponse(request, name, context, status_code=status)


# ---- sign-in ---------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None):
    nonce = secrets.token_urlsafe(24)
    resp = _render(request, "login.html", None, next=_safe_next(next), login_csrf=nonce, error=None)
    resp.set_cookie(LOGIN_CSRF_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                    secure=_ctx(request).secure_cookie, path="/login")
    return resp


@router.post("/login")
async def login(request: Request):
    c = _ctx(request)
    form = await request.form()
    addr = client_addr(request) or "?"
    nxt = _safe_next(str(form.get("next") or "/"))
    if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), str(form.get("csrf") or "")):
        raise HTTPException(403, "sign-in form expired or CSRF token missing; reload the page")
    wait = c.limiter.retry_after(addr)
    if wait > 0:
        resp = _render(request, "login.html", None, status=429, next=nxt, login_csrf=request.cookies.get(LOGIN_CSRF_COOKIE),
                       error=f"Too many failed sign-ins; try again in {int(wait) + 1} s.")
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    token = str(form.get("token") or "").strip()
    with c.db.transaction() as s:
        p = tokens.verify_token(s, token) if token else None
        if p is None:
            s.add(AuditLog(actor="anonymous", action="signin.failed", target=None, detail={}, remote_addr=addr))
        else:
            s.add(AuditLog(actor=p.name, action="signin", target=f"token:{p.name}", detail={}, remote_addr=addr))
            tokens.touch(s, p.token_id)
    if p is None:
        c.limiter.failure(addr)
        log.warning("failed sign-in", extra={"remote": addr})
        return _render(request, "login.html", None, status=401, next=nxt, login_csrf=request.cookies.get(LOGIN_CSRF_COOKIE),
                       error="That token is not valid.")
    c.limiter.success(addr)
    value, _data = c.signer.issue(p.token_id)
    log.info("sign-in by %s", p.name, extra={"actor": p.name})
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(SESSION_COOKIE, value, max_age=int(c.signer.lifetime), httponly=True, samesite="strict",
                    secure=c.secure_cookie, path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout")
async def logout(request: Request):
    a = _auth(request)
    form = await request.form()
    if a is not None and a.via == "session":
        if not csrf_ok(a.csrf, str(form.get("csrf") or "")):
            raise HTTPException(403, "CSRF token missing or wrong")
        with _ctx(request).db.transaction() as s:
            s.add(AuditLog(actor=a.principal.name, action="signout", target=None, detail={}, remote_addr=client_addr(request)))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# ---- pages -----------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def index(request: Request, state: str | None = None, offset: int = 0):
    a = _auth(request)
    if a is None:
        return _login_redirect(request)
    state = state if state in STATES else None
    with _ctx(request).db.session() as s:
        total, items = queries.list_studies(s, state, 100, max(0, offset))
        counts = queries.state_counts(s)
    return _render(request, "studies.html", a, studies=items, counts=counts, total=total, state=state, states=STATES,
                   offset=max(0, offset), refresh=_ctx(request).settings.web.refresh_seconds)


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: int, request: Request):
    a = _auth(request)
    if a is None:
        return _login_redirect(request)
    c = _ctx(request)
    with c.db.session() as s:
        st = s.get(Study, study_id)
        if st is None:
            return _render(request, "message.html", a, status=404, title="Not found", message=f"No study {study_id}.")
        d = queries.study_summaries(s, [st], detail=True, settings=c.settings)[0]
        series, events, runs = d["series"], d["timeline"], d["runs"]
        rep = queries.report_view(s, st, a.principal.can("report-text"), c.findings_from_text)
        outbox = queries.outbox_items(s, study_id=study_id)
    has_seg = any(r["output_paths"] for r in runs) and not d["purged"]
    return _render(request, "study.html", a, study=d, series=series, events=events, report=rep, runs=runs,
                   outbox=outbox, has_seg=has_seg, can_act=a.principal.can("actions"))


@router.get("/studies/{study_id}/preview.png")
def study_preview(study_id: int, request: Request):
    from pgsam_node.web.preview import PreviewUnavailable, render_preview

    a = _auth(request)
    if a is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    c = _ctx(request)
    try:
        png = render_preview(c.db, c.settings, study_id)
    except PreviewUnavailable as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


async def _form_auth(request: Request) -> tuple[Auth, dict]:
    """The principal of a dashboard POST and its form; 401 without one, 403 on a bad CSRF token."""
    a = _auth(request)
    if a is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    form = await request.form()
    # Cookie-authenticated POST: the session's CSRF token must come back in the form (SameSite
    # Strict is the first line, this the second).
    if a.via == "session" and not csrf_ok(a.csrf, str(form.get("csrf") or "")):
        raise HTTPException(403, "CSRF token missing or wrong")
    return a, dict(form)


@router.post("/studies/{study_id}/action/{name}")
async def study_action(study_id: int, name: str, request: Request):
    a, _form = await _form_auth(request)
    if name not in ("retry", "reprocess", "resend", "run_now"):
        raise HTTPException(404, f"unknown action {name!r}")
    try:
        res = run_action(request, a, study_id, name)
        flash = _flash_param(request, f"{name}: {res.message} ({res.from_state} → {res.to_state})", "ok")
    except HTTPException as exc:
        if exc.status_code != 409:
            raise
        flash = _flash_param(request, f"{name} refused: {exc.detail}", "bad")
    return RedirectResponse(f"/studies/{study_id}?{flash}", status_code=303)


@router.get("/errors", response_class=HTMLResponse)
def errors_page(request: Request):
    a = _auth(request)
    if a is None:
        return _login_redirect(request)
    with _ctx(request).db.session() as s:
        e = queries.errors(s)
    return _render(request, "errors.html", a, failed=e["failed_studies"], dead=e["dead_outbox"])


@router.get("/outbox", response_class=HTMLResponse)
def outbox_page(request: Request, state: str | None = None):
    a = _auth(request)
    if a is None:
        return _login_redirect(request)
    states = [x.value for x in OutboxState]
    state = state if state in states else None
    with _ctx(request).db.session() as s:
        items = queries.outbox_items(s, state=state)
    return _render(request, "outbox.html", a, items=items, state=state, states=states)



# ---- node-wide operator tools ------------------------------------------------------------------
@router.get("/node", response_class=HTMLResponse)
def node_page(request: Request):
    a = _auth(request)
    if a is None:
        return _login_redirect(request)
    return _render(request, "node.html", a, switches=operations.switch_states(request),
                   destinations=operations.destinations(request), can_act=a.principal.can("actions"))


@router.post("/node/switches/{what}/{verb}")
async def node_switch(what: str, verb: str, request: Request):
    a, form = await _form_auth(request)
    if verb not in ("pause", "resume"):
        raise HTTPException(404, f"unknown verb {verb!r}")
    try:
        changed = await run_in_threadpool(operations.change_switches, request, a, what, verb == "pause",
                                          str(form.get("reason") or "") or None)
    except HTTPException as exc:
        if exc.status_code != 422:
            raise
        flash = _flash_param(request, f"{verb} refused: {exc.detail}", "bad")
    else:
        done = "paused" if verb == "pause" else "resumed"
        names = ", ".join(c.name for c in changed)
        flash = _flash_param(request, f"{done}: {names}" if changed else f"nothing to do: already {done}", "ok")
    return RedirectResponse(f"/node?{flash}", status_code=303)


@router.post("/node/destinations/{name}/test")
async def node_destination_test(name: str, request: Request):
    a, _form = await _form_auth(request)
    res = await run_in_threadpool(operations.check_destination, request, a, name)
    msg = f"OK {res.message}" if res.ok else f"{name} failed: {res.message}"
    return RedirectResponse(f"/node?{_flash_param(request, msg, 'ok' if res.ok else 'bad')}", status_code=303)
