"""``pgsam-node demo``: the whole node on the embedded default, end to end, on one machine.

Starts the node (SQLite, local storage, bundled model) and a local receiving PACS, generates a
synthetic three-sequence study and its report, imports the report into the embedded RIS, sends the
study over DICOM, waits for the SEG at the PACS, validates it, prints a summary (states, stage
timings, Dice against the synthetic truth) and writes a PNG overlay.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the node end to end on a synthetic study")
    add_config_arg(p)
    p.add_argument("--workdir", type=Path, default=None, help="demo folder (default: <storage.root>/demo; wiped at start)")
    p.add_argument("--seed", type=int, default=7, help="synthetic study seed")
    p.add_argument("--language", choices=["en", "zh"], default="en", help="report language")
    p.add_argument("--timeout", type=float, default=110.0, help="seconds to wait for the SEG")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.add_argument("--verbose", "-v", action="store_true", help="show the node's log lines")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(msg, flush=True)


def send_files(paths: list[Path], host: str, port: int, called_aet: str, calling_aet: str = "DEMOSCU", attempts: int = 3) -> int:
    """C-STORE every file, in one association; returns how many were acknowledged with success.

    An association that aborts part-way (pynetdicom's SCU can lose a fast response to its own
    reactor thread on a loaded machine and then hits its DIMSE timeout) is opened again, up to
    ``attempts`` times, for the files not yet answered: a re-send of the same instance is
    idempotent at the node.
    """
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling_aet)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid)
    ok = 0
    todo = list(range(len(datasets)))
    for attempt in range(max(1, attempts)):
        assoc = ae.associate(host, port, ae_title=called_aet)
        if not assoc.is_established:
            if attempt + 1 < attempts:
                continue
            raise RuntimeError(f"association to {called_aet}@{host}:{port} failed")
        left = []
        try:
            for n, i in enumerate(todo):
                if not assoc.is_established:
                    left += todo[n:]
                    break
                status = assoc.send_c_store(datasets[i])
                if status and status.Status == 0x0000:
                    ok += 1
                elif not status:  # no answer (timeout, abort): send it again
                    left.append(i)
        finally:
            if assoc.is_established:
                assoc.release()
        todo = left
        if not todo:
            break
    return ok


def run(args) -> int:
    import numpy as np

    from pgsam_node.config import load_settings
    from pgsam_node.db import Study
    from pgsam_node.synth.minipacs import MiniPacs
    from pgsam_node.synth.dicom_writer import write_study
    from pgsam_node.node import Node
    from pgsam_node.flow.summary import study_summaries
    from pgsam_node.commands.ris_cmd import import_csv
    from pgsam_node.commands.synth_cmd import report_row, write_reports_csv
    from pgsam_node.encode.preview import write_overlay_png
    from pgsam_node.encode.read import read_seg_mask

    t0 = time.monotonic()
    base = load(args)
    if not args.verbose:
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    work = (args.workdir or base.storage_root / "demo").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pacs = MiniPacs(work / "pacs", ae_title="DEMOPACS").start()
    settings = load_settings(
        args.config,
        storage={"root": str(work / "node"), "min_free_bytes": 0},
        dicom={"port": _free_port(), "refuse_below_free_bytes": 0},
        assembly={"stable_seconds": 2.0, "check_interval_seconds": 0.5},
        ris={"recheck_interval_seconds": 1.0},
        send={"check_interval_seconds": 0.5},
        worker={"poll_seconds": 0.5},
        web={"enabled": False},
        destinations=[{"name": "demo-pacs", "ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs.port}],
    )
    _say(f"[demo] workdir {work}")
    _say(f"[demo] generating synthetic study (seed {args.seed}, report in {args.language}) ...")
    study = write_study(args.seed, work / "study", report_language=args.language)
    reference_paths = study.paths_by_role["T1C"]  # the truth mask lives on the T1C grid
    n_files = sum(len(v) for v in study.paths_by_role.values())
    _say(f"[demo]   {n_files} MR instances in {len(study.paths_by_role)} series: "
         + ", ".join(f"{r}={len(p)}" for r, p in sorted(study.paths_by_role.items())))
    csv_path = work / "reports.csv"
    write_reports_csv(csv_path, [report_row(study, args.seed)])

    node = Node(settings, web=False).start()
    try:
        n_rep = import_csv(csv_path, settings, node.db).inserted
        _say(f"[demo] node up: {settings.dicom.ae_title}@127.0.0.1:{node.listener.port}; {n_rep} report(s) in the embedded RIS")
        _say("[demo] loading the model ...")
        _ = node.pipeline.predictor  # load before timing the study
        files = [p for paths in study.paths_by_role.values() for p in paths]
        t_send = time.monotonic()
        ok = send_files(files, "127.0.0.1", node.listener.port, settings.dicom.ae_title)
        t_acked = time.monotonic()
        _say(f"[demo] sent {ok}/{len(files)} instances (C-STORE success) in {t_acked - t_send:.1f} s; waiting for the SEG ...")
        got = pacs.wait_for(1, timeout=args.timeout)
        t_seg = time.monotonic()
        if not got:
            with node.db.session() as s:
                st = s.query(Study).filter_by(study_uid=study.study_uid).one_or_none()
                state = f"{st.state} ({st.state_reason})" if st else "unknown"
            _say(f"[demo] FAILED: no SEG at the PACS after {args.timeout:.0f} s; study state {state}")
            return 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with node.db.session() as s:
                st = s.query(Study).filter_by(study_uid=study.study_uid).one()
                summary = study_summaries(s, [st], detail=True, settings=settings)[0]
            if summary["state"] == "DONE":
                break
            time.sleep(0.2)
    finally:
        node.stop()
        pacs.stop()

    seg_path = got[0]
    pred, ref_uids = read_seg_mask(seg_path, reference_paths)
    from pgsam_node.training.metrics import dice

    d = dice(pred, study.mask)
    png = work / "overlay.png"
    write_overlay_png(reference_paths, study.mask, pred, png)
    run_info = summary["runs"][0] if summary["runs"] else {}  # newest first
    _say("")
    _say("================ PG-SAM Node demo summary ================")
    _say(f"study state      : {summary['state']}")
    _say("timeline         :")
    for ev in summary["timeline"]:
        _say(f"  {ev['at']}  {ev['from_state'] or '':>17} -> {ev['to_state']:<17} {ev['reason'] or ''}")
    _say("sequence roles   :")
    for se in summary["series"]:
        _say(f"  {se['description'] or '?':<28} {se['role'] or '-':<6} {'(selected)' if se['role_selected'] else '':<11} "
             f"{se['role_reason'] or ''}")
    _say("stage seconds    : " + ", ".join(f"{k} {v:.2f}" for k, v in (run_info.get("stage_seconds") or {}).items()))
    _say(f"model            : {run_info.get('model_version')}")
    _say(f"report findings  : side={study.findings.side} lobe={study.findings.lobe} size={study.findings.size_mm} mm diagnosis={study.findings.diagnosis}")
    _say(f"last ack -> SEG  : {t_seg - t_acked:.1f} s (assembly.stable_seconds={settings.assembly.stable_seconds})")
    _say(f"Dice vs truth    : {d:.3f}  (predicted {int(pred.sum())} voxels, truth {int(np.asarray(study.mask).sum())})")
    _say(f"SEG at the PACS  : {seg_path}")
    _say(f"overlay PNG      : {png}")
    _say(f"total            : {time.monotonic() - t0:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "dice": d, "seconds_ack_to_seg": t_seg - t_acked}, indent=2, default=str))
    return 0 if summary["state"] == "DONE" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
