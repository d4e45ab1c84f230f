"""Synthetic MR instances for ingest tests (pydicom; no shared data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def make_mr(study_uid: str, series_uid: str, index: int = 0, *, description: str = "t2_tse_tra", tr: float = 4000,
            te: float = 95, size: int = 64, bits: int = 16, series_number: int = 3, agent: str | None = None,
            seed: int | None = None, sop_uid: str | None = None) -> Dataset:
    """One MR Image Storage instance with random pixels (deterministic per ``seed``/``index``)."""
    rng = np.random.default_rng(index if seed is None else seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientID, ds.PatientName, ds.Modality = "TEST001", "Test^Patient", "MR"
    ds.AccessionNumber, ds.StudyDate = "ACC001", "20260101"
    ds.SeriesDescription = ds.ProtocolName = description
    ds.SeriesNumber, ds.InstanceNumber = series_number, index + 1
    ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
    ds.RepetitionTime, ds.EchoTime = tr, te
    if agent:
        ds.ContrastBolusAgent = agent
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(index)], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    if bits == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = rng.integers(0, 256, (size, size), dtype=np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def write_series(folder: Path, n: int, study_uid: str | None = None, series_uid: str | None = None, **kw) -> list[Path]:
    """Write ``n`` instances of one series as Part-10 files; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    out = []
    for i in range(n):
        ds = make_mr(study_uid, series_uid, i, **kw)
        p = folder / f"im{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out
