"""FHIR R4 report intake: ``POST /fhir/DiagnosticReport`` (token with scope ``report-intake``).

The resource is mapped by :mod:`pgsam_node.reports.fhir` and stored like an HL7 v2 report
(:func:`pgsam_node.reports.store.store_report`: versions, duplicates, amendments); the reports job
then matches it to its study and releases or re-runs waiting studies as today. Every refusal is
an OperationOutcome (``application/fhir+json``); report text is never logged.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import or_, select

from pgsam_node.db.models import Study
from pgsam_node.errors import ReportError
from pgsam_node.logsetup import uid_hash
from pgsam_node.reports.fhir import FhirError, operation_outcome, parse_diagnostic_report
from pgsam_node.reports.store import store_report

log = logging.getLogger(__name__)
router = APIRouter()
FHIR_JSON = "application/fhir+json"


def _outcome(status: int, severity: str, code: str, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(operation_outcome(severity, code, text), status_code=status, media_type=FHIR_JSON,
                        headers=headers)


@router.post("/fhir/DiagnosticReport")
async def post_diagnostic_report(request: Request):
    ctx = request.app.state.ctx
    settings = ctx.settings
    if not settings.fhir.enabled:
        return _outcome(404, "error", "not-supported", "FHIR intake is disabled (fhir.enabled)")
    auth = ctx.auth.authenticate(request)
    if auth is None or auth.via != "token":  # a session cookie alone is no credential here (no CSRF token)
        return _outcome(401, "error", "login", "a valid, unrevoked bearer token is required",
                        headers={"WWW-Authenticate": "Bearer"})
    if not auth.principal.can("report-intake"):
        return _outcome(403, "error", "forbidden", "this token may not post reports (scope 'report-intake')")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.fhir.max_bytes:
        return _outcome(413, "error", "too-costly", f"body over fhir.max_bytes ({settings.fhir.max_bytes})")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.fhir.max_bytes:
            return _outcome(413, "error", "too-costly", f"body over fhir.max_bytes ({settings.fhir.max_bytes})")
    try:
        parsed = parse_diagnostic_report(body)
    except FhirError as exc:
        log.warning("FHIR DiagnosticReport refused (%s): %s", exc.code, exc)
        return _outcome(exc.http_status, "error", exc.code, str(exc))
    rep = parsed.report
    try:
        with ctx.db.transaction() as s:
            result = store_report(s, rep, source="fhir")
            known = s.scalar(select(Study.id).where(or_(
                Study.study_uid == (rep.study_instance_uid or ""),
                Study.accession_number == (rep.accession_number or "\0")))) is not None
    except ReportError as exc:
        log.warning("FHIR DiagnosticReport not stored: %s", exc)
        return _outcome(422, "error", "business-rule", str(exc))
    except Exception as exc:  # noqa: BLE001 - database trouble: 503 so the sender retries
        log.error("FHIR report could not be stored: %s", type(exc).__name__)
        return _outcome(503, "error", "transient", "report could not be stored; retry later")
    log.info("FHIR DiagnosticReport: report %s version %d (%s)", result.action, result.version, rep.status,
             extra={"study": uid_hash(rep.study_instance_uid)})
    hook = getattr(ctx, "on_report", None)
    if hook is not None and result.action != "duplicate":
        try:
            hook(result)
        except Exception:  # noqa: BLE001 - a hook must not turn a stored report into an error
            log.exception("on_report hook failed")
    text = f"report {result.action}: version {result.version}, status {rep.status}"
    issues = [{"severity": "information", "code": "informational", "diagnostics": text}]
    if not known:
        issues.append({"severity": "warning", "code": "not-found",
                       "diagnostics": "unknown study: no study with this accession number / StudyInstanceUID has "
                                      "been received yet; the report is kept and matched when the study arrives"})
    return JSONResponse({"resourceType": "OperationOutcome", "issue": issues},
                        status_code=200 if result.action == "duplicate" else 201, media_type=FHIR_JSON)
