"""Sequence classification: a vendor/protocol table, rule-file handling, and the real studies."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pgsam_node.assemble.classify import (
    HEADER_KEYWORDS,
    classification_headers,
    classify_series,
    default_rules_path,
    load_rules,
    parse_rules,
)
from pgsam_node.errors import ClassifyError

MR = "1.2.840.10008.5.1.4.1.1.4"
EMR = "1.2.840.10008.5.1.4.1.1.4.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
ORIG = ["ORIGINAL", "PRIMARY", "M", "ND"]


def h(desc="", proto=None, seq="", manu="SIEMENS", sop=MR, it=None, ss="SE", sv="SP", so=None, tr=None, te=None,
      ti=None, agent=None, **extra):
    d = {"SOPClassUID": sop, "Modality": "MR", "SeriesDescription": desc, "ProtocolName": proto if proto is not None else desc,
         "SequenceName": seq, "Manufacturer": manu, "ImageType": it or ORIG, "ScanningSequence": ss.split("\\") if ss else [],
         "SequenceVariant": sv.split("\\") if sv else [], "ScanOptions": so.split("\\") if so else []}
    for k, v in (("RepetitionTime", tr), ("EchoTime", te), ("InversionTime", ti), ("ContrastBolusAgent", agent)):
        if v is not None:
            d[k] = v
    d.update(extra)
    return {k: v for k, v in d.items() if v not in ("", [], None)}


# (id, headers, expected role) - realistic names as the consoles write them.
CASES = [
    # --- Siemens ---
    ("siemens_t1_se_tra", h("t1_se_tra", seq="*se2d1", tr=550, te=9.1), "T1"),
    ("siemens_t1_se_post_agent", h("t1_se_tra", seq="*se2d1", tr=550, te=9.1, agent="Gadovist"), "T1C"),
    ("siemens_t1_mprage_sag", h("t1_mprage_sag_p2_iso", seq="*tfl3d1_16ns", ss="GR\\IR", sv="SK\\SP\\MP", tr=2300, te=2.98, ti=900), "T1"),
    ("siemens_mprage_post_desc",
     h("t1_mprage_sag_p2_iso_POST", proto="t1_mprage_sag_p2_iso", seq="*tfl3d1_16ns", ss="GR\\IR", tr=2300, te=2.98, ti=900), "T1C"),
    ("siemens_vibe_fs_post", h("t1_vibe_fs_tra_+C", seq="*fl3d1", ss="GR", so="FS", tr=4.2, te=1.9), "T1C"),
    ("siemens_vibe_dixon_water", h("t1_vibe_dixon_tra_W", seq="*fl3d2", ss="GR", tr=6.7, te=2.4,
                                   it=["DERIVED", "PRIMARY", "DIXON", "WATER"]), "T1"),
    ("siemens_vibe_dixon_fat", h("t1_vibe_dixon_tra_F", seq="*fl3d2", ss="GR", tr=6.7, te=2.4,
                                 it=["DERIVED", "PRIMARY", "DIXON", "FAT"]), "OTHER"),
    ("siemens_t2_tse_tra", h("t2_tse_tra", seq="*tse2d1_15", sv="SK\\SP\\OSP", tr=5000, te=96), "T2"),
    ("siemens_t2_blade", h("t2_blade_tra_fs", seq="*tseR2d1_21", so="FS", tr=4000, te=102), "T2"),
    ("siemens_flair", h("t2_tirm_tra_dark-fluid", seq="*tir2d1_16", ss="SE\\IR", tr=9000, te=81, ti=2500), "OTHER"),
    ("siemens_stir", h("t2_tirm_cor", seq="*tir2d1_11", ss="SE\\IR", tr=4500, te=41, ti=220), "OTHER"),
    ("siemens_dwi", h("ep2d_diff_3scan_trace_p2", seq="*ep_b1000t", ss="EP", sv="SK\\SP", tr=6000, te=89,
                      it=["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]), "OTHER"),
    ("siemens_adc", h("ep2d_diff_3scan_trace_p2_ADC", seq="*ep_b0_1000", ss="EP", tr=6000, te=89,
                      it=["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"]), "OTHER"),
    ("siemens_localizer", h("localizer", seq="*fl2d1", ss="GR", tr=8.6, te=4.0, it=["ORIGINAL", "PRIMARY", "M", "NORM"]), "OTHER"),
    ("siemens_aahead_scout", h("AAHead_Scout_64ch-head-coil", seq="*fl3d1_ns", ss="GR", tr=3.2, te=1.4), "OTHER"),
    ("siemens_subtraction", h("t1_vibe_fs_tra_SUB", ss="GR", tr=4.2, te=1.9, it=["DERIVED", "PRIMARY", "SUBTRACTION"]), "OTHER"),
    ("siemens_mpr_reformat", h("t1_mprage_sag_p2_iso_MPR_Tra", seq="*tfl3d1_16ns", ss="GR\\IR", tr=2300, te=2.98, ti=900,
                               it=["DERIVED", "SECONDARY", "MPR", "NORM", "DIS2D"]), "OTHER"),
    ("siemens_swi", h("SWI_Images", seq="*swi3d1r", ss="GR", tr=27, te=20), "OTHER"),
    ("siemens_haste", h("haste_tra", seq="*h2d1_256", tr=1400, te=95), "T2"),
    # --- GE ---
    ("ge_ax_t1_se", h("AX T1 SE", manu="GE MEDICAL SYSTEMS", ss="SE", sv="NONE", tr=500, te=14), "T1"),
    ("ge_ax_t1_plus_c", h("AX T1 +C", manu="GE MEDICAL SYSTEMS", ss="SE", tr=500, te=14), "T1C"),
    ("ge_fspgr_bravo_post", h("Sag FSPGR BRAVO Post", proto="BRAIN +C", manu="GE MEDICAL SYSTEMS", seq="efgre3d", ss="GR", sv="SS\\SK",
                              tr=8.2, te=3.2, ti=450), "T1C"),
    ("ge_bravo_pre", h("Sag FSPGR BRAVO", manu="GE MEDICAL SYSTEMS", seq="efgre3d", ss="GR", sv="SS\\SK", tr=8.2, te=3.2, ti=450), "T1"),
    ("ge_t1_flair", h("AX T1 FLAIR", manu="GE MEDICAL SYSTEMS", ss="SE\\IR", tr=2200, te=24, ti=860), "T1"),
    ("ge_t1_flair_post", h("AX T1 FLAIR POST GAD", manu="GE MEDICAL SYSTEMS", ss="SE\\IR", tr=2200, te=24, ti=860), "T1C"),
    ("ge_t2_frfse", h("Ax T2 FRFSE", manu="GE MEDICAL SYSTEMS", ss="SE", sv="SK", tr=4500, te=102), "T2"),
    ("ge_propeller", h("AX PROPELLER", manu="GE MEDICAL SYSTEMS", ss="SE", tr=5200, te=110), "T2"),
    ("ge_t2_flair", h("Ax T2 FLAIR", manu="GE MEDICAL SYSTEMS", ss="SE\\IR", tr=9000, te=120, ti=2250), "OTHER"),
    ("ge_lava_c_plus", h("Ax LAVA C+", manu="GE MEDICAL SYSTEMS", seq="efgre3d", ss="GR", tr=4.0, te=1.8), "T1C"),
    ("ge_3plane_loc", h("3-Plane Loc", manu="GE MEDICAL SYSTEMS", ss="GR", tr=6, te=1.6, it=["ORIGINAL", "PRIMARY", "LOCALIZER"]), "OTHER"),
    ("ge_dwi", h("Ax DWI 1000b", manu="GE MEDICAL SYSTEMS", ss="EP", tr=6000, te=80), "OTHER"),
    ("ge_ssfse", h("Cor SSFSE", manu="GE MEDICAL SYSTEMS", ss="SE", tr=1200, te=85), "T2"),
    ("ge_fiesta", h("FIESTA-C", manu="GE MEDICAL SYSTEMS", ss="GR", tr=5, te=2.4), "OTHER"),
    ("ge_t2_star", h("Ax T2* GRE", manu="GE MEDICAL SYSTEMS", ss="GR", tr=650, te=20), "OTHER"),
    # --- Philips ---
    ("philips_t1w_tse", h("T1W_TSE", manu="Philips Medical Systems", seq="TSE", tr=600, te=10), "T1"),
    ("philips_t1w_tse_gd", h("T1W_TSE_GD", manu="Philips Medical Systems", seq="TSE", tr=600, te=10), "T1C"),
    ("philips_t2w_tse", h("T2W_TSE", manu="Philips Medical Systems", seq="TSE", tr=3000, te=80), "T2"),
    ("philips_thrive_post", h("THRIVE_POST", manu="Philips Medical Systems", ss="GR", tr=4.4, te=2.1), "T1C"),
    ("philips_mdixon_w_ce", h("T1 mDIXON W CE", manu="Philips Medical Systems", ss="GR", tr=5.9, te=1.8,
                              it=["ORIGINAL", "PRIMARY", "W", "DIXON", "W"]), "T1C"),
    ("philips_survey", h("Survey", manu="Philips Medical Systems", ss="GR", tr=11, te=4.6), "OTHER"),
    ("philips_sense_ref", h("SENSE-Ref", proto="SenseRefScan", manu="Philips Medical Systems", ss="GR", tr=4, te=0.8), "OTHER"),
    ("philips_t2w_multivane", h("T2W_MultiVane", manu="Philips Medical Systems", tr=3500, te=100), "T2"),
    ("philips_stir", h("STIR_cor", manu="Philips Medical Systems", ss="SE\\IR", tr=3800, te=60, ti=180), "OTHER"),
    ("philips_dwi_bvalue", h("DWI_SSh", manu="Philips Medical Systems", ss="SE", tr=3000, te=70, DiffusionBValue=800.0), "OTHER"),
    ("philips_t1_tfe_3d", h("3D T1 TFE", manu="Philips Medical Systems", ss="GR", tr=8.1, te=3.7), "T1"),
    ("philips_sense_prefix_t2", h("sT2W_TSE", manu="Philips Medical Systems", seq="TSE", ss="SE"), "T2"),
    ("philips_sense_prefix_t1_gd", h("sT1W_3D_TFE_Gd", manu="Philips Medical Systems", ss="GR"), "T1C"),
    # --- Canon / Toshiba ---
    ("canon_t1wi_se", h("T1WI SE AX", manu="TOSHIBA", ss="SE", tr=480, te=10), "T1"),
    ("canon_t2wi_fse", h("T2WI FSE AX", manu="TOSHIBA", ss="SE", tr=4200, te=96), "T2"),
    ("canon_3d_mprage_ce", h("3D MPRAGE CE", manu="CANON_MEC", ss="GR\\IR", tr=2000, te=3, ti=900), "T1C"),
    ("canon_fase", h("FASE cor", manu="TOSHIBA", ss="SE", tr=2400, te=80), "T2"),
    ("canon_japanese_contrast", h("T1WI 造影 AX", manu="CANON_MEC", ss="SE", tr=500, te=10), "T1C"),
    # --- Hitachi ---
    ("hitachi_t1w_se", h("T1W_SE", manu="Hitachi Medical Corporation", ss="SE", tr=450, te=12), "T1"),
    ("hitachi_t2w_fse", h("T2W_FSE", manu="Hitachi Medical Corporation", ss="SE", tr=4000, te=100), "T2"),
    ("hitachi_tigre_gd", h("3D TIGRE +Gd", manu="Hitachi Medical Corporation", ss="GR", tr=9, te=3.5), "T1C"),
    ("hitachi_flair", h("FLAIR AX", manu="Hitachi Medical Corporation", ss="SE\\IR", tr=10000, te=100, ti=2400), "OTHER"),
    # --- other wording / evidence only in headers ---
    ("german_km", h("t1_tse_tra_KM", tr=600, te=11), "T1C"),
    ("german_nativ_with_agent", h("t1_tse_tra_nativ", tr=600, te=11, agent="Dotarem"), "T1"),
    ("physics_only_t1", h("AX SE", ss="SE", tr=520, te=12), "T1"),
    ("physics_only_t2", h("AX TSE", ss="SE", tr=4500, te=100), "T2"),
    ("physics_only_t1_with_agent_route", h("AX SE", ss="SE", tr=520, te=12, ContrastBolusRoute="IV"), "T1C"),
    ("proton_density", h("pd_tse_fs_cor", ss="SE", so="FS", tr=3000, te=30), "OTHER"),
    ("t1_fs_c_plus", h("T1 FS C+", ss="SE", so="FS", tr=600, te=10), "T1C"),
    ("trailing_plus", h("B T1 AXIAL SE +", ss="SE", tr=600, te=9), "T1C"),
    ("posterior_is_not_post", h("T1 posterior fossa", ss="SE", tr=600, te=9), "T1"),
    ("postop_is_not_post", h("T1 postop axial", ss="SE", tr=600, te=9), "T1"),
    ("agent_none_value", h("t1_se_tra", tr=550, te=9, agent="NONE"), "T1"),
    ("enhanced_mr_sop", h("t2_space_sag", sop=EMR, seq="*spc3d1", tr=3200, te=409), "T2"),
    ("unknown_weighting", h("AX 3D", ss="GR", tr=300, te=12), "OTHER"),
    # Research and challenge naming: BraTS t1c / t1ce, "T1C" as a series name; the C is contrast.
    ("research_t1c", h("T1C", manu="", tr=550, te=10), "T1C"),
    ("research_t1c_lower_plane", h("t1c_ax", manu="", tr=550, te=10), "T1C"),
    ("research_t1_dash_c", h("T1-C", manu="", tr=550, te=10), "T1C"),
    ("brats_t1ce", h("t1ce", manu="", tr=550, te=10), "T1C"),
    ("t1_coronal_is_not_t1c", h("T1 COR", ss="SE", tr=550, te=10), "T1"),
    ("t1c_pre_is_pre", h("T1C pre", ss="SE", tr=550, te=10), "T1"),
    # --- never sequences ---
    ("secondary_capture_modality_mr", h("Mask_Tumor", proto="B T1 AXIAL SE +", sop=SC, it=["DERIVED", "SECONDARY", "OTHER"]), "OTHER"),
    ("seg_object", h("Tumour segmentation", proto="", sop=SEG, ss=""), "OTHER"),
    ("structured_report", h("T1 volumetry", sop=SR, ss=""), "OTHER"),
    ("derived_secondary_t1", h("T1 post MIP", ss="GR", tr=4, te=1.8, it=["DERIVED", "SECONDARY", "MIP"]), "OTHER"),
    ("perfusion_dsc", h("ep2d_perf", ss="EP", tr=1500, te=30), "OTHER"),
    # Brain-Tumor-Progression style maps written with the post-contrast T1's own headers (SE, ORIGINAL,
    # contrast agent): by name they are maps, not a second T1C competing with T1post.
    ("standardised_rcbv_t1_headers", h("sRCBV", ss="SE", tr=600, te=8.9, agent="10cc Multihance"), "OTHER"),
    ("normalised_rcbv_t1_headers", h("nRCBV", ss="SE", tr=600, te=8.9, agent="10cc Multihance"), "OTHER"),
    ("delta_t1_map", h("dT1", ss="SE", tr=600, te=8.9, agent="10cc Multihance"), "OTHER"),
    ("delta_t1_spelled", h("delta T1 map", ss="SE", tr=600, te=8.9), "OTHER"),
    ("tof_mra", h("tof_3d_multi-slab", ss="GR", tr=22, te=3.6), "OTHER"),
    # --- exam-level text (GE writes the exam protocol into ProtocolName of every series;
    #     StudyDescription always names the exam): it must not override series-level evidence ---
    ("ge_rcbv_exam_t1", h("AX T1 SE", proto="Brain - RCBV", manu="GE MEDICAL SYSTEMS", ss="SE", tr=500, te=14), "T1"),
    ("ge_rcbv_exam_t2", h("Ax T2 FSE", proto="Brain - RCBV", manu="GE MEDICAL SYSTEMS", ss="SE", tr=4000, te=102), "T2"),
    ("ge_rcbv_exam_post", h("AX T1 POST", proto="Brain - RCBV", manu="GE MEDICAL SYSTEMS", ss="SE", tr=500, te=14,
                            agent="MAGNEVIST"), "T1C"),
    ("ge_rcbv_exam_map", h("rCBV", proto="Brain - RCBV", manu="GE MEDICAL SYSTEMS", ss="EP",
                           it=["DERIVED", "SECONDARY", "RCBV"]), "OTHER"),
    ("ge_exam_plus_c_pre_t1", h("Sag T1 FLAIR", proto="BRAIN +C", manu="GE MEDICAL SYSTEMS", ss="SE\\IR", tr=2200,
                                te=24, ti=860), "T1"),
    ("ge_healthcare_exam_dwi_protocol", h("Ax T2 PROPELLER", proto="ROUTINE BRAIN DWI", manu="GE HEALTHCARE", ss="SE",
                                          tr=5000, te=100), "T2"),
    ("ge_perfusion_exam_bravo", h("Ax BRAVO", proto="Brain Perfusion DSC", manu="GE MEDICAL SYSTEMS", seq="efgre3d",
                                  ss="GR", tr=8.2, te=3.2, ti=450), "T1"),
    ("ge_exam_t2_in_protocol_post", h("Ax T1 3D +C", proto="Brain T2 FLAIR Routine", manu="GE MEDICAL SYSTEMS",
                                      ss="GR", tr=8, te=3), "T1C"),
    ("study_description_contrast_pre", h("T1W_TSE", manu="Philips Medical Systems", seq="TSE", tr=600, te=10,
                                         StudyDescription="MRI BRAIN WITH CONTRAST"), "T1"),
    ("study_description_perfusion_t2", h("t2_tse_tra", seq="*tse2d1_15", tr=5000, te=96,
                                         StudyDescription="Brain - Perfusion DSC"), "T2"),
    ("canon_study_desc_mra", h("T1WI SE AX", manu="CANON_MEC", ss="SE", tr=480, te=10,
                               StudyDescription="HEAD MRA + BRAIN"), "T1"),
    # --- calibration and maps are never structural sequences ---
    ("siemens_tfl_calibration_64", h("tfl_2D_36slc_res64_iPAT", seq="*tfl2d1", ss="GR", sv="SP", tr=3.9, te=1.9,
                                     Rows=64, Columns=64), "OTHER"),
    ("siemens_calibration_by_matrix", h("t1_fl2d_tra", seq="*fl2d1", ss="GR", tr=9, te=2, Rows=64, Columns=64), "OTHER"),
    ("siemens_b1map", h("tfl_b1map", seq="*tfl2d1_B1", ss="GR", tr=5000, te=2, Rows=64, Columns=64), "OTHER"),
    ("philips_b1_dream", h("B1 DREAM", manu="Philips Medical Systems", ss="GR", tr=3.8, te=1.9), "OTHER"),
    ("siemens_t1map_vfa", h("t1_vibe_vfa_T1map", seq="*fl3d1", ss="GR", tr=5, te=1.5,
                            it=["DERIVED", "PRIMARY", "T1 MAP"]), "OTHER"),
    ("siemens_prostate_t1_full_matrix", h("t1_tse_tra", seq="*tse2d1_3", tr=650, te=12, Rows=320, Columns=320), "T1"),
]


@pytest.mark.parametrize("case_id,headers,expected", CASES, ids=[c[0] for c in CASES])
def test_classification_table(case_id, headers, expected):
    role, reason = classify_series(headers)
    assert role == expected, f"{case_id}: got {role} ({reason})"
    assert reason.startswith(f"{role}: ") and ("rule " in reason or "no rule" in reason)


def test_exam_protocol_shared_across_series_is_exam_level():
    """Siemens-style headers (no manufacturer rule): a ProtocolName shared by different series names the exam."""
    from pgsam_node.assemble.classify import shared_exam_values

    study = [
        h("t1_se_tra", proto="Brain - RCBV", seq="*se2d1", tr=550, te=9.1),
        h("t2_tse_tra", proto="Brain - RCBV", seq="*tse2d1_15", tr=5000, te=96),
        h("t1_se_tra_post", proto="Brain - RCBV", seq="*se2d1", tr=550, te=9.1, agent="Gadovist"),
        h("ep2d_perf", proto="Brain - RCBV", ss="EP", tr=1500, te=30),
    ]
    shared = shared_exam_values(study)
    assert shared["ProtocolName"] == {"brain - rcbv"}
    roles = [classify_series(x, shared=shared) for x in study]
    assert [r for r, _ in roles] == ["T1", "T2", "T1C", "OTHER"]
    # the weaker rule and why it lost are recorded
    assert "rule derived_map matched only exam-level text" in roles[0][1] and "ProtocolName" in roles[0][1]
    # judged alone (no study), a Siemens protocol name still counts as series-level
    assert classify_series(study[0])[0] == "OTHER"


def test_same_protocol_same_description_stays_series_level():
    from pgsam_node.assemble.classify import shared_exam_values

    study = [h("t2_tse_tra", seq="*tse2d1_15", tr=5000, te=96), h("t2_tse_tra", seq="*tse2d1_15", tr=5000, te=96)]
    assert shared_exam_values(study)["ProtocolName"] == set()


def test_table_is_broad():
    vendors = {c[1].get("Manufacturer") for c in CASES}
    assert len(CASES) >= 30
    assert {"SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems", "TOSHIBA", "Hitachi Medical Corporation"} <= vendors
    assert {c[2] for c in CASES} == {"T1", "T2", "T1C", "OTHER"}


def test_reason_names_rule_and_evidence():
    role, reason = classify_series(h("t1_se_tra", tr=550, te=9.1, agent="Gadovist"))
    assert role == "T1C"
    assert "rule t1_name" in reason and "ContrastBolusAgent" in reason
    role, reason = classify_series(h("Mask_Tumor", sop=SC))
    assert role == "OTHER" and "Secondary Capture" in reason


def test_default_rules_file_is_packaged_and_same_as_config():
    p = default_rules_path()
    assert p.is_file()
    cfg = Path(__file__).resolve().parents[2] / "config" / "sequences.yaml"
    assert cfg.read_text(encoding="utf-8") == p.read_text(encoding="utf-8")


def test_custom_rules_file(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - id: everything_t2\n    role: T2\n    reason: site rule\n    when: {names: ['.']}\n")
    rules = load_rules(f)
    assert classify_series(h("anything"), rules) == ("T2", "T2: rule everything_t2 (site rule: 'a' in SeriesDescription)")


@pytest.mark.parametrize("bad,msg", [
    ({"rules": [{"id": "x", "role": "T3", "when": {"names": ["a"]}}]}, "role must be"),
    ({"rules": [{"id": "x", "role": "T1", "when": {"nmes": ["a"]}}]}, "unknown condition 'nmes'"),
    ({"rules": [{"id": "x", "role": "T1", "when": {"names": ["("]}}]}, "invalid regular expression"),
    ({"rules": [{"id": "x", "role": "T1", "when": {"range": {"EchoTime": [1]}}}]}, "[min, max]"),
    ({"nope": 1}, "'rules' list"),
])
def test_invalid_rules_are_refused(bad, msg):
    with pytest.raises(ClassifyError, match=msg.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_rules(bad, "test.yaml")


def test_enhanced_mr_functional_groups_are_lifted():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = EMR
    ds.SeriesDescription = "ax 3d"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.EchoPulseSequence = "SPIN"
    timing, echo, fg = Dataset(), Dataset(), Dataset()
    timing.RepetitionTime = 600
    echo.EffectiveEchoTime = 12
    fg.MRTimingAndRelatedParametersSequence = [timing]
    fg.MREchoSequence = [echo]
    ds.SharedFunctionalGroupsSequence = [fg]
    headers = classification_headers(ds)
    assert headers["RepetitionTime"] == 600 and headers["EchoTime"] == 12 and headers["ScanningSequence"] == ["SE"]
    assert classify_series(headers)[0] == "T1"


EXPECTED_REAL = {"T1prereg": "T1", "T1post": "T1C", "T2reg": "T2", "MaskTumor": "OTHER"}


def test_real_studies(shared_data):
    studies = sorted(p for p in shared_data.iterdir() if p.is_dir())
    assert studies
    for study in studies:
        for folder, expected in EXPECTED_REAL.items():
            files = sorted((study / folder).iterdir())
            ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
            role, reason = classify_series(classification_headers(ds))
            assert role == expected, f"{study.name}/{folder}: {role} ({reason})"
            if folder == "MaskTumor":
                assert "Secondary Capture" in reason
