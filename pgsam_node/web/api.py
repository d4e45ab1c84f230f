"""REST API ``/api/v1`` (JSON). Every route needs a token (``Authorization: Bearer``) or a
dashboard session; POSTs through a session also need the ``X-CSRF-Token`` header."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import select

from pgsam_node.flow.actions import ActionError
from pgsam_node.db.models import OutboxState, Run, Study, StudyState
from pgsam_node.logsetup import uid_hash
from pgsam_node.web import operations, queries
from pgsam_node.web.auth import Auth, client_addr
from pgsam_node.web.auth import csrf_ok

log = logging.getLogger(__name__)
router = APIRouter()
STATES = [s.value for s in StudyState]


def ctx(request: Request):
    return request.app.state.ctx


def require_auth(request: Request) -> Auth:
    a = ctx(request).auth.authenticate(request)
    if a is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    return a


def _csrf(request: Request, a: Auth) -> None:
    """A POST through a dashboard session must carry the session's CSRF token in ``X-CSRF-Token``."""
    if a.via == "session" and not csrf_ok(a.csrf, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "CSRF token missing or wrong")


def _study(s, study_id: int) -> Study:
    st = s.get(Study, study_id)
    if st is None:
        raise HTTPException(404, f"no study {study_id}")
    return st


@router.get("/me")
def me(a: Auth = Depends(require_auth)):
    return {"name": a.principal.name, "scopes": sorted(a.principal.scopes), "via": a.via}


@router.get("/studies")
def studies(
    request: Request,
    state: str | None = Query(None, description="filter by state"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    a: Auth = Depends(require_auth),
):
    if state is not None and state not in STATES:
        raise HTTPException(422, f"unknown state {state!r}; one of {', '.join(STATES)}")
    with ctx(request).db.session() as s:
        total, items = queries.list_studies(s, state, limit, offset)
        counts = queries.state_counts(s)
    return {"total": total, "limit": limit, "offset": offset, "counts": counts, "studies": items}


@router.get("/studies/{study_id}")
def study(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        st = _study(s, study_id)
        return queries.study_summaries(s, [st], detail=True, settings=ctx(request).settings)[0]


@router.get("/studies/{study_id}/series")
def series(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        return {"series": queries.series_list(_study(s, study_id))}


@router.get("/studies/{study_id}/timeline")
def timeline(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        return {"events": queries.timeline(_study(s, study_id))}


@router.get("/studies/{study_id}/report")
def report(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    """Matched report: findings for everyone; the text only with the ``report-text`` scope."""
    c = ctx(request)
    with c.db.session() as s:
        return queries.report_view(s, _study(s, study_id), a.principal.can("report-text"), c.findings_from_text)


@router.get("/studies/{study_id}/runs")
def study_runs(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        _study(s, study_id)
        return {"runs": queries.runs_of(s, study_id)}


@router.get("/studies/{study_id}/outbox")
def study_outbox(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        _study(s, study_id)
        return {"items": queries.outbox_items(s, study_id=study_id)}


@router.get("/studies/{study_id}/preview.png")
def preview(study_id: int, request: Request, a: Auth = Depends(require_auth)):
    from pgsam_node.web.preview import PreviewUnavailable, render_preview

    c = ctx(request)
    try:
        png = render_preview(c.db, c.settings, study_id)
    except PreviewUnavailable as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png")


@router.get("/runs")
def runs(request: Request, limit: int = Query(100, ge=1, le=1000), a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        return {"runs": [queries.run_dict(r) for r in s.scalars(select(Run).order_by(Run.id.desc()).limit(limit)).all()]}


@router.get("/outbox")
def outbox(request: Request, state: str | None = None, limit: int = Query(200, ge=1, le=1000), a: Auth = Depends(require_auth)):
    if state is not None and state not in [x.value for x in OutboxState]:
        raise HTTPException(422, f"unknown outbox state {state!r}")
    with ctx(request).db.session() as s:
        return {"items": queries.outbox_items(s, state=state, limit=limit)}


@router.get("/errors")
def errors(request: Request, a: Auth = Depends(require_auth)):
    with ctx(request).db.session() as s:
        return queries.errors(s)


@router.get("/audit")
def audit(request: Request, limit: int = Query(200, ge=1, le=1000), a: Auth = Depends(require_auth)):
    if not a.principal.can("admin"):
        raise HTTPException(403, "the audit log needs the admin scope")
    with ctx(request).db.session() as s:
        return {"entries": queries.audit_entries(s, limit)}


def run_action(request: Request, a: Auth, study_id: int, name: str):
    """Apply an operator action in one transaction; shared by the API and the dashboard.

    Returns the :class:`~pgsam_node.flow.actions.ActionResult`; raises HTTPException 403/404/409.
    """
    c = ctx(request)
    if not a.principal.can("actions"):
        raise HTTPException(403, "this token may not run actions (scope 'actions')")
    fn = getattr(c.actions, name)
    try:
        with c.db.transaction() as s:
            st = s.get(Study, study_id, with_for_update=not c.db.is_sqlite)
            if st is None:
                raise HTTPException(404, f"no study {study_id}")
            res = fn(s, st, a.principal.name, remote_addr=client_addr(request))
            uid = st.study_uid
    except ActionError as exc:
        raise HTTPException(409, str(exc)) from None
    if c.on_action is not None:
        try:
            c.on_action(res)
        except Exception:  # noqa: BLE001 - the action is committed; a failed hook is only logged
            log.exception("on_action hook failed after %s", name)
    log.info("action %s by %s", name, a.principal.name, extra={"study": uid_hash(uid), "action": name})
    return res


@router.post("/studies/{study_id}/{action}")
def action(study_id: int, action: str, request: Request, a: Auth = Depends(require_auth)):
    if action not in ("retry", "reprocess", "resend", "run_now"):
        raise HTTPException(404, f"unknown action {action!r}")
    _csrf(request, a)
    res = run_action(request, a, study_id, action)
    return {"action": res.action, "study_id": res.study_id, "from_state": res.from_state, "to_state": res.to_state,
            "message": res.message, "outbox_requeued": res.outbox_requeued}


# ---- node-wide operator tools: pause switches, test destination ---------------------------------
class SwitchChange(BaseModel):
    """Optional body of a pause: a note kept with the switch and in the audit log."""

    reason: str | None = None


@router.get("/switches")
def get_switches(request: Request, a: Auth = Depends(require_auth)):
    return {"switches": {n: st.as_dict() for n, st in operations.switch_states(request).items()}}


@router.post("/switches/{what}/{verb}")
def set_switch(what: str, verb: str, request: Request, body: SwitchChange | None = None,
               a: Auth = Depends(require_auth)):
    """``POST /switches/{receiving|processing|sending|all}/{pause|resume}``."""
    if verb not in ("pause", "resume"):
        raise HTTPException(404, f"unknown verb {verb!r}; pause or resume")
    _csrf(request, a)
    changed = operations.change_switches(request, a, what, verb == "pause", body.reason if body else None)
    return {"changed": [c.name for c in changed],
            "switches": {n: st.as_dict() for n, st in operations.switch_states(request).items()}}


@router.get("/destinations")
def get_destinations(request: Request, a: Auth = Depends(require_auth)):
    return {"destinations": operations.destinations(request)}


@router.post("/destinations/{name}/test")
def destination_test(name: str, request: Request, a: Auth = Depends(require_auth)):
    """C-ECHO / DICOMweb check; 200 with ``ok`` false when the destination fails the check."""
    _csrf(request, a)
    return operations.check_destination(request, a, name).as_dict()
