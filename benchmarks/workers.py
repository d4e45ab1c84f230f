#!/usr/bin/env python3
"""Study throughput with 1 and 2 ``pgsam-node worker`` processes on one PostgreSQL queue.

For each worker count: a fresh PostgreSQL database, ``pgsam-node serve --no-worker`` (listener,
scheduler, outbox) and a local receiving PACS; S synthetic studies (with their reports imported
first) are sent and left to become READY; then N ``pgsam-node worker --once`` processes start at
the same moment and drain the queue. Studies per minute = S / (first claim → last study leaving
RUNNING), from the study timeline (``study_events``), so model loading and delivery are not
counted. Prints both rates, the scaling ratio (2 workers / 1 worker) and the load average.
The bundled model (the ``tiny`` preset) runs on the CPU.

Usage: python benchmarks/workers.py [--studies 8] [--workers 1 2] [--admin-url URL]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

from pgsam_node.commands.demo import _free_port, send_files  # noqa: E402
from pgsam_node.commands.ris_cmd import import_csv  # noqa: E402
from pgsam_node.commands.synth_cmd import report_row, write_reports_csv  # noqa: E402
from pgsam_node.config import load_settings  # noqa: E402
from pgsam_node.db import Database, Study, StudyEvent  # noqa: E402
from pgsam_node.synth.dicom_writer import write_study  # noqa: E402
from pgsam_node.synth.minipacs import MiniPacs  # noqa: E402


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def _spawn(args: list[str], cfg: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "pgsam_node", *args, "--config", str(cfg)], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(n_workers: int, n_studies: int, admin_url: str, tmp: Path) -> tuple[float, float]:
    """Studies per minute with ``n_workers`` workers, and the load average at the end."""
    name = f"pgsam_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    pacs = MiniPacs(tmp / "pacs").start()
    procs: list[subprocess.Popen] = []
    db = None
    try:
        cfg = {
            "seg": {"empty_result": "empty_segment"},
            "dicom": {"port": _free_port(), "refuse_below_free_bytes": 0},
            "storage": {"root": str(tmp / "node"), "min_free_bytes": 0},
            "database": {"url": db_url},
            "assembly": {"stable_seconds": 1.0, "check_interval_seconds": 0.3},
            "ris": {"recheck_interval_seconds": 0.5},
            "send": {"check_interval_seconds": 0.3},
            "worker": {"poll_seconds": 0.3, "heartbeat_seconds": 1.0, "lease_seconds": 60.0},
            "web": {"enabled": False},
            "logging": {"level": "WARNING"},
            "destinations": [{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
        }
        cfg_path = tmp / "node.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        settings = load_settings(cfg_path)
        seeds = list(range(700, 700 + n_studies))
        studies = [write_study(s, tmp / f"study{s}") for s in seeds]
        write_reports_csv(tmp / "reports.csv", [report_row(st, s) for st, s in zip(studies, seeds)])
        procs.append(_spawn(["serve", "--no-worker"], cfg_path, tmp / "serve.log"))
        _wait(lambda: _port_open(settings.dicom.port), 120, "the DICOM port")
        db = Database(db_url)
        import_csv(tmp / "reports.csv", settings, db)
        for st in studies:
            files = [p for paths in st.paths_by_role.values() for p in paths]
            if send_files(files, "127.0.0.1", settings.dicom.port, settings.dicom.ae_title) != len(files):
                raise RuntimeError("not every instance was acknowledged")
        uids = [st.study_uid for st in studies]

        def states() -> list[str | None]:
            with db.session() as s:
                return list(s.scalars(select(Study.state).where(Study.study_uid.in_(uids))))

        _wait(lambda: (st := states()) and len(st) == n_studies and all(x == "READY" for x in st), 300,
              "every study READY")
        workers = [_spawn(["worker", "--once"], cfg_path, tmp / f"worker{i}.log") for i in range(n_workers)]
        procs += workers
        for w in workers:
            w.wait(1800)

        def left_running() -> bool:
            with db.session() as s:
                n = s.scalar(select(func.count()).select_from(StudyEvent).where(StudyEvent.from_state == "RUNNING"))
            return n >= n_studies

        _wait(left_running, 600, "every study past RUNNING")
        with db.session() as s:
            first = s.scalar(select(func.min(StudyEvent.at)).where(StudyEvent.to_state == "RUNNING"))
            last = s.scalar(select(func.max(StudyEvent.at)).where(StudyEvent.from_state == "RUNNING"))
            claims = s.scalar(select(func.count()).select_from(StudyEvent).where(StudyEvent.to_state == "RUNNING"))
        if claims != n_studies:
            print(f"  note: {claims} claims for {n_studies} studies (a lease expired and was re-claimed)")
        return n_studies / (last - first).total_seconds() * 60, os.getloadavg()[0]
    finally:
        for p in procs:
            _stop(p)
        pacs.stop()
        if db is not None:
            db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="a PostgreSQL database to connect to for CREATE/DROP DATABASE")
    args = ap.parse_args()
    rates = {}
    print(f"{args.studies} synthetic studies, bundled model on CPU, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}")
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix="pgsam-workers-") as tmp:
            rate, load = run(n, args.studies, args.admin_url, Path(tmp))
        rates[n] = rate
        print(f"{n} worker(s): {rate:6.2f} studies/minute (load average {load:.1f})")
    if 1 in rates:
        for n, rate in rates.items():
            if n != 1:
                print(f"scaling {n} workers / 1 worker: {rate / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
