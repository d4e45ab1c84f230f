"""Crash safety and the shared queue, with real processes.

- kill -9 of ``pgsam-node serve`` in the middle of inference, then restart: the study completes
  once (one SEG at the PACS).
- Two ``pgsam-node worker`` processes on PostgreSQL with ten studies: each processed exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml
from sqlalchemy import select

from pgsam_node.commands.demo import send_files
from pgsam_node.commands.ris_cmd import import_csv
from pgsam_node.commands.synth_cmd import report_row, write_reports_csv
from pgsam_node.config import load_settings
from pgsam_node.db import Database, Run, Study, StudyEvent
from pgsam_node.synth.minipacs import MiniPacs
from pgsam_node.synth.dicom_writer import write_study

from ..helpers import PROJECT_ROOT, free_port, wait_echo, wait_for, wait_port


def _config(tmp_path, pacs: MiniPacs, db_url: str | None = None, lease_seconds: float = 4.0) -> tuple:
    cfg = {
        # An empty result still sends a SEG, so every study ends DONE with exactly one object.
        "seg": {"empty_result": "empty_segment"},
        "dicom": {"port": free_port(), "refuse_below_free_bytes": 0},
        "storage": {"root": str(tmp_path / "node"), "min_free_bytes": 0},
        "assembly": {"stable_seconds": 1.0, "check_interval_seconds": 0.3},
        "ris": {"recheck_interval_seconds": 0.5},
        "send": {"check_interval_seconds": 0.3},
        "worker": {"poll_seconds": 0.3, "heartbeat_seconds": 0.5, "lease_seconds": lease_seconds},
        "web": {"enabled": False},
        "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
    }
    if db_url:
        cfg["database"] = {"url": db_url}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, load_settings(path)


def _spawn(args, cfg_path, log_path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen([sys.executable, "-m", "pgsam_node", *args, "--config", str(cfg_path)], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _state(db: Database, uid: str) -> str | None:
    with db.session() as s:
        st = s.scalars(select(Study).where(Study.study_uid == uid)).first()
        return st.state if st else None


def _stage(db: Database, uid: str) -> str | None:
    with db.session() as s:
        st = s.scalars(select(Study).where(Study.study_uid == uid)).first()
        if st is None:
            return None
        run = s.scalars(select(Run).where(Run.study_id == st.id).order_by(Run.id.desc())).first()
        return (run.metrics or {}).get("stage") if run and run.status == "RUNNING" else None


def test_kill_9_during_inference_then_restart_completes_once(tmp_path):
    pacs = MiniPacs(tmp_path / "pacs").start()
    cfg_path, settings = _config(tmp_path, pacs)
    study = write_study(777, tmp_path / "study", report_language="zh")
    csv_path = tmp_path / "reports.csv"
    write_reports_csv(csv_path, [report_row(study, 777)])
    log = tmp_path / "serve.log"
    proc = _spawn(["serve"], cfg_path, log)
    try:
        wait_port(settings.dicom.port, timeout=60)
        wait_echo(settings.dicom.port, settings.dicom.ae_title)
        db = Database(settings.database_url)
        import_csv(csv_path, settings, db)
        files = [p for paths in study.paths_by_role.values() for p in paths]
        assert send_files(files, "127.0.0.1", settings.dicom.port, settings.dicom.ae_title) == len(files)
        wait_for(lambda: _stage(db, study.study_uid) == "inference", 120, interval=0.02, what="inference running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _state(db, study.study_uid) == "RUNNING"  # the crash left it mid-run
        assert pacs.received == []
        proc = _spawn(["serve"], cfg_path, log)
        wait_for(lambda: _state(db, study.study_uid) == "DONE", 180, interval=0.3,
                 what=f"study DONE after restart (log: {log})")
        got = pacs.wait_for(1, 5)
        assert len(got) == 1 and len({p.name for p in got}) == 1, "exactly one SEG at the PACS"
        with db.session() as s:
            st = s.scalars(select(Study).where(Study.study_uid == study.study_uid)).one()
            runs = s.scalars(select(Run).where(Run.study_id == st.id)).all()
            assert [r.status for r in runs] == ["SENT"], "one run record (same idempotency key) that was sent"
            n_running = len(s.scalars(select(StudyEvent).where(StudyEvent.study_id == st.id, StudyEvent.to_state == "RUNNING")).all())
            assert n_running == 2, "the study ran twice: once killed, once completed"
        db.dispose()
    finally:
        _stop(proc)
        pacs.stop()


def test_two_workers_on_postgres_process_each_study_once(tmp_path, pg_url):
    pacs = MiniPacs(tmp_path / "pacs").start()
    # Nobody is killed here: a lease long enough that a worker starved of CPU on a loaded machine
    # cannot lose it, so "claimed exactly once" tests the queue, not the scheduler.
    cfg_path, settings = _config(tmp_path, pacs, db_url=pg_url, lease_seconds=60.0)
    seeds = list(range(900, 910))
    studies = [write_study(s, tmp_path / f"study{s}") for s in seeds]
    csv_path = tmp_path / "reports.csv"
    write_reports_csv(csv_path, [report_row(st, s) for st, s in zip(studies, seeds)])
    procs = [_spawn(["serve", "--no-worker"], cfg_path, tmp_path / "serve.log")]
    try:
        wait_port(settings.dicom.port, timeout=60)
        wait_echo(settings.dicom.port, settings.dicom.ae_title)
        db = Database(pg_url)
        import_csv(csv_path, settings, db)
        for st in studies:
            files = [p for paths in st.paths_by_role.values() for p in paths]
            assert send_files(files, "127.0.0.1", settings.dicom.port, settings.dicom.ae_title) == len(files)
        procs += [_spawn(["worker"], cfg_path, tmp_path / f"worker{i}.log") for i in range(2)]
        uids = [st.study_uid for st in studies]

        def all_done():
            states = [_state(db, u) for u in uids]
            bad = [s for s in states if s in ("FAILED", "NO_FINDING")]
            assert not bad, f"studies ended {bad}"
            return all(s == "DONE" for s in states)

        wait_for(all_done, 400, interval=0.5, what="ten studies DONE")
        got = pacs.wait_for(10, 10)
        assert len(got) == 10 and len({p.name for p in got}) == 10
        with db.session() as s:
            runs = s.scalars(select(Run)).all()
            assert sorted(r.study_id for r in runs) == sorted({r.study_id for r in runs}), "a study was run twice"
            assert len(runs) == 10 and all(r.status == "SENT" for r in runs)
            claims = s.scalars(select(StudyEvent).where(StudyEvent.to_state == "RUNNING")).all()
            assert len(claims) == 10, "each study claimed exactly once"
        db.dispose()
    finally:
        for p in procs:
            _stop(p)
        pacs.stop()
