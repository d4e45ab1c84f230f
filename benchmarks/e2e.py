"""End-to-end latency: last instance acknowledged → SEG acknowledged by the PACS, split by stage.

Runs the node in-process on the embedded default (SQLite, local storage, bundled model) with a
local receiving PACS, for the demo's synthetic study and (when ../shared/data is present) the real
TCIA study PGBM-001. Prints each stage next to ``assembly.stable_seconds`` — the deliberate wait
before a study counts as complete — and the ratio of the node's own work to that wait.

    python benchmarks/e2e.py [--stable 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgsam_node.commands.demo import _free_port, send_files  # noqa: E402
from pgsam_node.commands.ris_cmd import import_csv  # noqa: E402
from pgsam_node.commands.synth_cmd import report_row, write_reports_csv  # noqa: E402
from pgsam_node.config import load_settings  # noqa: E402
from pgsam_node.logsetup import setup_logging  # noqa: E402
from pgsam_node.synth.minipacs import MiniPacs  # noqa: E402
from pgsam_node.synth.dicom_writer import write_study  # noqa: E402
from pgsam_node.node import Node  # noqa: E402
from pgsam_node.db import Study  # noqa: E402
from pgsam_node.flow.summary import study_summaries  # noqa: E402

TCIA = ROOT.parent / "shared" / "data" / "tcia-pgbm"


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts)


def run_one(name: str, files: list[Path], study_uid: str, report_csv: Path, work: Path, stable: float, model_path: str | None) -> dict:
    pacs = MiniPacs(work / "pacs", ae_title="BENCHPACS").start()
    settings = load_settings(
        None,
        storage={"root": str(work / "node"), "min_free_bytes": 0},
        dicom={"port": _free_port(), "refuse_below_free_bytes": 0},
        assembly={"stable_seconds": stable, "check_interval_seconds": 0.25},
        send={"check_interval_seconds": 0.25},
        worker={"poll_seconds": 0.25},
        ris={"recheck_interval_seconds": 0.5},
        web={"enabled": False},
        model={"path": model_path} if model_path else {},
        destinations=[{"name": "pacs", "ae_title": "BENCHPACS", "host": "127.0.0.1", "port": pacs.port}],
    )
    node = Node(settings, web=False).start()
    try:
        import_csv(report_csv, settings, node.db)
        _ = node.pipeline.predictor  # model loaded before the clock starts (kept loaded in service)
        t0 = time.monotonic()
        ok = send_files(files, "127.0.0.1", node.listener.port, settings.dicom.ae_title)
        t_ack = time.monotonic()
        got = pacs.wait_for(1, timeout=300)
        t_seg = time.monotonic()
        with node.db.session() as s:
            summary = study_summaries(s, [s.query(Study).filter_by(study_uid=study_uid).one()], detail=True)[0]
    finally:
        node.stop()
        pacs.stop()
    if not got:
        raise SystemExit(f"{name}: no SEG arrived (state {summary['state']}: {summary['state_reason']})")
    ev = {e["to_state"]: _parse(e["at"]) for e in summary["timeline"]}
    run = summary["runs"][0]  # newest first
    stages = dict(run["stage_seconds"])
    total = t_seg - t_ack
    waiting = (ev["STABLE"] - ev["RECEIVING"]).total_seconds() - (t_ack - t0)
    queue = (ev["RUNNING"] - ev["STABLE"]).total_seconds()
    send = total - max(waiting, 0) - queue - sum(stages.values())
    return {"name": name, "instances": ok, "send_seconds": t_ack - t0, "total": total, "stable_wait": max(waiting, 0.0),
            "stable_seconds": stable, "report+queue": queue, **stages, "deliver+bookkeeping": max(send, 0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stable", type=float, default=2.0, help="assembly.stable_seconds for the run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tcia-model", default=None, help="model folder for the TCIA study (default: bundled brain-tumour model if present)")
    args = ap.parse_args()
    setup_logging("WARNING")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pgsam-e2e-") as tmp:
        tmp = Path(tmp)
        st = write_study(args.seed, tmp / "synthetic", report_language="en")
        csv_path = tmp / "synthetic.csv"
        write_reports_csv(csv_path, [report_row(st, args.seed)])
        files = [p for ps in st.paths_by_role.values() for p in ps]
        rows.append(run_one("synthetic (demo)", files, st.study_uid, csv_path, tmp / "run1", args.stable, None))
        study_dir = next(iter(sorted(TCIA.glob("PGBM-001*"))), None) if TCIA.is_dir() else None
        if study_dir is not None:
            from pydicom import dcmread

            from pgsam_node.inference.predictor import BUNDLED_MODEL_DIR

            brain = BUNDLED_MODEL_DIR.parent / "brain-tumour-tiny"
            model = args.tcia_model or (str(brain) if (brain / "config.json").exists() else None)
            files = [p for sub in ("T1prereg", "T1post", "T2reg", "MaskTumor") for p in sorted((study_dir / sub).glob("*.dcm"))]
            first = dcmread(files[0], stop_before_pixels=True)
            csv_path = tmp / "tcia.csv"
            with csv_path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["accession_number", "study_instance_uid", "patient_id", "status", "report_time", "report_text", "study_date"])
                w.writerow([first.get("AccessionNumber", ""), first.StudyInstanceUID, first.PatientID, "F", "1991-11-20 10:00:00",
                            "Enhancing mass in the left cerebral hemisphere, consistent with recurrent glioblastoma.", first.StudyDate])
            rows.append(run_one("TCIA PGBM-001", files, str(first.StudyInstanceUID), csv_path, tmp / "run2", args.stable, model))
        else:
            print(f"(TCIA study skipped: {TCIA} not present)")
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ["instances", "send_seconds", "stable_seconds", "stable_wait", "report+queue", "gather", "geometry", "inference", "encode",
            "deliver+bookkeeping", "total"]
    width = {k: max(10, len(k) + 2) for k in keys}
    print(f"\n{'study':<18}" + "".join(f"{k:>{width[k]}}" for k in keys))
    for r in rows:
        print(f"{r['name']:<18}" + "".join(
            f"{r.get(k, 0):>{width[k]}.2f}" if isinstance(r.get(k, 0), float) else f"{r.get(k, 0):>{width[k]}}" for k in keys))
    for r in rows:
        work = r["total"] - r["stable_wait"]
        print(f"{r['name']}: last ack -> SEG acknowledged {r['total']:.2f} s; node work {work:.2f} s = "
              f"{work / r['stable_seconds']:.2f} x assembly.stable_seconds ({r['stable_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
