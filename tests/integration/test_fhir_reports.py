"""FHIR R4 report intake over a real socket (the node's web server): a DiagnosticReport releases
a study waiting for its report, an amended one re-runs a delivered study, and every bad input
(malformed resource, no identifier, unknown study, revoked token, wrong scope) gets an
OperationOutcome and loses nothing."""

from __future__ import annotations

import base64
import datetime as dt
import logging

import httpx
import pytest
from sqlalchemy import select

from pgsam_node.db import Database
from pgsam_node.db.lifecycle import transition
from pgsam_node.db.models import Report, Study
from pgsam_node.flow.advance import check_amendments, check_waiting
from pgsam_node.web import WebServer, tokens

from ..opsdata import seed_study

TEXT = "MRI parotid: 14 mm enhancing lesion in the LEFT superficial lobe, likely pleomorphic adenoma."


def _report(status="final", accession="ACC-FHIR-1", study_uid=None, text=TEXT, use_conclusion=False) -> dict:
    rep = {"resourceType": "DiagnosticReport", "id": "r1", "status": status,
           "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}]},
           "subject": {"identifier": {"value": "OPS-TEST-0001"}}, "issued": "2026-11-23T10:30:00+01:00"}
    if accession:
        rep["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                              "value": accession}]
    if study_uid:
        rep["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}]
    if use_conclusion:
        rep["conclusion"] = text
    else:
        rep["presentedForm"] = [{"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(text.encode()).decode()}]
    return rep


@pytest.fixture
def node(settings):
    db = Database(settings.database_url)
    with db.transaction() as s:
        ris = tokens.create_token(s, "ris", ["report-intake"])
        reader = tokens.create_token(s, "reader", [])
        old = tokens.create_token(s, "old-ris", ["report-intake"])
        tokens.revoke_token(s, "old-ris")
    web = WebServer(settings, db)
    web.start(announce=False)
    c = httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {ris}", "Content-Type": "application/fhir+json"})
    yield {"db": db, "c": c, "reader": reader, "old": old, "settings": settings}
    c.close()
    web.stop()
    db.dispose()


def _post(c, body, **kw):
    return c.post("/fhir/DiagnosticReport", json=body, **kw) if isinstance(body, dict) else \
        c.post("/fhir/DiagnosticReport", content=body, **kw)


def test_waiting_study_released_and_amendment_reruns(node, caplog):
    db, c, settings = node["db"], node["c"], node["settings"]
    seeded = seed_study(db, settings.storage_root, "READY", accession="ACC-FHIR-1", with_report=False)
    with db.transaction() as s:
        st = s.scalar(select(Study).where(Study.accession_number == "ACC-FHIR-1"))
        transition(s, st, "WAITING_REPORT", "test: no report yet", force=True)
        study_id = st.id
    caplog.set_level(logging.DEBUG)
    r = _post(c, _report())
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome" and "version 1" in out["issue"][0]["diagnostics"]
    assert len(out["issue"]) == 1  # the study is known: no warning
    assert _post(c, _report()).status_code == 200  # the same report again: duplicate, no new version
    now = dt.datetime.utcnow() + dt.timedelta(seconds=1)
    assert study_id in check_waiting(db, settings, now).ready
    # An amended report (accession plus imagingStudy UID, text in conclusion): version 2, a re-run.
    with db.transaction() as s:
        st = s.get(Study, study_id)
        transition(s, st, "DONE", "test: delivered", force=True)
    r = _post(c, _report("amended", study_uid=seeded.study_uid, text=TEXT + " Amended: 16 mm.", use_conclusion=True))
    assert r.status_code == 201 and "version 2" in r.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        stored = s.scalars(select(Report).where(Report.source == "fhir")).all()
        assert sorted(x.status for x in stored) == ["AMENDED", "FINAL"]
    assert study_id in check_amendments(db, settings, now + dt.timedelta(seconds=5)).rerun
    assert "14 mm" not in caplog.text and "Amended" not in caplog.text  # report text never logged


def test_bad_inputs_get_operation_outcomes(node, caplog):
    c = node["c"]
    caplog.set_level(logging.DEBUG)
    cases = [
        (b"{not json", 400, "structure"),
        (b'{"resourceType": "Patient"}', 400, "structure"),
        ({**_report(), "status": "bogus-status"}, 422, "business-rule"),
        ({**_report(), "presentedForm": "not-a-list"}, 400, "structure"),
        ({**_report(), "presentedForm": [{"contentType": "text/plain", "data": "%%% not base64 %%%"}]}, 400, "structure"),
        (_report(accession=None), 422, "required"),
        ({k: v for k, v in _report().items() if k != "presentedForm"}, 422, "required"),
        ({**_report(), "status": "entered-in-error"}, 422, "business-rule"),
    ]
    for body, code, issue in cases:
        r = _post(c, body)
        assert r.status_code == code, (body, r.text)
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.json()["issue"][0]["code"] == issue, r.text
    assert "14 mm" not in caplog.text
    # Unknown study: kept (loses nothing) with a clear warning.
    r = _post(c, _report(accession="ACC-NOT-RECEIVED"))
    assert r.status_code == 201 and r.json()["issue"][1]["code"] == "not-found"
    with node["db"].session() as s:
        assert s.scalar(select(Report).where(Report.accession_number == "ACC-NOT-RECEIVED")) is not None
    # Revoked, missing or under-scoped tokens.
    for hdr, code in (({"Authorization": f"Bearer {node['old']}"}, 401), ({"Authorization": ""}, 401),
                      ({"Authorization": f"Bearer {node['reader']}"}, 403)):
        r = _post(c, _report(), headers=hdr)
        assert r.status_code == code and r.json()["resourceType"] == "OperationOutcome"
    # Too large a body.
    big = _report(text="x" * node["settings"].fhir.max_bytes)
    assert _post(c, big).status_code == 413
