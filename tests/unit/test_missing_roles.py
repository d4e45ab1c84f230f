"""A study waiting for (or failed on) sequences says which roles are missing and why each series was rejected."""

from __future__ import annotations

import datetime as dt
import re

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pgsam_node.flow.advance import mark_stable
from pgsam_node.commands.status import collect, format_table
from pgsam_node.db import Database, utcnow
from pgsam_node.flow.advance import advance_stable
from pgsam_node.ingest import spool
from pgsam_node.ingest.index import index_instance, parse_header
from pgsam_node.web import create_app, tokens

from ..factories import Geometry, mr_instance
from .test_spool_assemble import _encode


def index_study(db, settings, specs) -> str:
    """Index one study (``specs``: (description, TR, TE, agent) per series, 3 instances each) and make it STABLE."""
    study, t0 = generate_uid(), utcnow()
    for k, (desc, tr, te, agent) in enumerate(specs):
        series = generate_uid()
        for i in range(3):
            ds = mr_instance(study, series, i, description=desc, tr=tr, te=te, series_number=k + 1, agent=agent,
                             geometry=Geometry(rows=96, columns=96))
            h = parse_header(spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1") + _encode(ds))
            index_instance(db, settings, h, "spool/x", 1, "1.2.840.10008.1.2.1", now=t0)
    later = t0 + dt.timedelta(seconds=settings.assembly.stable_seconds + 1)
    assert mark_stable(db, settings, now=later) == [study]
    return study, later


def signed_in_client(settings, db):
    """A dashboard client signed in with a new first-run admin token; returns (client, token)."""
    with db.transaction() as s:
        admin = tokens.ensure_first_run_token(s)
    client = TestClient(create_app(settings, db), base_url="http://127.0.0.1")
    page = client.get("/login").text
    nonce = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/login", data={"token": admin, "csrf": nonce, "next": "/"}, follow_redirects=False)
    return client, admin


def _study_without_contrast(db, settings) -> str:
    study, later = index_study(db, settings, (("t1_se_tra", 500, 10, None), ("t2_tse_tra", 4000, 95, None),
                                              ("ep2d_perf", 1500, 30, None)))
    assert advance_stable(db, settings, now=later) == {study: "WAITING_SEQUENCES"}
    return study


def test_plain_status_names_missing_roles_and_rejected_series(settings):
    db = Database(settings.database_url)
    try:
        study = _study_without_contrast(db, settings)
        studies = collect(db, 10, settings)
        assert [m["role"] for m in studies[0]["missing_roles"]] == ["T1C"]
        text = format_table(studies)
        assert study in text and "reason: missing sequences: T1C" in text
        assert "missing T1C: rejected series:" in text
        # the T1 lacked contrast evidence; the perfusion series is not a structural sequence
        assert re.search(r"#1 't1_se_tra' -> T1: .*no contrast evidence", text)
        assert re.search(r"#3 'ep2d_perf' -> OTHER: rule perfusion_angio_functional", text)
        assert "#2 't2_tse_tra'" not in text  # selected for T2: not a candidate for T1C
    finally:
        db.dispose()


def test_dashboard_and_api_show_missing_roles(settings):
    db = Database(settings.database_url)
    try:
        _study_without_contrast(db, settings)
        client, admin = signed_in_client(settings, db)
        d = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {admin}"}).json()["studies"][0]
        detail = client.get(f"/api/v1/studies/{d['id']}", headers={"Authorization": f"Bearer {admin}"}).json()
        assert detail["missing_roles"][0]["role"] == "T1C" and len(detail["missing_roles"][0]["rejected"]) == 2
        html = client.get(f"/studies/{d['id']}").text
        assert 'id="missing-roles"' in html and "T1C missing" in html and "no contrast evidence" in html
        client.close()
    finally:
        db.dispose()


def test_one_study_summary_for_api_dashboard_and_status(settings):
    """`status --json`, the API's study detail and its list rows are one summary with one key set."""
    from pgsam_node.flow.summary import study_summaries

    db = Database(settings.database_url)
    try:
        study = _study_without_contrast(db, settings)
        status = collect(db, 10, settings)[0]
        client, admin = signed_in_client(settings, db)
        auth = {"Authorization": f"Bearer {admin}"}
        row = client.get("/api/v1/studies", headers=auth).json()["studies"][0]
        detail = client.get(f"/api/v1/studies/{row['id']}", headers=auth).json()
        client.close()
        with db.session() as s:
            from pgsam_node.db import Study

            base = study_summaries(s, [s.query(Study).filter_by(study_uid=study).one()])[0]
    finally:
        db.dispose()
    assert status["study_uid"] == row["study_uid"] == detail["study_uid"] == study
    assert set(status) == set(detail)  # status --json is the API's study detail
    assert set(row) == set(base) and set(row) < set(detail)  # list rows: the same keys without the parts
    for key in ("state", "state_reason", "missing_roles", "series", "timeline", "report_wait", "delivery"):
        assert status[key] == detail[key], key
    assert {se["description"]: (se["role"], se["role_selected"], se["instance_count"]) for se in status["series"]} == {
        "t1_se_tra": ("T1", True, 3), "t2_tse_tra": ("T2", True, 3), "ep2d_perf": ("OTHER", False, 3)}
