"""FHIR R4 DiagnosticReport → :class:`~pgsam_node.reports.store.IncomingReport`.

The resource is validated with ``fhir.resources`` (its R4B model, whose DiagnosticReport matches
R4's). Mapping:

- text: the first ``presentedForm`` attachment of type ``text/*`` (base64 ``data``, its charset,
  default UTF-8), else ``conclusion``;
- ``status``: ``final`` → FINAL; ``amended`` / ``corrected`` / ``appended`` → AMENDED;
  ``preliminary`` / ``partial`` / ``registered`` → PRELIMINARY; others are refused;
- accession number: an ``identifier`` (of the report or of a ``basedOn`` reference) whose type is
  v2-0203 ``ACSN``; StudyInstanceUID: an ``imagingStudy`` reference's identifier or an
  ``identifier`` with system ``urn:dicom:uid`` (value ``urn:oid:<uid>``, PS3.18 F / FHIR
  ImagingStudy.identifier);
- patient: ``subject.identifier.value``; report time: ``issued``, else ``effectiveDateTime``.

Errors are :class:`FhirError` with an OperationOutcome issue code; no message holds report text.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from pgsam_node.errors import ReportError
from pgsam_node.reports.store import IncomingReport

DICOM_UID_SYSTEM = "urn:dicom:uid"
ACCESSION_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
STATUS_MAP = {
    "final": "FINAL",
    "amended": "AMENDED", "corrected": "AMENDED", "appended": "AMENDED",
    "preliminary": "PRELIMINARY", "partial": "PRELIMINARY", "registered": "PRELIMINARY",
}


class FhirError(ReportError):
    """A refused resource; ``code`` is the OperationOutcome issue type (FHIR ValueSet issue-type)."""

    def __init__(self, message: str, code: str = "invalid", http_status: int = 422):
        super().__init__(message)
        self.code = code
        self.http_status = http_status


@dataclass
class FhirReport:
    report: IncomingReport
    fhir_id: str | None


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    """A minimal OperationOutcome with one issue."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def _validate(body: bytes):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydantic import ValidationError

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhirError(f"body is not JSON ({type(exc).__name__} at position {getattr(exc, 'pos', '?')})",
                        code="structure", http_status=400) from None
    if not isinstance(data, dict) or data.get("resourceType") != "DiagnosticReport":
        got = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise FhirError(f"expected a DiagnosticReport resource, got {got!r}", code="structure", http_status=400)
    try:
        return DiagnosticReport.model_validate(data)
    except ValidationError as exc:
        # Locations and messages only: the input values may be report text.
        issues = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        raise FhirError(f"invalid DiagnosticReport: {issues}", code="structure", http_status=400) from None


def _uid(value: str | None) -> str | None:
    if not value:
        return None
    return value[len("urn:oid:"):] if value.startswith("urn:oid:") else value


def _is_accession(ident) -> bool:
    t = getattr(ident, "type", None)
    for c in (getattr(t, "coding", None) or []):
        if (c.system, c.code) == ACCESSION_TYPE or (c.system is None and c.code == "ACSN"):
            return True
    return False


def _identifiers(rep) -> tuple[str | None, str | None]:
    accession = study_uid = None
    idents = list(rep.identifier or [])
    for ref in rep.basedOn or []:
        if ref.identifier is not None:
            idents.append(ref.identifier)
    for ident in idents:
        if accession is None and _is_accession(ident) and ident.value:
            accession = ident.value
        if study_uid is None and ident.system == DICOM_UID_SYSTEM:
            study_uid = _uid(ident.value)
    for ref in rep.imagingStudy or []:
        ident = ref.identifier
        if study_uid is None and ident is not None and (ident.system in (None, DICOM_UID_SYSTEM)):
            study_uid = _uid(ident.value)
    return accession, study_uid


def _text(rep) -> str:
    for att in rep.presentedForm or []:
        ctype = (att.contentType or "").lower()
        if not ctype.startswith("text/") or att.data is None:
            continue
        charset = "utf-8"
        for part in ctype.split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k == "charset" and v:
                charset = v.strip('"')
        try:
            # fhir.resources has already decoded (and validated) the base64 into bytes.
            raw = att.data if isinstance(att.data, bytes) else base64.b64decode(str(att.data), validate=True)
            return raw.decode(charset)
        except (binascii.Error, UnicodeDecodeError, LookupError) as exc:
            raise FhirError(f"presentedForm data cannot be decoded as base64 {charset} text ({type(exc).__name__})") from None
    if rep.conclusion and rep.conclusion.strip():
        return rep.conclusion
    raise FhirError("no report text: give a text/plain presentedForm (base64 data) or a conclusion", code="required")


def _time(rep) -> dt.datetime | None:
    t = rep.issued or rep.effectiveDateTime
    if t is None:
        return None
    if isinstance(t, str):
        try:
            t = dt.datetime.fromisoformat(t)
        except ValueError:
            return None
    if isinstance(t, dt.date) and not isinstance(t, dt.datetime):
        t = dt.datetime(t.year, t.month, t.day)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t


def parse_diagnostic_report(body: bytes) -> FhirReport:
    """Validate and map one DiagnosticReport (JSON bytes).

    Raises
    ------
    FhirError
        Not JSON, not a valid DiagnosticReport, unsupported status, no identifier or no text.
    """
    rep = _validate(body)
    status = STATUS_MAP.get(str(rep.status))
    if status is None:
        raise FhirError(f"status {rep.status!r} is not accepted (use final, amended, corrected, appended or preliminary)",
                        code="business-rule")
    accession, study_uid = _identifiers(rep)
    if not accession and not study_uid:
        raise FhirError("no study identifier: give an identifier of type ACSN (accession number) or an imagingStudy "
                        "reference / identifier with system urn:dicom:uid (StudyInstanceUID)", code="required")
    patient = None
    if rep.subject is not None and rep.subject.identifier is not None:
        patient = rep.subject.identifier.value
    incoming = IncomingReport(status=status, report_text=_text(rep), accession_number=accession,
                              study_instance_uid=study_uid, patient_id=patient, report_time=_time(rep))
    return FhirReport(incoming, rep.id)
