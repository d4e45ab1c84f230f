"""SEG / SR / overlay encoding on synthetic series: highdicom round trip, dciodvfy, codes, policies."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from pgsam_node.config import load_settings
from pgsam_node.encode import (
    algorithm_info,
    build_fractional_seg,
    build_outputs,
    build_seg,
    lesion_measurements,
    load_sources,
    segment_codes_for,
    validate_seg,
)
from pgsam_node.errors import EncodeError
from pgsam_node.findings import Findings

from ..dicom_tools import assert_dciodvfy_clean, blob_mask
from ..factories import Geometry

ALG = algorithm_info("0123456789abcdef" * 4)
GRID = Geometry(rows=32, columns=24)  # 0.9 x 0.8 mm pixels, 3 mm slices


@pytest.fixture
def series(mr_files):
    return mr_files(n_slices=6, geometry=GRID)


def _save(ds, tmp_path, name):
    p = tmp_path / f"{name}.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p


def test_binary_seg_round_trip_and_dciodvfy(series, settings, tmp_path):
    paths, dss = series
    mask = blob_mask((6, 32, 24))
    seg = build_seg(mask, paths, Findings(present=True, side="right"), settings, ALG, run_version=2)
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesNumber == settings.seg.series_number_base + 2
    assert seg.SeriesDescription == "PG-SAM lesion"
    assert seg.Manufacturer == "PG-SAM Node"
    assert seg.PatientID == "TEST001" and seg.StudyInstanceUID == dss[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == dss[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dss[0].SeriesInstanceUID
    # every encoded frame references a source instance of the reference series
    src_uids = {d.SOPInstanceUID for d in dss}
    for pf in seg.PerFrameFunctionalGroupsSequence:
        assert pf.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in src_uids
    validate_seg(seg, mask, load_sources(paths))
    seg2 = pydicom.dcmread(_save(seg, tmp_path, "seg"))
    desc = seg2.SegmentSequence[0]
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    region = desc.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("45289007", "SCT")
    assert region.AnatomicRegionModifierSequence[0].CodeValue == "24028007"  # Right
    assert desc.SegmentAlgorithmName == "PG-SAM"
    alg = desc.SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmName == "PG-SAM" and alg.AlgorithmVersion == ALG.version
    assert alg.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert seg2.SoftwareVersions == ALG.version and ALG.version.endswith("+0123456789ab")
    assert_dciodvfy_clean(tmp_path / "seg.dcm")


def test_deterministic_uids_and_series_number(series, settings):
    paths, _ = series
    mask = blob_mask((6, 32, 24))
    a = build_seg(mask, paths, None, settings, ALG, run_version=1)
    b = build_seg(mask, paths, None, settings, ALG, run_version=1)
    c = build_seg(mask, paths, None, settings, ALG, run_version=2)
    d = build_seg(mask, paths, None, settings, algorithm_info("f" * 64), run_version=1)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.SOPInstanceUID != d.SOPInstanceUID
    assert c.SeriesNumber == a.SeriesNumber + 1


@pytest.mark.parametrize("side,code", [("left", "7771000"), ("bilateral", "51440002"), (None, None)])
def test_laterality_modifier(series, settings, side, code):
    paths, _ = series
    seg = build_seg(blob_mask((6, 32, 24)), paths, Findings(present=True, side=side), settings, ALG, 1)
    region = seg.SegmentSequence[0].AnatomicRegionSequence[0]
    if code is None:
        assert "AnatomicRegionModifierSequence" not in region
    else:
        assert region.AnatomicRegionModifierSequence[0].CodeValue == code


def test_model_folder_overrides_codes(series, settings):
    paths, _ = series
    codes = segment_codes_for(settings, {"segment_codes": {"anatomy": {"value": "12738006", "meaning": "Brain"},
                                                           "type": {"value": "4147007", "meaning": "Mass"}}})
    seg = build_seg(blob_mask((6, 32, 24)), paths, None, settings, ALG, 1, codes=codes)
    d = seg.SegmentSequence[0]
    assert d.AnatomicRegionSequence[0].CodeValue == "12738006"
    assert d.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    assert d.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    with pytest.raises(EncodeError):
        segment_codes_for(settings, {"segment_codes": {"anatomy": {"meaning": 5, "value": None}}})


def test_empty_result_policies(series, tmp_path):
    paths, _ = series
    empty = np.zeros((6, 32, 24), np.uint8)
    s_no = load_settings(None, storage={"root": str(tmp_path / "s")}, seg={"empty_result": "no_seg"})
    assert build_seg(empty, paths, None, s_no, ALG, 1) is None
    assert build_outputs(empty, paths, None, s_no, ALG, 1) == []
    s_empty = load_settings(None, storage={"root": str(tmp_path / "s")},
                            seg={"empty_result": "empty_segment", "structured_report": True})
    outs = build_outputs(empty, paths, None, s_empty, ALG, 1)
    assert len(outs) == 1  # no SR of an empty lesion
    seg = outs[0]
    assert int(seg.NumberOfFrames) >= 1
    assert not np.any(seg.pixel_array)
    validate_seg(seg, empty, load_sources(paths))
    assert_dciodvfy_clean(_save(seg, tmp_path, "empty"))


def test_fractional_seg(series, settings, tmp_path):
    paths, _ = series
    rng = np.random.default_rng(3)
    prob = (rng.random((6, 32, 24)) * blob_mask((6, 32, 24))).astype(np.float32)
    frac = build_fractional_seg(prob, paths, None, settings, ALG, 1)
    assert frac.SegmentationType == "FRACTIONAL" and frac.SegmentationFractionalType == "PROBABILITY"
    assert frac.SeriesNumber == settings.seg.series_number_base + 100 + 1
    validate_seg(frac, prob, load_sources(paths))
    with pytest.raises(EncodeError):
        validate_seg(frac, np.clip(prob + 0.05, 0, 1), load_sources(paths))
    assert_dciodvfy_clean(_save(frac, tmp_path, "frac"))
    with pytest.raises(EncodeError):
        build_fractional_seg(prob * 2, paths, None, settings, ALG, 1)


def test_all_outputs_pass_dciodvfy(series, tmp_path):
    paths, dss = series
    s = load_settings(None, storage={"root": str(tmp_path / "s")},
                      seg={"fractional": True, "structured_report": True, "overlay_series": True})
    mask = blob_mask((6, 32, 24))
    outs = build_outputs(mask, paths, Findings(present=True, side="left"), s, ALG, 3, prob=mask * 0.9)
    kinds = [str(o.SOPClassUID) for o in outs]
    assert kinds[:3] == [SegmentationStorage, SegmentationStorage, "1.2.840.10008.5.1.4.1.1.88.34"]
    overlays = outs[3:]
    assert len(overlays) == 6 and {str(o.SOPClassUID) for o in overlays} == {"1.2.840.10008.5.1.4.1.1.7"}
    assert len({o.SOPInstanceUID for o in outs}) == len(outs)
    for o in overlays:
        assert o.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in o.ImageComments
        assert "NOT FOR DIAGNOSIS" in o.SeriesDescription and o.PhotometricInterpretation == "RGB"
    # the overlay colours exactly the mask voxels' outline/tint: red channel differs where masked
    for i, o in enumerate(outs):
        warnings = assert_dciodvfy_clean(_save(o, tmp_path, f"out{i}"))
        assert all("Error" not in w for w in warnings)
    for z, o in enumerate(overlays):
        rgb = o.pixel_array.astype(int)
        inside = mask[z] > 0
        assert np.all(rgb[~inside][:, 0] == rgb[~inside][:, 1])  # grey outside the lesion
        if inside.any():
            assert np.all(rgb[inside][:, 0] != rgb[inside][:, 1]) or np.any(rgb[inside][:, 0] > rgb[inside][:, 1])
    sr = outs[2]
    numeric = {}

    def walk(seq):
        for item in seq:
            if item.get("ValueType") == "NUM":
                numeric[item.ConceptNameCodeSequence[0].CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    m = lesion_measurements(mask, load_sources(paths))
    assert numeric["118565006"] == pytest.approx(m.volume_mm3, abs=1e-3)
    assert numeric["81827009"] == pytest.approx(m.largest_diameter_mm, abs=1e-3)
    assert m.volume_mm3 == pytest.approx(mask.sum() * 0.9 * 0.8 * 3.0)
    assert sr.SeriesNumber == s.seg.series_number_base + 200 + 3
    # the SR references the SEG's segment 1
    text = str(sr)
    assert outs[0].SOPInstanceUID in text


def test_lesion_measurements(series):
    paths, _ = series
    mask = np.zeros((6, 32, 24), np.uint8)
    mask[2, 5, 4] = 1
    mask[4, 15, 10] = 1
    m = lesion_measurements(mask, load_sources(paths))
    # spacing (0.9 rows, 0.8 cols), slices 3 mm apart
    assert m.voxels == 2
    assert m.volume_mm3 == pytest.approx(2 * 0.9 * 0.8 * 3.0)
    assert m.largest_diameter_mm == pytest.approx(np.sqrt((2 * 3.0) ** 2 + (10 * 0.9) ** 2 + (6 * 0.8) ** 2))


def test_bad_inputs_raise(series, settings):
    paths, _ = series
    with pytest.raises(EncodeError, match="slices"):
        build_seg(np.ones((5, 32, 24), np.uint8), paths[:6], None, settings, ALG, 1)
    with pytest.raises(EncodeError, match="grid"):
        build_seg(np.ones((6, 30, 24), np.uint8), paths, None, settings, ALG, 1)
    with pytest.raises(EncodeError, match="binary"):
        build_seg(np.full((6, 32, 24), 2, np.uint8), paths, None, settings, ALG, 1)
    with pytest.raises(EncodeError, match="cannot read"):
        build_seg(np.ones((6, 32, 24), np.uint8), paths[:5] + [paths[0].parent / "missing.dcm"], None, settings, ALG, 1)


def test_validate_detects_tampering(series, settings):
    paths, _ = series
    mask = blob_mask((6, 32, 24))
    src = load_sources(paths)
    seg = build_seg(mask, paths, None, settings, ALG, 1)
    other = mask.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(EncodeError, match="voxels"):
        validate_seg(seg, other, src)
    moved = copy.deepcopy(seg)
    moved.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2] += 1.0
    with pytest.raises(EncodeError, match="position"):
        validate_seg(moved, mask, src)
    wrong_series = copy.deepcopy(seg)
    wrong_series.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(EncodeError, match="ReferencedSeriesSequence"):
        validate_seg(wrong_series, mask, src)
    spacing = copy.deepcopy(seg)
    spacing.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1.0, 1.0]
    with pytest.raises(EncodeError, match="PixelSpacing"):
        validate_seg(spacing, mask, src)
    # a mask in the wrong slice order (e.g. file order instead of Z order) is caught
    with pytest.raises(EncodeError):
        validate_seg(seg, mask[::-1].copy(), src)


def test_oblique_series(tmp_path, settings, mr_files):
    c, s = np.cos(0.3), np.sin(0.3)
    # rotated in-plane and tilted: row and column directions orthonormal, neither axis-aligned
    row = np.array([c, s, 0.0])
    col = np.array([-s * c, c * c, s])
    col /= np.linalg.norm(col)
    paths, _ = mr_files("obl", n_slices=6, geometry=Geometry(rows=32, columns=24, orientation=tuple(row) + tuple(col)))
    mask = blob_mask((6, 32, 24))
    seg = build_seg(mask, paths, None, settings, ALG, 1)
    validate_seg(seg, mask, load_sources(paths))
    assert_dciodvfy_clean(_save(seg, tmp_path, "obl"))


def test_multiframe_enhanced_source(tmp_path, settings, mr_files):
    """An Enhanced (multi-frame) source: frames reference (instance, frame number)."""
    import highdicom as hd

    _, dss = mr_files("sf", n_slices=5, geometry=GRID, instance_numbers="ascending")
    enh = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=dss, series_instance_uid=pydicom.uid.generate_uid(), series_number=7,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
    )
    p = tmp_path / "enh.dcm"
    enh.save_as(p, enforce_file_format=True)
    enh = pydicom.dcmread(p)
    # volume Z order: by position along the normal, found from the per-frame positions
    zs = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in enh.PerFrameFunctionalGroupsSequence]
    frame_numbers = [int(i) + 1 for i in np.argsort(zs)]
    mask = blob_mask((5, 32, 24))
    seg = build_seg(mask, [p] * 5, None, settings, ALG, 1, frame_numbers=frame_numbers)
    for pf in seg.PerFrameFunctionalGroupsSequence:
        ref = pf.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == enh.SOPInstanceUID and "ReferencedFrameNumber" in ref
    validate_seg(seg, mask, load_sources([p] * 5, frame_numbers))
    with pytest.raises(EncodeError):
        validate_seg(seg, mask[::-1].copy(), load_sources([p] * 5, frame_numbers))
    assert_dciodvfy_clean(_save(seg, tmp_path, "mf"))
    # the overlay series works from the multi-frame source's frames too
    from pgsam_node.encode import build_overlay

    overlay = build_overlay(mask, load_sources([p] * 5, frame_numbers, pixels=True), settings, ALG, 1)
    assert len(overlay) == 5
    assert overlay[0].Rows == 32 and overlay[0].SamplesPerPixel == 3
    assert_dciodvfy_clean(_save(overlay[0], tmp_path, "mf_overlay"))


def test_empty_result_policy_is_decided_in_one_place(settings):
    import numpy as np

    from pgsam_node.encode.common import sends_nothing

    empty, blob = np.zeros((2, 4, 4), np.uint8), np.ones((2, 4, 4), np.uint8)
    settings.seg.empty_result = "no_seg"
    assert sends_nothing(empty, settings.seg) and not sends_nothing(blob, settings.seg)
    settings.seg.empty_result = "empty_segment"
    assert not sends_nothing(empty, settings.seg)


def test_sources_without_type2_patient_and_study_attributes_still_give_valid_outputs(series, tmp_path):
    """A scanner or anonymiser that leaves out Type 2 attributes (birth date, sex, study ID, referring
    physician...): every output is still built, dciodvfy-clean, with those attributes present and empty."""
    from pgsam_node.encode.common import TYPE2_PATIENT_STUDY

    paths, dss = series
    bare = []
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName", "AccessionNumber"):
            if keyword in ds:
                delattr(ds, keyword)
        bare.append(_save(ds, tmp_path, f"bare{i}"))
    s = load_settings(None, storage={"root": str(tmp_path / "s")}, seg={"structured_report": True})
    mask = blob_mask((6, 32, 24))
    outs = build_outputs(mask, bare, Findings(present=True, side="left"), s, ALG, 1)
    assert len(outs) >= 2
    for i, o in enumerate(outs):
        for keyword in TYPE2_PATIENT_STUDY:
            assert keyword in o, f"{keyword} missing from output {i}"
        assert o.PatientBirthDate == "" and o.PatientID == dss[0].PatientID
        assert_dciodvfy_clean(_save(o, tmp_path, f"bare-out{i}"))
