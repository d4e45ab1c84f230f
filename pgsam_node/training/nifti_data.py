"""Training / evaluation studies from NIfTI, as sites keep them.

Two layouts:

* **nnU-Net raw** — ``ROOT/dataset.json`` naming the channels (``channel_names`` of nnU-Net v2,
  or ``modality`` of v1: ``{"0": "T1", "1": "T2", "2": "T1C"}``), images
  ``ROOT/imagesTr/CASE_000X.nii.gz`` (X = channel index) and masks ``ROOT/labelsTr/CASE.nii.gz``;
* **a folder per case** — ``ROOT/<case>/<SEQUENCE>.nii.gz`` plus one mask file (e.g.
  ``GOLD_STANDARD.nii.gz`` as in open-ms, or ``mask`` / ``seg`` / ``label``).

Sequence names map to the model's roles by :data:`SEQUENCE_ROLES` (case-insensitive; FLAIR and
other extra sequences are kept under their own name and ignored by a model that does not use
them). Arrays become (Z, Y, X) = NIfTI (k, j, i) and the RAS affine becomes the project's
voxel (column, row, slice) -> LPS affine, so left/right stays the patient's. Reports come from a
CSV ``case,report_text`` (also accepted: ``study,report``). A missing or unknown channel, a file
on another grid than the first channel, a mask that is not on the image grid or an empty mask
raise :class:`~pgsam_node.errors.ModelError` naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pgsam_node.errors import ModelError
from pgsam_node.inference.preprocessing import StudyArrays
from pgsam_node.training.dicom_data import read_reports_csv

log = logging.getLogger(__name__)

#: Sequence name (upper case, as in dataset.json or a file stem) -> role.
SEQUENCE_ROLES = {
    "T1": "T1", "T1W": "T1", "T1PRE": "T1", "T1_PRE": "T1", "T1N": "T1",
    "T2": "T2", "T2W": "T2",
    "T1C": "T1C", "T1CE": "T1C", "T1POST": "T1C", "T1_POST": "T1C", "T1GD": "T1C", "T1_GD": "T1C",
    "FLAIR": "FLAIR", "T2FLAIR": "FLAIR", "T2_FLAIR": "FLAIR",
}  # fmt: skip
#: File stems (upper case) of the reference mask in a folder-per-case dataset.
MASK_STEMS = ("GOLD_STANDARD", "MASK", "SEG", "LABEL", "LABELS", "CONSENSUS", "GT")
NII_SUFFIXES = (".nii.gz", ".nii")
#: Tolerance (mm) when comparing two files' affines.
GRID_TOL_MM = 1e-3


def _stem(p: Path) -> str:
    for s in NII_SUFFIXES:
        if p.name.lower().endswith(s):
            return p.name[: -len(s)]
    return p.stem


def read_case_reports(path: Path | None) -> dict[str, str]:
    """``case`` -> ``report_text`` from a CSV (UTF-8; ``study,report`` accepted too)."""
    return read_reports_csv(path, (("case", "report_text"), ("study", "report")))


def nifti_to_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI -> ((Z, Y, X) float32 array, 4x4 voxel (col, row, slice) -> LPS)."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))  # a Nifti1Image / Nifti2Image (dataobj, affine)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several types for a bad file
        raise ModelError(f"cannot read NIfTI {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ModelError(f"{path} is not a 3-D volume (shape {data.shape})")
    ras = np.asarray(img.affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras  # NIfTI is RAS+, DICOM patient space LPS+
    return np.ascontiguousarray(data.transpose(2, 1, 0)), lps


def _same_grid(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return a[0].shape == b[0].shape and bool(np.allclose(a[1], b[1], atol=GRID_TOL_MM))


def load_nifti_case(case_id: str, channels: dict[str, Path], mask_path: Path | None, report: str | None = None) -> StudyArrays:
    """One case from NIfTI files (role -> path) and a mask file, checked to share one grid."""
    if not channels:
        raise ModelError(f"case {case_id}: no image channel")
    vols: dict[str, np.ndarray] = {}
    first: tuple[np.ndarray, np.ndarray] | None = None
    first_path = None
    for role, path in channels.items():
        if not path.is_file():
            raise ModelError(f"case {case_id}: channel {role} file {path} is missing")
        vol = nifti_to_lps(path)
        if first is None:
            first, first_path = vol, path
        elif not _same_grid(vol, first):
            raise ModelError(f"{path} is on another grid than {first_path} (shape {vol[0].shape} vs {first[0].shape} or affine differs)")
        vols[role] = vol[0]
    assert first is not None
    mask = None
    if mask_path is not None:
        if not mask_path.is_file():
            raise ModelError(f"case {case_id}: mask file {mask_path} is missing")
        m = nifti_to_lps(mask_path)
        if not _same_grid(m, first):
            raise ModelError(f"mask {mask_path} is on another grid than the images ({first_path}); resample it onto the image grid")
        mask = (m[0] > 0.5).astype(np.uint8)
        if not mask.any():
            raise ModelError(f"mask {mask_path} is empty (no voxel > 0)")
    from pgsam_node.training.dicom_data import _parse_findings

    findings = _parse_findings(report)
    return StudyArrays(
        case_id=case_id,
        volumes=vols,
        valid={r: np.isfinite(v) for r, v in vols.items()},
        mask=mask,
        affine=first[1],
        report=report,
        findings=findings,
        meta={"diagnosis": (findings.diagnosis if findings and findings.diagnosis else "unknown"), "distractor": None, "source": "nifti"},
    )


def _role(name: str, where: Path) -> str:
    role = SEQUENCE_ROLES.get(name.strip().upper().replace("-", "_").replace(" ", "_"))
    if role is None:
        raise ModelError(f"{where}: unknown channel name {name!r} (known: {', '.join(sorted(SEQUENCE_ROLES))})")
    return role


def nnunet_cases(root: Path) -> list[tuple[str, dict[str, Path], Path | None]]:
    """(case, role -> image path, label path) for an nnU-Net raw dataset folder."""
    dj = root / "dataset.json"
    try:
        meta = json.loads(dj.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {dj}: {exc}") from exc
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{dj} names no channels ('channel_names' or 'modality')")
    idx_role = {int(k): _role(str(v), dj) for k, v in names.items()}
    ending = meta.get("file_ending", ".nii.gz")
    images = root / "imagesTr"
    if not images.is_dir():
        raise ModelError(f"{root}: no imagesTr folder")
    cases = sorted({p.name[: -len(ending)][:-5] for p in images.iterdir() if p.name.endswith(ending) and p.name[: -len(ending)][-5:-4] == "_"})
    out = []
    for case in cases:
        present = {p.name for p in images.iterdir() if p.name.startswith(case + "_")}
        for fname in present:
            ch = fname[len(case) + 1 : -len(ending)]
            if not ch.isdigit() or int(ch) not in idx_role:
                raise ModelError(f"{images / fname}: channel {ch} is not named in {dj}")
        chans = {role: images / f"{case}_{i:04d}{ending}" for i, role in sorted(idx_role.items())}
        for role, p in chans.items():
            if not p.is_file():
                raise ModelError(f"case {case}: channel {role} file {p} is missing")
        lab = root / "labelsTr" / f"{case}{ending}"
        out.append((case, chans, lab if lab.is_file() else None))
    return out


def folder_cases(root: Path) -> list[tuple[str, dict[str, Path], Path | None]]:
    """(case, role -> path, mask path) for a folder-per-case dataset."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in sorted(folder.iterdir()) if p.name.lower().endswith(NII_SUFFIXES)]
        if not files:
            continue
        chans: dict[str, Path] = {}
        mask = None
        for p in files:
            stem = _stem(p).upper()
            if stem in MASK_STEMS:
                mask = p
                continue
            role = _role(stem, p)
            if role in chans:
                raise ModelError(f"{p}: a second file for sequence {role} (first {chans[role].name})")
            chans[role] = p
        out.append((folder.name, chans, mask))
    return out


