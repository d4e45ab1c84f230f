"""``pgsam-node evaluate``: Dice, IoU, HD95 and lesion detection of a model folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model folder on held-out synthetic studies or DICOM folders")
    add_config_arg(p)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: model.path, else the bundled model)")
    p.add_argument("--json", type=Path, default=None, help="write per-case and summary metrics to this JSON file")
    p.add_argument("--cases", type=int, default=50, help="number of held-out synthetic studies")
    p.add_argument("--seed-base", type=int, default=None, help="first held-out seed (default: the evaluation range, disjoint from training)")
    p.add_argument("--data", default="synthetic", help="'synthetic', a folder of DICOM studies with masks, or a NIfTI dataset (nnU-Net raw / folder per case)")
    p.add_argument("--reports", type=Path, default=None, help="CSV of report texts for --data DIR (case,report_text; DICOM also study,report)")
    p.add_argument("--studies", default=None, help="comma-separated study folder names to use from --data DIR (default all)")
    p.add_argument("--no-text", action="store_true", help="give the model no report text or findings")
    p.add_argument("--no-postprocess", action="store_true", help="skip the report-side / small-component filter")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from pgsam_node.inference.predictor import Predictor
    from pgsam_node.training import sources
    from pgsam_node.training.evaluate import evaluate_studies, format_table

    settings = load(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or settings.model.path
    m = settings.model.model_copy(update={"path": path, "batch_size": args.batch_size or settings.model.batch_size})
    pred = Predictor.from_settings(m)
    use_text = not args.no_text and pred.cfg.use_text
    if args.data == "synthetic":
        base = sources.EVAL_SEED_BASE if args.seed_base is None else args.seed_base
        studies = (sources.synthetic_study(base + i) for i in range(args.cases))
    else:
        from pgsam_node.training.nifti_data import load_data_folder

        include = [v.strip() for v in args.studies.split(",") if v.strip()] if args.studies else None
        studies, _ = load_data_folder(Path(args.data), args.reports, settings, include=include)
    result = evaluate_studies(pred, studies, use_text=use_text, postprocess=not args.no_postprocess, progress=not args.quiet)
    result["model"] = {"version": pred.model_version, "use_text": pred.cfg.use_text, "sequences": pred.cfg.sequences, "preset": pred.cfg.arch.name}
    result["settings"] = {"text_given": use_text, "postprocess": not args.no_postprocess, "data": args.data, "cases": len(result["cases"])}
    if args.quiet:
        print(format_table({"cases": [], "summary": result["summary"]}))
    else:
        print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"metrics written to {args.json}")
    return 0
