"""Prometheus metrics read from the database at scrape time, and the health checks.

The collector holds no counters in memory: every value comes from the shared database when
``/metrics`` is scraped, so it is right whichever process (listener, workers on other machines)
did the work, and it survives restarts.

Metrics
-------
``pgsam_instances_received_total``          instances indexed (rows are kept by retention)
``pgsam_studies{state}``                    studies per state
``pgsam_stage_seconds{stage}``              summary (count/sum) of ``Run.stage_seconds``
``pgsam_inference_seconds``                 summary of the inference stage (``infer``/``inference``)
``pgsam_runs_total{status}``                model runs per status
``pgsam_send_failures_total``               failed delivery attempts (outbox counters, else :func:`_send_failures`)
``pgsam_outbox_items{state}``               outbox items per state (``DEAD`` = gave up)
``pgsam_queue_ready_studies``               studies waiting for a worker (READY)
``pgsam_queue_outbox_pending``              outbox items waiting to be sent (PENDING)
``pgsam_storage_free_bytes``                free space of the storage root
``pgsam_node_counter{name}``                counters other processes persist in the ``metrics`` table
``pgsam_database_up``                       1 when the scrape could read the database
``pgsam_paused{what}``                      1 while the operator has paused receiving / processing / sending
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from pgsam_node.db import switches
from pgsam_node.db.models import Instance, Metric, OutboxItem, OutboxState, Run, Study, StudyState
from pgsam_node.ingest.spool import free_bytes

log = logging.getLogger(__name__)

#: ``Run.stage_seconds`` keys counted as model inference.
INFERENCE_KEYS = ("infer", "inference")
#: Counters the outbox persists for each failed attempt (``pgsam_node.deliver.outbox``).
FAILED_ATTEMPT_COUNTERS = ("outbox_retry_total", "outbox_dead_total")


def _send_failures(rows) -> int:
    """Failed attempts: every attempt of an unsent item that recorded an error, and all but the
    last attempt of a sent item."""
    n = 0
    for state, attempts, last_error in rows:
        attempts = attempts or 0
        if state == OutboxState.SENT.value:
            n += max(0, attempts - 1)
        elif last_error or state == OutboxState.DEAD.value:
            n += attempts
    return n


class DatabaseCollector(Collector):
    """Custom collector: one short read transaction per scrape."""

    def __init__(self, db, settings):
        self.db = db
        self.settings = settings

    def collect(self):
        up = GaugeMetricFamily("pgsam_database_up", "1 when the scrape could read the node database")
        try:
            families = list(self._from_db())
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure as a metric
            log.warning("metrics: database read failed: %s", type(exc).__name__)
            up.add_metric([], 0)
            families = []
        else:
            up.add_metric([], 1)
        yield up
        yield from families
        free = GaugeMetricFamily("pgsam_storage_free_bytes", "Free bytes on the storage root's file system")
        try:
            free.add_metric([], free_bytes(self.settings.storage_root))
        except OSError:
            free.add_metric([], float("nan"))
        yield free

    def _from_db(self):
        with self.db.session() as s:
            n_inst = s.scalar(select(func.count(Instance.id))) or 0
            by_state = dict(s.execute(select(Study.state, func.count(Study.id)).group_by(Study.state)).all())
            run_rows = s.execute(select(Run.status, Run.stage_seconds)).all()
            out_rows = s.execute(select(OutboxItem.state, OutboxItem.attempts, OutboxItem.last_error)).all()
            counters = s.execute(select(Metric.name, Metric.value)).all()
            paused = switches.read_all(s)

        pg = GaugeMetricFamily("pgsam_paused", "1 while the operator has paused this part of the node", labels=["what"])
        for name, st in paused.items():
            pg.add_metric([name], 1 if st.paused else 0)
        yield pg

        c = CounterMetricFamily("pgsam_instances_received", "DICOM instances received and indexed")
        c.add_metric([], n_inst)
        yield c

        g = GaugeMetricFamily("pgsam_studies", "Studies per state", labels=["state"])
        for st in StudyState:
            g.add_metric([st.value], by_state.get(st.value, 0))
        yield g

        stage_count: dict[str, int] = defaultdict(int)
        stage_sum: dict[str, float] = defaultdict(float)
        runs_by_status: dict[str, int] = defaultdict(int)
        inf_count, inf_sum = 0, 0.0
        for status, stages in run_rows:
            runs_by_status[status or "UNKNOWN"] += 1
            for stage, secs in (stages or {}).items():
                if isinstance(secs, (int, float)):
                    stage_count[stage] += 1
                    stage_sum[stage] += float(secs)
                    if stage in INFERENCE_KEYS:
                        inf_count += 1
                        inf_sum += float(secs)
        sm = SummaryMetricFamily("pgsam_stage_seconds", "Seconds per pipeline stage (from run records)", labels=["stage"])
        for stage in sorted(stage_count):
            sm.add_metric([stage], count_value=stage_count[stage], sum_value=stage_sum[stage])
        yield sm
        inf = SummaryMetricFamily("pgsam_inference_seconds", "Seconds of model inference per run")
        inf.add_metric([], count_value=inf_count, sum_value=inf_sum)
        yield inf
        rc = CounterMetricFamily("pgsam_runs", "Model runs per status", labels=["status"])
        for status in sorted(runs_by_status):
            rc.add_metric([status], runs_by_status[status])
        yield rc

        # Exact when the outbox's persisted counters exist (they survive re-queues); else
        # estimated from the items' attempts and errors.
        counter_map = dict(counters)
        if any(k in counter_map for k in FAILED_ATTEMPT_COUNTERS):
            failures = sum(counter_map.get(k, 0.0) for k in FAILED_ATTEMPT_COUNTERS)
        else:
            failures = _send_failures(out_rows)
        sf = CounterMetricFamily("pgsam_send_failures", "Failed delivery attempts (C-STORE errors, timeouts, refusals)")
        sf.add_metric([], failures)
        yield sf
        ob = GaugeMetricFamily("pgsam_outbox_items", "Outbox items per state", labels=["state"])
        out_by_state: dict[str, int] = defaultdict(int)
        for state, _a, _e in out_rows:
            out_by_state[state] += 1
        for st in OutboxState:
            ob.add_metric([st.value], out_by_state.get(st.value, 0))
        yield ob

        q = GaugeMetricFamily("pgsam_queue_ready_studies", "Studies waiting for a worker (READY)")
        q.add_metric([], by_state.get(StudyState.READY.value, 0))
        yield q
        qo = GaugeMetricFamily("pgsam_queue_outbox_pending", "Outbox items waiting to be sent (PENDING)")
        qo.add_metric([], out_by_state.get(OutboxState.PENDING.value, 0))
        yield qo

        if counters:
            nc = GaugeMetricFamily("pgsam_node_counter", "Counters persisted by node processes", labels=["name"])
            for name, value in counters:
                nc.add_metric([name], value)
            yield nc


def readiness(db, settings) -> tuple[bool, dict[str, dict]]:
    """Checks behind ``/readyz``: database reachable, storage writable, free disk above the
    watermark ``dicom.refuse_below_free_bytes``."""
    checks: dict[str, dict] = {}
    try:
        with db.session() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    root = settings.storage_root
    try:
        probe_dir = settings.tmp_dir
        probe_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=probe_dir)
        os.write(fd, b"ok")
        os.close(fd)
        os.unlink(name)
        checks["storage"] = {"ok": True}
    except OSError as exc:
        checks["storage"] = {"ok": False, "error": exc.strerror or type(exc).__name__}
    try:
        free = free_bytes(root)
        need = settings.dicom.refuse_below_free_bytes
        checks["disk"] = {"ok": free >= need, "free_bytes": free, "watermark_bytes": need}
    except OSError as exc:
        checks["disk"] = {"ok": False, "error": exc.strerror or type(exc).__name__}
    return all(c["ok"] for c in checks.values()), checks
