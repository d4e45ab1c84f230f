"""Report lookup against a site RIS in a real PostgreSQL database (custom column names)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from pgsam_node.config import load_settings
from pgsam_node.errors import RisError
from pgsam_node.reports.ris import StudyKey, dispose_engines, find_report

from ..helpers import free_port
from ..ris_checks import check_matching
from ..ris_scenario import CUSTOM_COLUMNS, create_site_ris


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


def _settings(url, **ris):
    return load_settings(None, ris={"url": url, "table": "ris_reports", "columns": dict(CUSTOM_COLUMNS), **ris})


def test_postgres_ris_matching(pg_url):
    create_site_ris(pg_url)
    check_matching(_settings(pg_url), None)


def test_postgres_ris_in_a_schema_and_read_only(pg_url):
    eng = create_engine(pg_url)
    with eng.begin() as c:
        c.execute(text("CREATE SCHEMA ris"))
    eng.dispose()
    create_site_ris(pg_url + "?options=-csearch_path%3Dris")  # the table lands in schema ris
    settings = _settings(pg_url, table="ris.ris_reports")
    m = find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)
    assert m.version == 3
    # The node's connections to the RIS are read-only transactions.
    from pgsam_node.reports.ris import _ExternalSource

    src = _ExternalSource(settings.ris)
    with src.engine.connect() as c:
        assert c.execute(text("SHOW default_transaction_read_only")).scalar() == "on"


def test_statement_timeout(pg_url):
    create_site_ris(pg_url)
    eng = create_engine(pg_url)
    with eng.begin() as c:
        # A view that takes 3 s per query: the RIS is "too slow" for a 0.5 s statement timeout.
        c.execute(text("CREATE VIEW slow_reports AS SELECT r.* FROM ris_reports r, LATERAL (SELECT pg_sleep(3)) s"))
    eng.dispose()
    settings = _settings(pg_url, table="slow_reports", query_timeout_seconds=0.5)
    with pytest.raises(RisError, match="RIS unavailable: QueryCanceled"):
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)


@pytest.mark.timeout(60)
def test_ris_down_raises_ris_error(pg_url):
    # Nothing listens on this port: connection refused at once.
    port = free_port()
    settings = _settings(f"postgresql+psycopg://postgres@127.0.0.1:{port}/ris", connect_timeout_seconds=1)
    with pytest.raises(RisError, match="RIS unavailable") as ei:
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)
    # No identifiers from the query in the message (patient data never in errors/logs).
    assert "P1" not in str(ei.value) and "A1" not in str(ei.value)
    # An address that drops packets (TEST-NET-1, RFC 5737): the connect timeout ends the wait.
    settings = _settings("postgresql+psycopg://postgres@192.0.2.1:5432/ris", connect_timeout_seconds=1)
    with pytest.raises(RisError, match="RIS unavailable"):
        find_report(StudyKey("A1", None, "P1", "20261120"), settings.ris, None)
