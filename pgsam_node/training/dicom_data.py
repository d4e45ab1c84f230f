"""Training / evaluation studies from DICOM folders with reference masks.

Layout: ``ROOT/<study>/<series folder>/*.dcm``, one folder per series. Series folders map to
roles by name (:data:`FOLDER_ROLES`, case-insensitive; e.g. the TCIA Brain-Tumor-Progression
layout ``T1prereg`` -> T1, ``T1post`` -> T1C, ``T2reg`` -> T2, ``MaskTumor`` -> mask). The mask is
either an image series with 0/1 pixels (e.g. Secondary Capture) or a DICOM SEG. Volumes go
through the geometry stage (:func:`pgsam_node.geometry.build_study_volumes`) exactly as in the
node, and the mask is resampled onto the reference grid with nearest neighbour.

Report texts come from a CSV with columns ``study`` (folder name, StudyInstanceUID or accession)
and ``report``; findings are parsed from the text with :func:`pgsam_node.reports.parse.parse_report`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from pgsam_node.errors import GeometryError, ModelError
from pgsam_node.findings import Findings
from pgsam_node.inference.preprocessing import StudyArrays

log = logging.getLogger(__name__)

#: Series folder name (lower case) -> role; "mask" marks the reference segmentation.
FOLDER_ROLES = {
    "t1": "T1",
    "t1pre": "T1",
    "t1prereg": "T1",
    "t2": "T2",
    "t2reg": "T2",
    "t1c": "T1C",
    "t1post": "T1C",
    "t1gd": "T1C",
    "mask": "mask",
    "masktumor": "mask",
    "seg": "mask",
    "label": "mask",
}

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def read_reports_csv(path: Path | None, columns: tuple[tuple[str, str], ...] = (("study", "report"),)) -> dict[str, str]:
    """Key -> report text from a CSV (UTF-8, header row).

    ``columns`` lists accepted (key column, text column) pairs, first match wins; the default is
    ``study,report``. No file = no reports; a header with none of the pairs is an error naming
    the file and the first pair.
    """
    if path is None:
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ModelError(f"cannot read reports CSV {path}: {exc}") from exc
    if not rows:
        return {}
    for key, text in columns:
        if {key, text} <= set(rows[0]):
            return {r[key].strip(): r[text] for r in rows if r.get(key)}
    key, text = columns[0]
    raise ModelError(f"reports CSV {path} needs the columns '{key}' and '{text}'")


def _parse_findings(text: str | None) -> Findings | None:
    if not text:
        return None
    try:
        from pgsam_node.reports.parse import parse_report
    except ImportError:
        log.warning("pgsam_node.reports.parse is not available: findings not parsed from the report text")
        return None
    return parse_report(text)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _load_mask(paths: list[Path], reference) -> np.ndarray:
    """Mask series or SEG -> (Z, Y, X) uint8 0/1 on the reference grid."""
    import pydicom

    from pgsam_node.geometry import Volume, load_series, mask_to_reference

    ds0 = pydicom.dcmread(paths[0], stop_before_pixels=True)
    if str(ds0.SOPClassUID) == SEG_SOP_CLASS:
        import highdicom as hd

        seg = hd.seg.segread(paths[0])
        hv = seg.get_volume(combine_segments=True, relabel=True)
        arr = np.asarray(hv.array)
        a = np.asarray(hv.affine, dtype=np.float64)
        # highdicom indexes (slice, row, column); our affines take (column, row, slice).
        aff = np.eye(4)
        aff[:3, 0], aff[:3, 1], aff[:3, 2], aff[:3, 3] = a[:3, 2], a[:3, 1], a[:3, 0], a[:3, 3]
        sp = tuple(float(np.linalg.norm(aff[:3, i])) for i in (2, 1, 0))
        vol = Volume(array=arr.astype(np.float32), affine=aff, spacing=sp)
    else:
        vol = load_series(paths)
    labels, _ = mask_to_reference(vol, reference)
    return (np.asarray(labels) > 0).astype(np.uint8)


def load_dicom_study(folder: Path, report: str | None = None, settings=None) -> StudyArrays:
    """Load one study folder (see module docstring) as :class:`StudyArrays`."""
    from pgsam_node.geometry import build_study_volumes

    series: dict[str, list[Path]] = {}
    mask_paths: list[Path] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        role = FOLDER_ROLES.get(sub.name.lower())
        if role is None:
            log.info("study folder %s: series folder %s has no known role, skipped", folder.name, sub.name)
            continue
        files = _dicom_files(sub)
        if role == "mask":
            mask_paths = files
        else:
            series[role] = files
    if not series:
        raise ModelError(f"{folder}: no sequence folder ({', '.join(sorted(FOLDER_ROLES))})")
    geo = settings.geometry if settings is not None else None
    sv = build_study_volumes(series, geo)
    mask = _load_mask(mask_paths, sv.grid) if mask_paths else None  # on the grid the channels are on
    findings = _parse_findings(report)
    return StudyArrays(
        case_id=folder.name,
        volumes=dict(sv.channels),
        valid=dict(sv.valid),
        mask=mask,
        affine=np.asarray(sv.grid.affine, dtype=np.float64),
        report=report,
        findings=findings,
        meta={"diagnosis": (findings.diagnosis if findings and findings.diagnosis else "unknown"), "distractor": None, "reference_role": sv.reference_role},
    )


def load_dicom_studies(
    root: Path, reports_csv: Path | None = None, settings=None, require_mask: bool = True, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[StudyArrays]:
    """Every study folder under ``root`` (sorted by name) that has sequences (and a mask).

    ``include`` / ``exclude`` select study folders by name (e.g. leave-one-out folds).
    """
    if not root.is_dir():
        raise ModelError(f"data folder {root} does not exist")
    reports = read_reports_csv(reports_csv)
    out = []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = {f.name for f in folders}
    for name in (include or []) + (exclude or []):
        if name not in names:
            raise ModelError(f"study folder {name!r} not found under {root}")
    for folder in folders:
        if (include and folder.name not in include) or (exclude and folder.name in exclude):
            continue
        try:
            st = load_dicom_study(folder, reports.get(folder.name), settings)
        except (GeometryError, ModelError) as exc:
            log.warning("study folder %s skipped: %s", folder.name, exc)
            continue
        if require_mask and st.mask is None:
            log.warning("study folder %s skipped: no mask series", folder.name)
            continue
        out.append(st)
    return out
