"""How stored pixel values become intensities: MONOCHROME1 images (minimum displayed white) are
inverted to what viewers show before the model sees them (label volumes and every other
photometric interpretation are read as stored); Pixel Padding Value pixels become background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pgsam_node.geometry import build_study_volumes, load_series
from pgsam_node.geometry.load import as_displayed
from pgsam_node.synth.dicom_writer import write_study


def _as_monochrome1(paths: list[Path], out: Path) -> list[Path]:
    """The same series written as MONOCHROME1 that displays identically: stored values reflected
    within the BitsStored range (as a modality that stores MONOCHROME1 would)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        ds = pydicom.dcmread(p)
        px = ds.pixel_array.astype(np.int64)
        top = (1 << int(ds.BitsStored)) - 1
        ds.PixelData = (top - px).astype(ds.pixel_array.dtype).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(out / p.name, enforce_file_format=True)
        written.append(out / p.name)
    return written


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(1000301, tmp_path_factory.mktemp("mono1") / "study")


def test_monochrome1_image_reads_as_displayed(study, tmp_path):
    t1c = list(study.paths_by_role["T1C"])
    mono1 = _as_monochrome1(t1c, tmp_path / "t1c")
    original = load_series(t1c)
    inverted = load_series(mono1, invert_monochrome1=True)
    np.testing.assert_allclose(inverted.array, original.array, rtol=0, atol=1e-3)
    assert "monochrome1" in [n.code for n in inverted.warnings]
    # A label volume is read as stored (its values are labels, not intensities).
    stored = load_series(mono1)
    assert not np.allclose(stored.array, original.array)


def test_study_with_a_monochrome1_series_gives_the_same_channels_and_mask(study, tmp_path):
    roles = {r: list(p) for r, p in study.paths_by_role.items()}
    mono = dict(roles, T1C=_as_monochrome1(roles["T1C"], tmp_path / "t1c"))
    a = build_study_volumes(roles)
    b = build_study_volumes(mono)
    for role in a.channels:
        np.testing.assert_allclose(b.channels[role], a.channels[role], rtol=0, atol=1e-3)

    from pgsam_node.config import load_settings
    from pgsam_node.inference.router import ModelRouter
    from pgsam_node.reports.parse import parse_report

    findings = parse_report(study.report_text)
    model = ModelRouter.from_settings(load_settings(None).model).for_findings(findings)
    ma = model.predict(a.channels, a.valid, findings, study.report_text, a.grid.affine).mask
    mb = model.predict(b.channels, b.valid, findings, study.report_text, b.grid.affine).mask
    assert ma.any() and np.array_equal(ma, mb)


def test_as_displayed_reflects_within_the_stored_range():
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME1", 12, 0
    assert as_displayed(np.array([0, 4095, 1000]), ds).tolist() == [4095, 0, 3095]
    ds.PixelRepresentation = 1
    assert as_displayed(np.array([-2048, 2047, 5]), ds).tolist() == [2047, -2048, -6]
    ds.PixelRepresentation, ds.BitsStored = 0, 10**9  # hostile: bounded to 32 bits, no huge integer
    assert as_displayed(np.array([0]), ds).tolist() == [(1 << 32) - 1]
    ds.PhotometricInterpretation = "MONOCHROME2"
    v = np.array([1, 2, 3])
    assert as_displayed(v, ds) is v


def _padded(paths: list[Path], out: Path, fraction: float = 0.15) -> list[Path]:
    """The same series with a band of columns on each side replaced by PixelPaddingValue (the
    largest stored value, as some post-processing writes outside the region it resampled)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        ds = pydicom.dcmread(p)
        px = ds.pixel_array.copy()
        pad = (1 << int(ds.BitsStored)) - 1
        n = int(px.shape[1] * fraction)
        px[:, :n] = pad
        px[:, -n:] = pad
        ds.PixelData = px.tobytes()
        ds.add_new("PixelPaddingValue", "US", pad)
        ds.save_as(out / p.name, enforce_file_format=True)
        written.append(out / p.name)
    return written


def test_pixel_padding_becomes_background(study, tmp_path):
    from pgsam_node.geometry import percentile_normalize
    from pgsam_node.geometry.normalize import NormParams

    t2 = list(study.paths_by_role["T2"])
    original = load_series(t2)
    vol = load_series(_padded(t2, tmp_path / "t2"))
    n = int(original.shape[2] * 0.15)
    inner = (slice(None), slice(None), slice(n, original.shape[2] - n))
    np.testing.assert_array_equal(vol.array[inner], original.array[inner])
    assert float(vol.array[:, :, :n].max()) == float(vol.array[inner].min())
    assert "pixel_padding" in [w.code for w in vol.warnings]
    # Read as stored, the padding is the brightest value of the series and squeezes the
    # percentile window: the image's own top becomes dim.
    norm = NormParams()
    ok = np.ones(vol.shape, bool)
    top = np.percentile(original.array[inner], 99)
    raw = vol.array.copy()
    raw[:, :, :n] = raw[:, :, -n:] = float((1 << 16) - 1)
    assert percentile_normalize(raw, ok, norm)[inner][original.array[inner] >= top].mean() < 0.5
    assert percentile_normalize(vol.array, ok, norm)[inner][original.array[inner] >= top].mean() > 0.8


def test_no_padding_value_means_no_padding(study):
    ds = pydicom.dcmread(study.paths_by_role["T2"][0])
    assert "PixelPaddingValue" not in ds
    assert "pixel_padding" not in [w.code for w in load_series(list(study.paths_by_role["T2"])).warnings]


def test_odd_padding_values_declare_nothing():
    from pgsam_node.geometry.load import _padding

    px = np.array([[0, 5, 4095]])
    for value in (b"\x01\x02", [1, 2], "x"):
        ds = pydicom.Dataset()
        ds.PixelPaddingValue = value
        assert _padding(px, ds) is None
    ds = pydicom.Dataset()
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4095, 5  # a range, in either order
    assert _padding(px, ds).tolist() == [[False, True, True]]
