"""``pgsam-node train``: train a PG-SAM model folder on synthetic studies or DICOM folders."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("train", help="train a PG-SAM model (synthetic studies or DICOM folders with masks)")
    add_config_arg(p)
    p.add_argument("--preset", default="tiny", help="architecture preset (tiny, litemedsam, vit_b, vit_l, vit_h)")
    p.add_argument("--out", required=True, type=Path, help="model folder to write (weights.safetensors + config.json)")
    p.add_argument("--steps", type=int, default=1200, help="optimisation steps (ignored with --epochs)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training slices (overrides --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--no-text", action="store_true", help="ablation: no report text/findings (learned default prompts)")
    p.add_argument("--single-sequence", nargs="?", const="T1", default=None, metavar="ROLE", help="ablation: one sequence only (default T1)")
    p.add_argument("--data", action="append", default=None,
                   help="'synthetic' (default), a folder of DICOM studies with masks, or a NIfTI dataset (nnU-Net raw / folder per case); "
                        "repeatable for the litemedsam preset")
    p.add_argument("--reports", type=Path, action="append", default=None,
                   help="CSV of report texts for the --data folder in the same position (case,report_text; DICOM also study,report)")
    p.add_argument("--studies", default=None, help="comma-separated study folder names to use from --data DIR (default all)")
    p.add_argument("--exclude-studies", default=None, help="comma-separated study folder names to leave out (e.g. the held-out fold)")
    p.add_argument("--init", type=Path, default=None, help="start from the weights of this model folder (fine-tuning; matching tensors only)")
    p.add_argument("--cases", type=int, default=200, help="number of synthetic training studies")
    p.add_argument("--acquisition", choices=["grid", "scanner", "mixed"], default="grid",
                   help="synthetic studies: grid = every sequence drawn on one axial grid (fast); scanner = each sequence on "
                        "its own acquisition grid (coronal/oblique T1, tilted T2) resampled onto T1C as the node does; "
                        "mixed = both versions of every seed")
    p.add_argument("--appearance-jitter", type=float, default=1.0, metavar="F",
                   help="synthetic studies: spread of tissue and lesion signals around the generator's tables, times F "
                        "(1 = the generator's own; larger = domain randomisation)")
    p.add_argument("--fat-sat-off", type=float, default=0.0, metavar="P",
                   help="synthetic studies: probability that a study's T2, and its T1C, are acquired without fat "
                        "saturation (fat and marrow bright; 0 = all fat-saturated, as before)")
    p.add_argument("--second-generator", type=int, default=0, metavar="N",
                   help="synthetic studies: add N studies of the second, independent phantom generator "
                        "(pgsam_node.synth.second; domain randomisation across generators)")
    p.add_argument("--third-generator", type=int, default=0, metavar="N",
                   help="synthetic studies: add N studies of the third phantom generator (pgsam_node.synth.third, seeds "
                        "from 700,000)")
    p.add_argument("--input-fov-mm", type=float, default=None, metavar="MM",
                   help="the model's field of view: training studies are cut to a square of MM mm centred on the body, as "
                        "the predictor will cut every study (default: that of --init, else 0 = the whole slice)")
    p.add_argument("--augment", type=float, default=0.0, metavar="P",
                   help="probability that a training slice gets rotation/scale/elastic, bias-field, resolution and noise "
                        "augmentation (0 = flips and gamma only)")
    p.add_argument("--seq-drop", type=float, default=0.2, metavar="P",
                   help="probability that a training slice loses sequences (missing-sequence robustness)")
    p.add_argument("--seq-drop-max", type=int, default=1, metavar="K",
                   help="such a slice loses 1..K of its sequences, never all (1 = one, the default)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="prepared synthetic studies cache")
    p.add_argument("--task", default=None, help="task name recorded in the model (default parotid-lesion, or brain-tumour for DICOM data)")
    p.add_argument("--context-slices", type=int, choices=[1, 3], default=3, help="slices per sequence (3 = 2.5-D)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("litemedsam preset (frozen pretrained encoder; see docs/model.md)")
    g.add_argument("--steps-loc", type=int, default=300, help="localisation-head steps (cheap)")
    g.add_argument("--steps-dec", type=int, default=40, help="prompt / fusion / decoder steps (a decoder pass each)")
    g.add_argument("--mix-synthetic", type=int, default=4, help="synthetic studies mixed into real training data")
    g.add_argument("--variants", type=int, default=2, help="augmentation variants per real lesion slice (1 = none); each costs an encoder pass")
    g.add_argument("--max-slices", type=int, default=12, help="lesion-range slices per real study in the slice bank")
    g.add_argument("--localiser", choices=["head", "asymmetry"], default="head",
                   help="head = train the localisation head (default); asymmetry = write a zero-shot folder: the packaged "
                        "LiteMedSAM decodes the boxes of the report-guided asymmetry proposals, nothing is trained")
    p.set_defaults(func=run)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args) -> int:
    import torch

    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.training import sources
    from pgsam_node.model.presets import BRAIN_TUMOUR_LABELS, PAROTID_LABELS
    from pgsam_node.training.train import TrainOptions, synthetic_train_set, train

    settings = load(args)
    if not 0.0 <= args.seq_drop <= 1.0 or args.seq_drop_max < 1:
        raise SystemExit("error: --seq-drop must be within 0..1 and --seq-drop-max at least 1")
    if not 0.0 <= args.fat_sat_off <= 1.0:
        raise SystemExit("error: --fat-sat-off must be within 0..1")
    if args.second_generator < 0 or args.third_generator < 0:
        raise SystemExit("error: --second-generator and --third-generator must be 0 or more")
    if args.input_fov_mm is not None and args.input_fov_mm < 0:
        raise SystemExit("error: --input-fov-mm must be 0 (whole slice) or more")
    fov_mm = _training_fov_mm(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sequences = [args.single_sequence] if args.single_sequence else ["T1", "T2", "T1C"]
    command = "pgsam-node " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0] else ""
    from pgsam_node.model.presets import get_preset

    arch = get_preset(args.preset)
    norm = NormParams()
    if getattr(args, "localiser", "head") == "asymmetry":
        return _write_zero_shot(args, sequences, command)
    if arch.box_head and arch.pretrained:
        return _run_frozen(args, settings, sequences, command)
    if args.data and len(args.data) > 1:
        raise SystemExit("error: several --data folders are only supported by the litemedsam preset")
    args.data = (args.data or ["synthetic"])[0]
    args.reports = (args.reports or [None])[0]
    if args.data == "synthetic":
        seeds = [sources.TRAIN_SEED_BASE + i for i in range(args.cases)]
        ts = synthetic_train_set(seeds, sequences, arch.img_size, norm, args.cache_dir, progress=not args.no_progress,
                                 acquisition=args.acquisition, appearance_jitter=args.appearance_jitter,
                                 fat_sat_off=args.fat_sat_off, second_generator=args.second_generator, fov_mm=fov_mm,
                                 third_generator=args.third_generator)
        data_desc = {
            "grid": f"synthetic seeds {seeds[0]}..{seeds[-1]} (pgsam_node.synth.phantom.generate_case, 128 px, 24 slices)",
            "scanner": f"synthetic seeds {seeds[0]}..{seeds[-1]} as acquired (pgsam_node.synth.acquisition.acquire: per-series "
                       "grids resampled onto T1C)",
            "mixed": f"synthetic seeds {seeds[0]}..{seeds[-1]}, each twice: generate_case (128 px, 24 slices) and as acquired "
                     "(pgsam_node.synth.acquisition.acquire)",
        }[args.acquisition] + (f"; appearance jitter x{args.appearance_jitter:g}" if args.appearance_jitter != 1.0 else "") \
            + (f"; T2 and T1C each without fat saturation with p={args.fat_sat_off:g}" if args.fat_sat_off else "") \
            + (f"; plus {args.second_generator} studies of the second generator (pgsam_node.synth.second.training_case, "
               f"seeds {sources.SECOND_TRAIN_SEED_BASE}..{sources.SECOND_TRAIN_SEED_BASE + args.second_generator - 1})"
               if args.second_generator else "") \
            + (f"; plus {args.third_generator} studies of the third generator (pgsam_node.synth.third.training_case, "
               f"seeds {sources.THIRD_TRAIN_SEED_BASE}..{sources.THIRD_TRAIN_SEED_BASE + args.third_generator - 1})"
               if args.third_generator else "") \
            + (f"; every study cut to the {fov_mm:g} mm body window" if fov_mm > 0 else "")
        task, labels = args.task or "parotid-lesion", PAROTID_LABELS
    else:
        from pgsam_node.training.nifti_data import load_data_folder
        from pgsam_node.training.train import build_train_set

        studies, data_desc = load_data_folder(Path(args.data), args.reports, settings, include=_names(args.studies), exclude=_names(args.exclude_studies))
        ts = build_train_set(studies, sequences, arch.img_size, norm, progress=not args.no_progress, fov_mm=fov_mm)
        task, labels = args.task or "brain-tumour", BRAIN_TUMOUR_LABELS
    opts = TrainOptions(
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        epochs=args.epochs,
        seed=args.seed,
        resume=args.resume,
        use_text=not args.no_text,
        sequences=sequences,
        batch_size=args.batch_size,
        lr=args.lr,
        context_slices=args.context_slices,
        checkpoint_every=args.checkpoint_every,
        p_seq_drop=args.seq_drop,
        seq_drop_max=args.seq_drop_max,
        device=settings.model.device,
        sam_checkpoint=settings.model.sam_checkpoint,
        text_encoder=settings.model.text_encoder,
        task=task,
        labels=list(labels),
        command=command,
        data_description=data_desc,
        init=args.init,
        input_fov_mm=args.input_fov_mm,
        p_augment=args.augment,
        progress=not args.no_progress,
    )
    cfg = train(opts, ts)
    print(f"model written to {args.out} (version {cfg.version})")
    return 0


def _training_fov_mm(args) -> float:
    """The field of view the model will have (``--input-fov-mm``, else that of ``--init``'s
    config.json, else 0): the training studies are cut to it."""
    if args.input_fov_mm is not None:
        return float(args.input_fov_mm)
    if args.init is None:
        return 0.0
    from pgsam_node.errors import ModelError
    from pgsam_node.model.checkpoint import read_config

    try:
        return float(read_config(args.init).input_fov_mm)
    except ModelError as exc:
        raise SystemExit(f"error: --init: {exc}") from exc


def _run_frozen(args, settings, sequences: list[str], command: str) -> int:
    """``train --preset litemedsam``: the frozen-encoder recipe on real folders plus synthetic studies."""
    from pgsam_node.model.presets import TASK_LABELS
    from pgsam_node.training import sources
    from pgsam_node.training.nifti_data import load_data_folder
    from pgsam_node.training.train_frozen import FrozenTrainOptions, fit_frozen_model

    folders = [d for d in (args.data or []) if d != "synthetic"]
    reports = list(args.reports or [])
    if len(reports) > len(folders):
        raise SystemExit("error: more --reports than --data folders")
    real, descs = [], []
    for i, folder in enumerate(folders):
        studies, desc = load_data_folder(Path(folder), reports[i] if i < len(reports) else None, settings,
                                         include=_names(args.studies), exclude=_names(args.exclude_studies))
        real += studies
        descs.append(desc)
    n_syn = args.mix_synthetic if folders else args.cases
    synthetic = [sources.synthetic_study(sources.TRAIN_SEED_BASE + i) for i in range(n_syn)]
    if synthetic:
        descs.append(f"{n_syn} synthetic studies (seeds {sources.TRAIN_SEED_BASE}..{sources.TRAIN_SEED_BASE + n_syn - 1})")
    task = args.task or ("brain-tumour" if folders else "parotid-lesion")
    opts = FrozenTrainOptions(steps_loc=args.steps_loc, steps_dec=args.steps_dec, seed=args.seed, sequences=sequences)
    cfg = fit_frozen_model(args.out, real, synthetic, args.preset, sequences, not args.no_text, opts, args.cache_dir / "embeddings", task,
                           TASK_LABELS.get(task, TASK_LABELS["parotid-lesion"]), command=command, data_description="; ".join(descs),
                           variants=args.variants, max_eval=args.max_slices, text_encoder=settings.model.text_encoder,
                           progress=not args.no_progress)
    print(f"model written to {args.out} (version {cfg.version})")
    return 0


def _write_zero_shot(args, sequences: list[str], command: str) -> int:
    """``train --preset litemedsam --localiser asymmetry``: a model folder that needs no training.

    The pretrained SAM parts come from the installed package (hash-checked at load); the PG-SAM
    modules keep their identity initialisation, and at inference the box prompts come from
    :mod:`pgsam_node.inference.proposals` (the report's side, signal and size).
    """
    import torch

    from pgsam_node.model.checkpoint import save_model_dir
    from pgsam_node.model.pgsam import build_model
    from pgsam_node.model.presets import TASK_LABELS, ModelConfig, get_preset

    base = get_preset(args.preset)
    if not base.pretrained:
        raise SystemExit(f"error: --localiser asymmetry needs a preset with packaged pretrained weights (litemedsam), not {args.preset!r}")
    if args.data:
        raise SystemExit("error: --localiser asymmetry trains nothing; leave out --data (evaluate with `pgsam-node evaluate --data`)")
    task = args.task or "brain-lesion"
    if task not in TASK_LABELS:
        raise SystemExit(f"error: unknown --task {task!r}; known: {', '.join(TASK_LABELS)}")
    arch = get_preset(args.preset, box_head=False, localiser="asymmetry")
    cfg = ModelConfig(arch=arch, sequences=sequences, use_text=False, context_slices=1, task=task, labels=list(TASK_LABELS[task]),
                      name=args.out.name,
                      training={"command": command, "seed": args.seed, "steps": 0,
                                "recipe": "zero-shot: packaged LiteMedSAM decoder on the boxes of the report-guided asymmetry "
                                          "proposals (pgsam_node/inference/proposals.py); nothing trained, no data seen",
                                "see": "README.md 'Model quality on real data' and docs/model.md"})
    torch.manual_seed(args.seed)
    cfg = save_model_dir(build_model(cfg).eval(), cfg, args.out)
    print(f"model written to {args.out} (version {cfg.version})")
    return 0
