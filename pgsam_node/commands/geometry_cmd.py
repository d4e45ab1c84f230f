"""``pgsam-node geometry inspect|study``: check series geometry on files, before the node sees them.

``inspect PATH...`` groups the DICOM files under each path by SeriesInstanceUID and loads every
series, printing one JSON object per series (grid, notes, or the refusal reason). ``study
--role T1C=DIR --role T2=DIR ...`` builds the study's volumes on the reference grid and prints
the reference, coverage per role and the notes. UIDs are printed hashed; no patient data.
Exit status: 0 when everything loaded, 2 when a series or the study was refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from pgsam_node.commands import add_config_arg
from pgsam_node.errors import GeometryError
from pgsam_node.logsetup import uid_hash
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("geometry", help="check series geometry / build a study's volumes from files")
    gsub = p.add_subparsers(dest="geometry_action", metavar="ACTION")
    gsub.required = True
    pi = gsub.add_parser("inspect", help="load every series under the given files/folders")
    pi.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    add_config_arg(pi)
    pi.set_defaults(func=run_inspect)
    ps = gsub.add_parser("study", help="build the study's channels on the reference grid")
    ps.add_argument("--role", action="append", required=True, metavar="ROLE=DIR", help="e.g. T1C=/data/t1post (repeatable)")
    add_config_arg(ps)
    ps.set_defaults(func=run_study)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise GeometryError(f"no such file or folder: {p}", reason="unreadable")
    return out


def _by_series(files: list[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    import pydicom

    series: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            uid = str(ds.SeriesInstanceUID)
        except Exception:  # noqa: BLE001 - not DICOM (or no series): reported as skipped
            skipped.append(f)
            continue
        series.setdefault(uid, []).append(f)
    return series, skipped


def run_inspect(args) -> int:
    settings = load(args)
    from pgsam_node.geometry import load_series

    series, skipped = _by_series(_files(args.paths))
    rc = 0
    for uid, files in series.items():
        out: dict = {"series": uid_hash(uid), "files": len(files)}
        try:
            vol = load_series(files, spacing_tolerance=settings.geometry.spacing_tolerance)
        except GeometryError as exc:
            out.update(ok=False, reason=exc.reason, message=str(exc))
            rc = 2
        else:
            out.update(ok=True, **vol.geometry_summary(), note_messages=[str(n) for n in vol.warnings])
        print(json.dumps(out))
    if skipped:
        print(json.dumps({"skipped_non_dicom": len(skipped)}))
    if not series:
        print(json.dumps({"ok": False, "reason": "no_sequences", "message": "no DICOM series found"}))
        return 2
    return rc


def run_study(args) -> int:
    settings = load(args)
    from pgsam_node.geometry import build_study_volumes
    from pgsam_node.inference.fat_sat import fat_ranks

    roles: dict[str, list[Path]] = {}
    for spec in args.role:
        role, sep, folder = spec.partition("=")
        if not sep or role not in ("T1", "T2", "T1C"):
            raise GeometryError(f"--role expects T1=DIR, T2=DIR or T1C=DIR, got {spec!r}", reason="usage")
        roles[role] = _files([Path(folder)])
    try:
        sv = build_study_volumes(roles, settings.geometry)
    except GeometryError as exc:
        print(json.dumps({"ok": False, "reason": exc.reason, "message": str(exc)}))
        return 2
    print(
        json.dumps(
            {
                "ok": True,
                "reference_role": sv.reference_role,
                "reference": sv.reference.geometry_summary(),
                "working_grid": sv.working.geometry_summary() if sv.working is not None else None,
                "coverage": {r: round(float(v.mean()), 4) for r, v in sv.valid.items()},
                # The fat-saturation check's scores (model.non_fat_sat; None: it cannot tell).
                "fat_rank": fat_ranks(sv.channels, sv.valid),
                "notes": [str(n) for n in sv.notes],
            }
        )
    )
    return 0