def is_nifti_dataset(root: Path) -> bool:
    """True for an nnU-Net raw folder or a folder of case folders holding NIfTI files."""
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return True
    return root.is_dir() and any(p.is_dir() and any(q.name.lower().endswith(NII_SUFFIXES) for q in p.iterdir()) for p in root.iterdir())


def load_nifti_studies(
    root: Path, reports_csv: Path | None = None, require_mask: bool = True, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[StudyArrays]:
    """Every case of a NIfTI dataset (either layout), sorted by name; errors name the bad file."""
    if not root.is_dir():
        raise ModelError(f"data folder {root} does not exist")
    nnunet = (root / "dataset.json").is_file()
    cases = nnunet_cases(root) if nnunet else folder_cases(root)
    names = {c[0] for c in cases}
    for name in (include or []) + (exclude or []):
        if name not in names:
            raise ModelError(f"case {name!r} not found under {root}")
    reports = read_case_reports(reports_csv)
    out = []
    for case, chans, mask in cases:
        if (include and case not in include) or (exclude and case in exclude):
            continue
        if require_mask and mask is None:
            raise ModelError(f"case {case}: no mask file ({'labelsTr/' + case + '.nii.gz' if nnunet else ' / '.join(MASK_STEMS)})")
        out.append(load_nifti_case(case, chans, mask, reports.get(case)))
    log.info("read %d NIfTI case(s) from %s (%s layout)", len(out), root.name, "nnU-Net" if nnunet else "folder-per-case")
    return out


def load_data_folder(
    root: Path, reports_csv: Path | None = None, settings=None, include: list[str] | None = None, exclude: list[str] | None = None
) -> tuple[list[StudyArrays], str]:
    """Studies under ``root`` whichever way they are kept (NIfTI layouts or DICOM folders).

    Returns
    -------
    tuple
        (studies, a one-line description of the data for the model's training record).
    """
    if is_nifti_dataset(root):
        studies = load_nifti_studies(root, reports_csv, include=include, exclude=exclude)
        kind = "NIfTI"
    else:
        from pgsam_node.training.dicom_data import load_dicom_studies

        studies = load_dicom_studies(root, reports_csv, settings, include=include, exclude=exclude)
        kind = "DICOM"
    if not studies:
        raise ModelError(f"no study with a mask found under {root}")
    return studies, f"{kind} studies under {root}: {', '.join(st.case_id for st in studies)}"
