"""``pgsam-node synth``: write synthetic parotid MR studies, their reports and ground truth.

Output layout (``--out DIR``)::

    DIR/case_<seed>/<SeriesNumber>_<role>/IM*.dcm   three MR series per study (T1, T2, T1C), DICOM only
    DIR/truth/case_<seed>.npz                        target mask on the T1C grid + affine (outside the
                                                     case folder: ``storescu +sd +r DIR/case_<seed>``
                                                     meets only DICOM files)
    DIR/reports.csv                                  one final report per study, for `ris import`
    DIR/manifest.json                                seeds, UIDs, findings, distractor, vendor
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.logsetup import uid_hash
from pgsam_node.commands import load

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["accession_number", "study_instance_uid", "patient_id", "status", "report_time", "report_text", "study_date"]


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return n


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return n


def register(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic parotid MR studies (DICOM) with reports and ground truth")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    p.add_argument("--cases", type=_positive_int, default=1, metavar="N", help="number of studies (default 1)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="first seed; study i uses S+i (default 0)")
    p.add_argument("--language", choices=["en", "zh"], default=None, help="report language (default: mixed)")
    p.add_argument("--distractor", choices=["random", "none", "lymph_node", "contralateral_lesion"], default="random",
                   help="distractor kind (default: random, about 40%% of cases)")
    p.add_argument("--vendor", choices=["siemens", "ge", "philips"], default=None, help="header style (default: by seed)")
    add_config_arg(p)
    p.set_defaults(func=run)


def write_reports_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (keys = REPORT_COLUMNS) as UTF-8 CSV, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=REPORT_COLUMNS, quoting=csv.QUOTE_MINIMAL)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in REPORT_COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def report_row(study, seed: int) -> dict:
    """The RIS row (REPORT_COLUMNS) of a written synthetic study: a final report signed later."""
    when = dt.datetime.strptime(study.study_date + study.study_time, "%Y%m%d%H%M%S")
    signed = when + dt.timedelta(hours=2 + seed % 20)
    return {
        "accession_number": study.accession_number,
        "study_instance_uid": study.study_uid,
        "patient_id": study.patient_id,
        "status": "F",
        "report_time": signed.strftime("%Y-%m-%d %H:%M:%S"),
        "report_text": study.report_text,
        "study_date": study.study_date,
    }


def run(args) -> int:
    load(args)
    from pgsam_node.synth.dicom_writer import write_study

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    distractor = None if args.distractor == "none" else args.distractor
    rows, manifest = [], []
    for i in range(args.cases):
        seed = args.seed + i
        study = write_study(seed, out / f"case_{seed:06d}", truth_path=out / "truth" / f"case_{seed:06d}.npz",
                            report_language=args.language, vendor=args.vendor, distractor=distractor)
        rows.append(report_row(study, seed))
        manifest.append({
            "seed": seed,
            "dir": str(study.out_dir.relative_to(out)),
            "truth": str(study.mask_path.relative_to(out)),
            "study_instance_uid": study.study_uid,
            "accession_number": study.accession_number,
            "patient_id": study.patient_id,
            "vendor": study.vendor,
            "distractor": study.distractor,
            "report_language": study.report_language,
            "findings": study.findings.to_dict(),
            "series": {r: {"series_instance_uid": study.series_uids[r], "plane": study.plans[r].plane,
                           "shape": list(study.grids[r].shape), "spacing": list(study.grids[r].spacing)}
                       for r in study.series_uids},
        })
        log.info("synthetic study %d/%d written (study %s)", i + 1, args.cases, uid_hash(study.study_uid))
        print(f"{study.out_dir}  {study.accession_number}  {study.vendor}")
    write_reports_csv(out / "reports.csv", rows)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.cases} studies and {out / 'reports.csv'}")
    return 0
