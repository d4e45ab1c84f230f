"""parse_report on realistic English and Chinese report text.

Each case gives only the fields it is about; every given field is asserted. The sentences are
written the way radiologists write them (findings + impression, abbreviations, full-width
punctuation, several dimensions, both glands named with one normal, "no recurrence").
"""

from __future__ import annotations

import pytest

from pgsam_node.findings import DIAGNOSES, FINDINGS_DIM, Findings, findings_vector
from pgsam_node.reports.parse import parse_report, report_hash

CASES: list[tuple[str, str, dict]] = [
    # ---------------------------------------------------------------- English, parotid
    (
        "en_pa_classic",
        "A well-defined, lobulated mass measuring 2.3 x 1.8 cm is seen in the superficial lobe of the left "
        "parotid gland. It is T1 hypointense and T2 hyperintense with homogeneous enhancement. The right "
        "parotid gland is unremarkable.\nIMPRESSION: Left parotid mass, likely pleomorphic adenoma.",
        dict(present=True, side="left", gland="parotid", lobe="superficial", size_mm=23.0, dimensions_mm=[23.0, 18.0],
             count=1, margins="well_defined", signal={"T1": "hypo", "T2": "hyper", "enhancement": "homogeneous"},
             diagnosis="pleomorphic_adenoma", hedged=True, negated_sides=["right"], language="en"),
    ),
    (
        "en_no_lesion_right",
        "No lesion in the right parotid.",
        dict(present=False, side=None, gland="parotid", negated_sides=["right"], diagnosis=None, size_mm=None),
    ),
    (
        "en_warthin_bilateral",
        "Bilateral parotid masses, the larger on the left measuring 32 mm, consistent with Warthin tumours.",
        dict(present=True, side="bilateral", gland="parotid", size_mm=32.0, count=2, diagnosis="warthin_tumour",
             hedged=False, negated_sides=[]),
    ),
    (
        "en_no_recurrence",
        "Status post left parotidectomy for mucoepidermoid carcinoma. No evidence of local recurrence.",
        dict(present=False, side=None, diagnosis=None, size_mm=None, hedged=False),
    ),
    (
        "en_deep_lobe_mm",
        "There is a 23 mm ill-defined lesion in the deep lobe of the right parotid gland extending into the "
        "parapharyngeal space. Heterogeneous enhancement after gadolinium. Suspicious for malignancy; "
        "adenoid cystic carcinoma cannot be excluded.",
        dict(present=True, side="right", lobe="deep", size_mm=23.0, margins="ill_defined",
             signal={"enhancement": "heterogeneous"}, diagnosis="adenoid_cystic_carcinoma", hedged=True),
    ),
    (
        "en_three_dims",
        "Right parotid: a solitary, sharply circumscribed nodule measuring 2.1 x 1.7 x 1.4 cm in the superficial "
        "lobe, markedly T2 hyperintense. Findings are consistent with pleomorphic adenoma.",
        dict(present=True, side="right", lobe="superficial", size_mm=21.0, dimensions_mm=[21.0, 17.0, 14.0], count=1,
             margins="well_defined", signal={"T2": "hyper"}, diagnosis="pleomorphic_adenoma", hedged=False),
    ),
    (
        "en_cm_by_cm",
        "In the left parotid gland, there is a mass measuring 3.4 cm by 2.6 cm, which is hypointense on T1 and "
        "intermediate on T2.",
        dict(present=True, side="left", size_mm=34.0, dimensions_mm=[34.0, 26.0], signal={"T1": "hypo", "T2": "iso"}),
    ),
    (
        "en_left_normal_right_lesion",
        "The left parotid gland is unremarkable. In the right parotid tail there is an 18 mm well-defined cystic "
        "and solid lesion. Impression: Right parotid tail lesion, probably Warthin tumour.",
        dict(present=True, side="right", size_mm=18.0, margins="well_defined", diagnosis="warthin_tumour", hedged=True,
             negated_sides=["left"]),
    ),
    (
        "en_both_glands_submandibular",
        "Both parotid glands are normal. A 15 mm enhancing nodule in the left submandibular gland. "
        "Impression: left submandibular gland nodule, differential includes pleomorphic adenoma.",
        dict(present=True, side="left", gland="submandibular", size_mm=15.0, diagnosis="pleomorphic_adenoma", hedged=True,
             negated_sides=["right"]),
    ),
    (
        "en_normal_study",
        "Both parotid and submandibular glands are normal in size and signal. No focal mass. "
        "No cervical lymphadenopathy.\nImpression: Normal MRI of the salivary glands.",
        dict(present=False, side=None, diagnosis=None, count=None, negated_sides=["left", "right"]),
    ),
    (
        "en_multiple_warthin",
        "Multiple bilateral parotid lesions, the largest in the left parotid tail measuring 2.8 x 2.0 cm. "
        "Several smaller lesions on the right up to 9 mm. Appearance favours Warthin tumours.",
        dict(present=True, side="bilateral", size_mm=28.0, dimensions_mm=[28.0, 20.0], count=2,
             diagnosis="warthin_tumour", hedged=True),
    ),
    (
        "en_two_lesions",
        "Two lesions are present in the right parotid gland, measuring 12 mm and 8 mm.",
        dict(present=True, side="right", count=2, size_mm=12.0),
    ),
    (
        "en_mec_definite",
        "Right parotid mass, 4.1 cm, with infiltrative margins and invasion of the masseter muscle. "
        "Biopsy-proven mucoepidermoid carcinoma.",
        dict(present=True, side="right", size_mm=41.0, margins="ill_defined", diagnosis="mucoepidermoid_carcinoma",
             hedged=False),
    ),
    (
        "en_lymphoma",
        "Diffuse enlargement of the left parotid gland with multiple T2 hypointense intraparotid nodules "
        "showing homogeneous enhancement. Impression: suspicious for lymphoma.",
        dict(present=True, side="left", count=2, diagnosis="lymphoma", hedged=True,
             signal={"T2": "hypo", "enhancement": "homogeneous"}),
    ),
    (
        "en_adenolymphoma_not_lymphoma",
        "Left parotid lower pole lesion 2.2 cm. Conclusion: adenolymphoma.",
        dict(present=True, side="left", diagnosis="warthin_tumour", size_mm=22.0, hedged=False),
    ),
    (
        "en_metastasis",
        "Enhancing 1.6 cm nodule in the right parotid gland in this patient with known cutaneous melanoma, "
        "concerning for intraparotid metastasis.",
        dict(present=True, side="right", size_mm=16.0, diagnosis="metastasis", hedged=True),
    ),
    (
        "en_basal_cell",
        "Well-circumscribed 14 x 11 mm nodule, left parotid superficial lobe, avidly and homogeneously "
        "enhancing. Impression: basal cell adenoma versus pleomorphic adenoma.",
        dict(present=True, side="left", lobe="superficial", size_mm=14.0, dimensions_mm=[14.0, 11.0],
             margins="well_defined", diagnosis="basal_cell_adenoma", signal={"enhancement": "homogeneous"}),
    ),
    (
        "en_acinic",
        "Right parotid gland: a 2.5 cm heterogeneous mass with ill-defined margins. Impression: acinic cell "
        "carcinoma is a consideration.",
        dict(present=True, side="right", size_mm=25.0, margins="ill_defined", diagnosis="acinic_cell_carcinoma"),
    ),
    (
        "en_warthin_less_likely",
        "Left parotid mass measuring 27 mm. Impression: pleomorphic adenoma; Warthin tumour less likely.",
        dict(present=True, side="left", diagnosis="pleomorphic_adenoma", size_mm=27.0),
    ),
    (
        "en_rather_than",
        "Impression: right parotid lesion most in keeping with Warthin tumour rather than pleomorphic adenoma.",
        dict(present=True, side="right", diagnosis="warthin_tumour"),
    ),
    (
        "en_no_deep_extension",
        "A 19 mm T2-hyperintense mass in the superficial lobe of the left parotid; it does not extend into the "
        "deep lobe.",
        dict(present=True, side="left", lobe="superficial", size_mm=19.0, signal={"T2": "hyper"}),
    ),
    (
        "en_mass_effect_brain_context",
        "No parotid lesion is identified on either side.",
        dict(present=False, side=None, diagnosis=None),
    ),
    (
        "en_rt_abbrev",
        "Rt parotid superficial lobe nodule, 11mm, T1 low, T2 high signal, rim enhancement.",
        dict(present=True, side="right", lobe="superficial", size_mm=11.0, signal={"T1": "hypo", "T2": "hyper", "enhancement": "rim"}),
    ),
    (
        "en_not_seen",
        "A discrete mass is not seen in the left parotid gland. The right parotid gland contains a 9 mm "
        "well-defined nodule, likely an intraparotid lymph node.",
        dict(present=True, side="right", negated_sides=["left"], margins="well_defined"),
    ),
    (
        "en_recurrence_present",
        "History of right parotidectomy for pleomorphic adenoma. Now multiple T2 hyperintense nodules in the "
        "surgical bed, the largest 12 mm, consistent with recurrent pleomorphic adenoma.",
        dict(present=True, side="right", count=2, size_mm=12.0, diagnosis="pleomorphic_adenoma", hedged=False,
             signal={"T2": "hyper"}),
    ),
    (
        "en_no_enhancement_cyst",
        "Simple cyst in the left parotid gland, 1.2 cm, T2 bright, with no enhancement.",
        dict(present=True, side="left", size_mm=12.0, signal={"T2": "hyper", "enhancement": "none"}),
    ),
    (
        "en_slice_thickness_ignored",
        "Technique: axial T1 and T2, 3 mm slice thickness. Findings: 2.6 cm mass, right parotid.",
        dict(present=True, side="right", size_mm=26.0, dimensions_mm=[26.0]),
    ),
    (
        "en_lymph_node_size_ignored",
        "Left parotid mass of 3.0 x 2.2 cm. A 12 mm level II lymph node on the left.",
        dict(present=True, side="left", size_mm=30.0, dimensions_mm=[30.0, 22.0]),
    ),
    (
        "en_hedged_possible",
        "Possible small lesion in the deep lobe of the left parotid; may represent a prominent vessel.",
        dict(present=True, side="left", lobe="deep", hedged=True),
    ),
    (
        "en_unremarkable_only",
        "The parotid glands are unremarkable.",
        dict(present=False, side=None, gland="parotid", diagnosis=None),
    ),
    (
        "en_uppercase",
        "LEFT PAROTID: 2.0 CM WELL-DEFINED MASS. IMPRESSION: PLEOMORPHIC ADENOMA.",
        dict(present=True, side="left", size_mm=20.0, margins="well_defined", diagnosis="pleomorphic_adenoma", hedged=False),
    ),
    (
        "en_mixed_tumour",
        "Benign mixed tumour of the right parotid, 2.9 cm.",
        dict(present=True, side="right", diagnosis="pleomorphic_adenoma", size_mm=29.0),
    ),
    (
        "en_carcinoma_ex_pa",
        "Rapidly enlarging left parotid mass (4.5 cm), irregular margins; carcinoma ex pleomorphic adenoma suspected.",
        dict(present=True, side="left", size_mm=45.0, margins="ill_defined", diagnosis="other", hedged=True),
    ),
    # ---------------------------------------------------------------- English, brain
    (
        "en_gbm",
        "There is a heterogeneously enhancing mass in the right frontal lobe measuring 4.2 x 3.8 x 3.5 cm with "
        "central necrosis and surrounding vasogenic oedema. Impression: findings most consistent with glioblastoma.",
        dict(present=True, side="right", gland="brain", size_mm=42.0, dimensions_mm=[42.0, 38.0, 35.0],
             diagnosis="glioma", signal={"enhancement": "heterogeneous"}),
    ),
    (
        "en_low_grade_glioma",
        "Non-enhancing T2/FLAIR hyperintense lesion in the left temporal lobe, 3 cm, without restricted diffusion. "
        "Impression: likely low-grade glioma.",
        dict(present=True, side="left", gland="brain", size_mm=30.0, diagnosis="glioma", hedged=True,
             signal={"T2": "hyper", "enhancement": "none"}),
    ),
    (
        "en_brain_mets",
        "Multiple ring-enhancing lesions in both cerebral hemispheres, the largest 18 mm in the left parietal "
        "lobe. Impression: cerebral metastases.",
        dict(present=True, side="bilateral", gland="brain", count=2, size_mm=18.0, diagnosis="metastasis",
             signal={"enhancement": "rim"}, hedged=False),
    ),
    (
        "en_brain_no_recurrence",
        "Post-operative changes in the right temporal lobe. No new enhancing lesion to suggest recurrence.",
        dict(present=False, gland="brain", diagnosis=None),
    ),
    (
        "en_gbm_abbrev",
        "Large rim-enhancing mass crossing the corpus callosum, 5.1 cm. Favour GBM over lymphoma.",
        dict(present=True, gland="brain", size_mm=51.0, diagnosis="glioma", hedged=True, signal={"enhancement": "rim"}),
    ),
    (
        "en_brain_region_without_lobe",
        "Right temporal ring-enhancing lesion measuring 3 cm with mass effect.",
        dict(present=True, side="right", gland="brain", size_mm=30.0),
    ),
    (
        "en_brain_occipital_mass",
        "Left occipital enhancing mass 2.1 cm, metastasis.",
        dict(present=True, side="left", gland="brain", size_mm=21.0, diagnosis="metastasis"),
    ),
    (
        "en_brain_resection_cavity",
        "Recurrent tumor at the left resection cavity margin, nodular enhancement 1.5 cm.",
        dict(present=True, side="left", gland="brain", size_mm=15.0),
    ),
    (
        "en_brain_compound_region",
        "Infiltrative T2 hyperintense mass in the right frontoparietal white matter, 4 cm, with vasogenic oedema.",
        dict(present=True, side="right", gland="brain", size_mm=40.0),
    ),
    (
        "en_parotid_with_neck_words",
        "Right parotid mass, 2 cm, abutting the superficial temporal artery. Occipital nodes are not enlarged. "
        "No frontal sinus disease.",
        dict(present=True, side="right", gland="parotid", size_mm=20.0),
    ),
    # ---------------------------------------------------------------- Chinese, parotid
    (
        "zh_pa_classic",
        "左侧腮腺浅叶见一类圆形结节，大小约2.3cm×1.8cm，边界清楚，T1WI呈低信号，T2WI呈高信号，增强扫描呈明显不均匀强化。"
        "右侧腮腺未见异常。诊断意见：左侧腮腺浅叶占位，考虑多形性腺瘤。",
        dict(present=True, side="left", gland="parotid", lobe="superficial", size_mm=23.0, dimensions_mm=[23.0, 18.0],
             count=1, margins="well_defined", signal={"T1": "hypo", "T2": "hyper", "enhancement": "heterogeneous"},
             diagnosis="pleomorphic_adenoma", hedged=True, negated_sides=["right"], language="zh"),
    ),
    (
        "zh_all_normal",
        "双侧腮腺未见异常。",
        dict(present=False, side=None, gland="parotid", negated_sides=["left", "right"], language="zh"),
    ),
    (
        "zh_mec_long_t1_t2",
        "右侧腮腺深叶见一肿块，呈长T1长T2信号，大小约23×18mm，边界不清，考虑恶性，黏液表皮样癌可能。",
        dict(present=True, side="right", lobe="deep", size_mm=23.0, dimensions_mm=[23.0, 18.0], margins="ill_defined",
             signal={"T1": "hypo", "T2": "hyper"}, diagnosis="mucoepidermoid_carcinoma", hedged=True),
    ),
    (
        "zh_fullwidth",
        "右侧腮腺浅叶见结节影，大小约２．１×１．６ｃｍ，边界清晰；Ｔ１ＷＩ呈等信号，Ｔ２ＷＩ呈稍高信号。印象：右侧腮腺良性肿瘤，沃辛瘤可能。",
        dict(present=True, side="right", lobe="superficial", size_mm=21.0, dimensions_mm=[21.0, 16.0],
             margins="well_defined", signal={"T1": "iso", "T2": "hyper"}, diagnosis="warthin_tumour", hedged=True),
    ),
    (
        "zh_no_mass",
        "左侧腮腺术后改变，术区未见明确肿块及异常强化灶。",
        dict(present=False, side=None, diagnosis=None),
    ),
    (
        "zh_adenolymphoma",
        "左侧腮腺下极见一结节，约2.5厘米，边界清，增强后轻度强化。结论：左侧腮腺腺淋巴瘤。",
        dict(present=True, side="left", size_mm=25.0, margins="well_defined", diagnosis="warthin_tumour", hedged=False),
    ),
    (
        "zh_mm_unit",
        "右侧颌下腺内见一结节，大小约15毫米，边界尚清，T2WI呈高信号。考虑多形性腺瘤。",
        dict(present=True, side="right", gland="submandibular", size_mm=15.0, diagnosis="pleomorphic_adenoma",
             hedged=True, signal={"T2": "hyper"}),
    ),
    (
        "zh_star_separator",
        "左腮腺深叶见团块影，大小约3.2*2.4cm，边界模糊，增强扫描呈环形强化。倾向恶性肿瘤。",
        dict(present=True, side="left", lobe="deep", size_mm=32.0, dimensions_mm=[32.0, 24.0], margins="ill_defined",
             signal={"enhancement": "rim"}, hedged=True),
    ),
    (
        "zh_multiple_bilateral",
        "双侧腮腺多发结节，较大者位于右侧，约2.0cm×1.5cm，边界清楚。诊断：双侧腮腺多发占位，考虑沃辛瘤。",
        dict(present=True, side="bilateral", count=2, size_mm=20.0, dimensions_mm=[20.0, 15.0], margins="well_defined",
             diagnosis="warthin_tumour", hedged=True),
    ),
    (
        "zh_other_side_normal_first",
        "右侧腮腺形态、大小正常，信号均匀，未见明显异常信号。左侧腮腺浅叶见一枚结节，大小约12mm×10mm，边界清。",
        dict(present=True, side="left", lobe="superficial", size_mm=12.0, dimensions_mm=[12.0, 10.0], count=1,
             margins="well_defined", negated_sides=["right"]),
    ),
    (
        "zh_basal_cell",
        "右侧腮腺浅叶见一类圆形结节，直径约1.3厘米，边界清楚，增强扫描呈均匀强化。意见：右侧腮腺基底细胞腺瘤可能性大。",
        dict(present=True, side="right", lobe="superficial", size_mm=13.0, margins="well_defined",
             signal={"enhancement": "homogeneous"}, diagnosis="basal_cell_adenoma"),
    ),
    (
        "zh_acc",
        "左侧腮腺深叶见不规则肿块，约4.0×3.1×2.8cm，边界不清，沿神经浸润。考虑腺样囊性癌。",
        dict(present=True, side="left", lobe="deep", size_mm=40.0, dimensions_mm=[40.0, 31.0, 28.0],
             margins="ill_defined", diagnosis="adenoid_cystic_carcinoma", hedged=True),
    ),
    (
        "zh_lymphoma",
        "双侧腮腺弥漫性增大，内见多发结节，T2WI呈等信号，增强呈均匀强化。考虑淋巴瘤。",
        dict(present=True, side="bilateral", count=2, diagnosis="lymphoma", hedged=True,
             signal={"T2": "iso", "enhancement": "homogeneous"}),
    ),
    (
        "zh_not_excluded",
        "右侧腮腺见一结节，约1.8cm，边界欠清，不除外黏液表皮样癌。",
        dict(present=True, side="right", size_mm=18.0, margins="ill_defined", diagnosis="mucoepidermoid_carcinoma",
             hedged=True),
    ),
    (
        "zh_no_recurrence",
        "右侧腮腺多形性腺瘤切除术后，术区未见复发征象。",
        dict(present=False, diagnosis=None, side=None),
    ),
    (
        "zh_definite",
        "左侧腮腺浅叶多形性腺瘤，大小约2.6厘米×2.0厘米。",
        dict(present=True, side="left", lobe="superficial", size_mm=26.0, dimensions_mm=[26.0, 20.0],
             diagnosis="pleomorphic_adenoma", hedged=False),
    ),
    (
        "zh_zuoyou_about",
        "右侧腮腺见一结节，大小约2cm左右，边界清楚。",
        dict(present=True, side="right", size_mm=20.0, margins="well_defined"),
    ),
    (
        "zh_not_involving_deep",
        "左侧腮腺浅叶见一肿块，大小约2.8cm×2.1cm，未累及深叶。",
        dict(present=True, side="left", lobe="superficial", size_mm=28.0),
    ),
    (
        "zh_t1_t2_short",
        "右侧腮腺见一结节，T1WI低、T2WI高信号，大小约17mm。",
        dict(present=True, side="right", size_mm=17.0, signal={"T1": "hypo", "T2": "hyper"}),
    ),
    (
        "zh_two_nodules",
        "左侧腮腺内见两个结节，大者约1.5cm，边界清楚。",
        dict(present=True, side="left", count=2, size_mm=15.0, margins="well_defined"),
    ),
    (
        "zh_metastasis",
        "右侧腮腺区见多发肿大结节，较大者约2.2cm，边界不清，结合病史考虑转移瘤。",
        dict(present=True, side="right", count=2, size_mm=22.0, margins="ill_defined", diagnosis="metastasis", hedged=True),
    ),
    (
        "zh_acinic",
        "左侧腮腺见一肿块，约3.0cm×2.5cm，考虑腺泡细胞癌。",
        dict(present=True, side="left", size_mm=30.0, diagnosis="acinic_cell_carcinoma", hedged=True),
    ),
    (
        "zh_no_enhancement",
        "右侧腮腺见一囊性灶，约1.0cm，T2WI呈高信号，增强扫描未见强化。",
        dict(present=True, side="right", size_mm=10.0, signal={"T2": "hyper", "enhancement": "none"}),
    ),
    # ---------------------------------------------------------------- Chinese, brain
    (
        "zh_gbm",
        "右侧额叶见一不规则肿块，大小约4.5cm×3.8cm，边界不清，增强扫描呈不均匀环形强化，周围见大片水肿。考虑胶质母细胞瘤。",
        dict(present=True, side="right", gland="brain", size_mm=45.0, dimensions_mm=[45.0, 38.0], margins="ill_defined",
             diagnosis="glioma", hedged=True, signal={"enhancement": "rim"}),
    ),
    (
        "zh_glioma_definite",
        "左侧颞叶胶质瘤，病灶约3.2cm，呈长T1长T2信号，增强扫描未见明显强化。",
        dict(present=True, side="left", gland="brain", size_mm=32.0, diagnosis="glioma", hedged=False,
             signal={"T1": "hypo", "T2": "hyper", "enhancement": "none"}),
    ),
    (
        "zh_brain_normal",
        "脑实质内未见异常信号，脑室系统未见扩大。",
        dict(present=False, gland="brain", diagnosis=None),
    ),
    (
        "zh_brain_mets_multi",
        "双侧大脑半球见多发环形强化结节，较大者约1.6cm，位于左侧顶叶。考虑脑转移瘤。",
        dict(present=True, side="bilateral", gland="brain", count=2, size_mm=16.0, diagnosis="metastasis",
             signal={"enhancement": "rim"}, hedged=True),
    ),
    (
        "en_structured_numbered_impression",
        "FINDINGS: The right parotid gland demonstrates a 2.7 cm x 2.1 cm x 1.9 cm ovoid lesion centred in the "
        "superficial lobe. The lesion is predominantly T2 hyperintense with a hypointense capsule. Post-contrast "
        "T1-weighted images show avid heterogeneous enhancement. The left parotid and both submandibular glands "
        "are normal. IMPRESSION: 1. Right parotid superficial lobe lesion, most likely pleomorphic adenoma. "
        "2. No lymphadenopathy.",
        dict(present=True, side="right", lobe="superficial", size_mm=27.0, dimensions_mm=[27.0, 21.0, 19.0], count=1,
             signal={"T2": "hyper", "enhancement": "heterogeneous"}, diagnosis="pleomorphic_adenoma", hedged=True,
             negated_sides=["left"]),
    ),
    (
        "en_interval_change_current_size",
        "Right parotid gland lesion is smaller than on the prior study, now 1.5 cm (previously 2.0 cm).",
        dict(present=True, side="right", size_mm=15.0),
    ),
    (
        "en_either_side_normal",
        "No abnormality is seen in either parotid gland.",
        dict(present=False, side=None, negated_sides=["left", "right"]),
    ),
    (
        "en_resected_no_residual",
        "Interval resection of the left parotid Warthin tumor. No residual or recurrent tumor. The right parotid "
        "gland is unremarkable.",
        dict(present=False, side=None, diagnosis=None, negated_sides=["right"]),
    ),
    (
        "zh_normal_first_three_dims",
        "左侧腮腺及双侧颌下腺未见明显异常。右侧腮腺浅叶可见一大小约1.9cm×1.4cm×1.2cm类圆形异常信号影，T1WI呈低信号，"
        "T2WI呈不均匀高信号，边界清晰，增强扫描呈渐进性强化。影像诊断：右侧腮腺浅叶占位性病变，多形性腺瘤可能性大。",
        dict(present=True, side="right", lobe="superficial", size_mm=19.0, dimensions_mm=[19.0, 14.0, 12.0],
             margins="well_defined", signal={"T1": "hypo", "T2": "hyper", "enhancement": "present"},
             diagnosis="pleomorphic_adenoma", hedged=True, negated_sides=["left"]),
    ),
    (
        "zh_deep_lobe_malignant",
        "右侧腮腺区未见明确异常信号，左侧腮腺深叶见团块状长T1长T2信号影，边缘模糊，大小约35mm×28mm，增强后明显不均匀强化，"
        "咽旁间隙受压。诊断：左侧腮腺深叶恶性肿瘤可能，请结合临床。",
        dict(present=True, side="left", lobe="deep", size_mm=35.0, dimensions_mm=[35.0, 28.0], margins="ill_defined",
             signal={"T1": "hypo", "T2": "hyper", "enhancement": "heterogeneous"}, diagnosis=None, hedged=True,
             negated_sides=["right"]),
    ),
    (
        "en_three_dims_mm_not_a_count",
        "Clinical history: palpable lump left cheek. Findings: There is a 25 x 20 x 18 mm lobulated lesion arising "
        "from the left parotid gland superficial lobe. It returns low T1 and very high T2 signal. No perineural "
        "spread. No cervical lymphadenopathy. Conclusion: Left parotid lesion with imaging features typical of a "
        "pleomorphic adenoma.",
        dict(present=True, side="left", lobe="superficial", size_mm=25.0, dimensions_mm=[25.0, 20.0, 18.0], count=1,
             signal={"T1": "hypo", "T2": "hyper"}, diagnosis="pleomorphic_adenoma", hedged=False),
    ),
    (
        "en_bracketed_approximate_count",
        "MRI brain with and without contrast. Multiple small (approximately 35) T2/FLAIR hyperintense white matter "
        "lesions in both cerebral hemispheres, mostly periventricular. The largest, 9 mm, is in the left thalamus.",
        dict(present=True, side="bilateral", gland="brain", count=35, size_mm=9.0),
    ),
    (
        "en_bracketed_lower_bound_count",
        "Numerous (>20) T2 hyperintense foci in the periventricular white matter of both hemispheres.",
        dict(present=True, side="bilateral", count=20),
    ),
    (
        "en_bracketed_size_is_not_a_count",
        "Multiple lesions (largest 12 mm) in the right parotid gland. Several (3) subcentimetre nodes, not enlarged.",
        dict(present=True, side="right", count=2, size_mm=12.0),
    ),
    (
        "en_bracketed_exact_count",
        "Several (3) well-defined nodules in the left parotid gland, the largest 14 mm.",
        dict(present=True, side="left", count=3, size_mm=14.0, margins="well_defined"),
    ),
    (
        "en_no_invasion_is_not_ill_defined",
        "Left parotid mass measuring 2 cm. No invasion of the surrounding structures. No deep lobe extension.",
        dict(present=True, side="left", size_mm=20.0, margins=None, lobe=None, diagnosis=None),
    ),
    (
        "zh_both_lobes_dumbbell",
        "右侧腮腺浅叶及深叶见不规则团块影，跨越面神经平面，大小约4.2×3.5cm，边界不清，考虑恶性肿瘤，腺样囊性癌不除外。",
        dict(present=True, side="right", lobe=None, size_mm=42.0, margins="ill_defined", diagnosis="adenoid_cystic_carcinoma",
             hedged=True),
    ),
    (
        "zh_garland_enhancement",
        "右侧颞叶见团块状长T1长T2信号影，大小约5.2cm×4.1cm，周围水肿明显，增强扫描呈花环样强化，中线结构左移。考虑胶质母细胞瘤。",
        dict(present=True, side="right", gland="brain", size_mm=52.0, signal={"T1": "hypo", "T2": "hyper", "enhancement": "rim"},
             diagnosis="glioma", hedged=True),
    ),
    (
        "zh_postop_no_recurrence_other_side_normal",
        "左侧腮腺多形性腺瘤术后复查：术区未见明确复发征象，右侧腮腺未见异常。",
        dict(present=False, diagnosis=None, side=None),
    ),
    (
        "zh_irregular_but_well_defined",
        "左侧颌下腺见不规则结节，边界清楚，大小约16mm。",
        dict(present=True, side="left", gland="submandibular", margins="well_defined", size_mm=16.0),
    ),
    (
        "en_stable_known_lesion",
        "No significant interval change in the known right parotid Warthin tumour, 2.1 cm.",
        dict(present=True, side="right", size_mm=21.0, diagnosis="warthin_tumour", hedged=False),
    ),
    (
        "en_lesion_no_longer_seen",
        "The previously described left parotid lesion is no longer seen.",
        dict(present=False, side=None, negated_sides=["left"]),
    ),
    (
        "zh_question_mark_hedge",
        "双侧腮腺形态对称，左侧腮腺内未见明确占位。右侧腮腺下极见一类圆形长T1长T2信号结节，直径约12mm，边界清晰，增强后明显强化。"
        "诊断：右侧腮腺下极结节，考虑良性肿瘤（沃辛瘤？）。",
        dict(present=True, side="right", size_mm=12.0, margins="well_defined", diagnosis="warthin_tumour", hedged=True,
             negated_sides=["left"], signal={"T1": "hypo", "T2": "hyper", "enhancement": "present"}),
    ),
    (
        "en_gbm_progression_after_resection",
        "Status post resection of right temporal glioblastoma. Nodular enhancement along the posterior margin of the "
        "resection cavity measuring 1.8 x 1.2 cm, increased from prior, concerning for tumor progression.",
        dict(present=True, side="right", gland="brain", size_mm=18.0, dimensions_mm=[18.0, 12.0], diagnosis="glioma",
             hedged=True),
    ),
    (
        "en_brain_no_residual",
        "Stable post-surgical changes in the right parietal lobe. No evidence of recurrent or residual enhancing tumor.",
        dict(present=False, gland="brain", diagnosis=None, size_mm=None),
    ),
    (
        "en_thalamic_differential",
        "Heterogeneously enhancing mass centered in the left thalamus, 3.6 x 3.1 x 2.9 cm, with surrounding T2 "
        "hyperintense signal abnormality. Differential considerations include high-grade glioma and lymphoma.",
        dict(present=True, side="left", gland="brain", size_mm=36.0, dimensions_mm=[36.0, 31.0, 29.0], diagnosis="glioma",
             hedged=True, signal={"T2": "hyper", "enhancement": "heterogeneous"}),
    ),
    (
        "en_axis_labels",
        "FINDINGS: Large heterogeneously enhancing mass in the right frontal lobe (5.2 cm AP x 4.8 cm TV x 4.5 cm CC) "
        "with central necrosis, crossing the genu of the corpus callosum. IMPRESSION: Butterfly glioblastoma.",
        dict(present=True, side="right", gland="brain", size_mm=52.0, dimensions_mm=[52.0, 48.0, 45.0], diagnosis="glioma",
             hedged=False),
    ),
    (
        "zh_gbm_recurrence",
        "右侧额叶胶质母细胞瘤术后，术区边缘见结节状强化，大小约1.5cm×1.2cm，较前增大，考虑肿瘤复发。",
        dict(present=True, side="right", gland="brain", size_mm=15.0, dimensions_mm=[15.0, 12.0], diagnosis="glioma",
             hedged=True),
    ),
    (
        "zh_low_grade_slightly_long",
        "左侧额颞叶见大片状稍长T1稍长T2信号，增强扫描未见明显强化，考虑低级别胶质瘤。",
        dict(present=True, side="left", gland="brain", signal={"T1": "hypo", "T2": "hyper", "enhancement": "none"},
             diagnosis="glioma", hedged=True),
    ),
    (
        "zh_node_size_next_clause",
        "左侧腮腺内见多个小淋巴结，短径均小于5mm。右侧腮腺浅叶见一结节，约1.1cm。",
        dict(present=True, side="right", lobe="superficial", size_mm=11.0, count=1),
    ),
    (
        "en_colon_sections",
        "Left parotid: unremarkable. Right parotid: 2 cm mass.",
        dict(present=True, side="right", size_mm=20.0, negated_sides=["left"]),
    ),
    (
        "en_however",
        "The right parotid gland is normal; however, the left parotid gland contains a 1.5 cm nodule.",
        dict(present=True, side="left", size_mm=15.0, negated_sides=["right"], count=1),
    ),
    (
        "en_favored_cannot_exclude",
        "Impression: Findings are nonspecific. A benign neoplasm such as pleomorphic adenoma is favored, although a "
        "low-grade malignancy cannot be excluded.",
        dict(present=True, diagnosis="pleomorphic_adenoma", hedged=True),
    ),
    (
        "zh_traditional_characters",
        "右側腮腺淺葉可見一結節，大小約2.1×1.6公分，邊界清楚，T2WI呈高訊號，增強後呈均勻強化。左側腮腺未見異常。"
        "診斷：右側腮腺多形性腺瘤可能。",
        dict(present=True, side="right", lobe="superficial", size_mm=21.0, dimensions_mm=[21.0, 16.0], margins="well_defined",
             signal={"T2": "hyper", "enhancement": "homogeneous"}, diagnosis="pleomorphic_adenoma", hedged=True,
             negated_sides=["left"], language="zh"),
    ),
    (
        "zh_traditional_postop",
        "左側腮腺術後，術區未見復發。",
        dict(present=False, side=None, diagnosis=None),
    ),
    (
        "en_adc_units_are_not_sizes",
        "Left parotid nodule with restricted diffusion, ADC 0.7 x 10-3 mm2/s, measuring 17 mm, suggestive of Warthin tumour.",
        dict(present=True, side="left", size_mm=17.0, dimensions_mm=[17.0], diagnosis="warthin_tumour", hedged=True),
    ),
    # ---------------------------------------------------------------- mixed / edge cases
    (
        "edge_empty",
        "",
        dict(present=None, side=None, diagnosis=None, language=None),
    ),
    (
        "edge_no_statement",
        "Comparison: none. Technique: axial and coronal sequences before and after contrast.",
        dict(present=None, side=None, diagnosis=None, size_mm=None),
    ),
    (
        "edge_bilateral_normal_en",
        "Bilateral parotid glands are unremarkable. No mass lesion.",
        dict(present=False, negated_sides=["left", "right"], side=None),
    ),
    (
        "edge_negative_for_lymphoma",
        "Left parotid nodule 1.4 cm, well-defined. No evidence of lymphoma elsewhere. Impression: Warthin tumour.",
        dict(present=True, side="left", size_mm=14.0, diagnosis="warthin_tumour", hedged=False),
    ),
    # Decimal commas and spelled-out units (European and British reports): "2,3 cm" is 23 mm, not 3 cm.
    (
        "size_decimal_comma",
        "MRI parotid: in the superficial lobe of the right parotid a well-defined mass of 2,3 x 1,8 cm. Impression: pleomorphic adenoma.",
        dict(present=True, side="right", size_mm=23.0, dimensions_mm=[23.0, 18.0], count=1, diagnosis="pleomorphic_adenoma"),
    ),
    (
        "size_decimal_comma_mm",
        "Left parotid nodule measuring 9,5 mm, T2 hyperintense.",
        dict(present=True, side="left", size_mm=9.5, count=1),
    ),
    (
        "size_spelled_out_units",
        "The lesion in the deep lobe of the left parotid measures approximately 23 x 18 x 15 millimetres.",
        dict(present=True, side="left", lobe="deep", size_mm=23.0, dimensions_mm=[23.0, 18.0, 15.0]),
    ),
    (
        "side_capital_letter",
        "FINDINGS: R PAROTID MASS 2.1CM, SUPERFICIAL LOBE. L PAROTID NORMAL.",
        dict(present=True, side="right", lobe="superficial", size_mm=21.0),
    ),
    (
        "side_letter_not_before_an_organ",
        "Technique: T2 FS, L-R phase encoding. A 14 mm nodule in the right parotid.",
        dict(present=True, side="right", size_mm=14.0),
    ),
    (
        "size_centimeters",
        "Right parotid mass, 2.5 centimeters in greatest dimension.",
        dict(present=True, side="right", size_mm=25.0),
    ),
    (
        "size_hyphenated_mm",
        "A 15-mm T2-hypointense nodule in the left parotid gland.",
        dict(present=True, side="left", size_mm=15.0, dimensions_mm=[15.0], signal={"T2": "hypo"}),
    ),
    (
        "size_hyphenated_cm",
        "There is a 1.5-cm well-circumscribed nodule in the right parotid gland.",
        dict(present=True, side="right", size_mm=15.0, margins="well_defined"),
    ),
    (
        "size_range_keeps_upper",
        "A 2-3 cm lesion in the left parotid.",
        dict(present=True, side="left", size_mm=30.0),
    ),
    (
        "side_in_parentheses",
        "Parotid gland lesion (L), 18 mm. Contralateral gland normal.",
        dict(present=True, side="left", size_mm=18.0),
    ),
    (
        "side_latin",
        "Glandula parotidea dextra: tumour 2 cm.",
        dict(present=True, side="right", size_mm=20.0),
    ),
    (
        "stir_is_t2",
        "Left parotid lesion, STIR hyperintense, T1 hypointense, 22 mm.",
        dict(present=True, side="left", signal={"T2": "hyper", "T1": "hypo"}),
    ),
    (
        "lobe_by_facial_nerve",
        "Right parotid mass, 2.1 cm, lateral to the plane of the facial nerve.",
        dict(present=True, side="right", lobe="superficial"),
    ),
    (
        "lobe_by_retromandibular_vein",
        "Left parotid mass, 2.8 cm, medial to the retromandibular vein.",
        dict(present=True, side="left", lobe="deep"),
    ),
    (
        "lobe_tail_is_superficial",
        "Well-circumscribed 3.1 cm lesion in the tail of the left parotid gland, likely Warthin tumour.",
        dict(present=True, side="left", lobe="superficial", diagnosis="warthin_tumour"),
    ),
    (
        "lobe_parotid_tail",
        "Right parotid tail mass measuring 18 mm with heterogeneous T2 signal.",
        dict(present=True, side="right", lobe="superficial", size_mm=18.0),
    ),
    (
        "lobe_lower_pole",
        "Oval 12 mm lesion at the inferior pole of the right parotid, T2 bright.",
        dict(present=True, side="right", lobe="superficial", size_mm=12.0),
    ),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_parse_report(name, text, expected):
    f = parse_report(text)
    got = {k: getattr(f, k) for k in expected}
    assert got == expected, f"{name}: {got} != {expected}"
    # Whatever the parser says must be a canonical value the model can encode.
    assert f.diagnosis is None or f.diagnosis in DIAGNOSES
    assert len(findings_vector(f)) == FINDINGS_DIM


def test_enough_cases_in_both_languages():
    langs = [parse_report(t).language for _, t, _ in CASES]
    assert langs.count("en") >= 30 and langs.count("zh") >= 25


def test_parse_never_raises_on_odd_text():
    for t in ["...", "x" * 5000, "2.3 x", "cm cm cm", "T1 T2 T1", "左右左右", "\x00\x01", "1e9 cm", "999999 mm mass"]:
        assert isinstance(parse_report(t), Findings)


def test_report_hash():
    h1 = report_hash("Left parotid mass.", 1)
    assert len(h1) == 64 and int(h1, 16) >= 0
    assert report_hash("Left parotid mass.\r\n", 1) == h1  # line endings / trailing space do not count
    assert report_hash("Left parotid mass.", 2) != h1
    assert report_hash("Right parotid mass.", 1) != h1


@pytest.mark.parametrize("text,region", [
    ("FH-HEAD^Brain Protocols / T1post / BRAIN", "brain"),
    ("MR PAROTID W/WO CONTRAST / t2_tse_tra_fs", "parotid"),
    ("MRI HEAD W/WO CONTRAST / BRAIN", "brain"),
    ("MR NECK / HEAD", None),
    ("PAROTID / BRAIN", None),  # two regions: no hint
    ("", None),
    (None, None),
    ("x" * 100_000, None),
])
def test_region_in_dicom_descriptions(text, region):
    from pgsam_node.reports.parse import region_in_text

    assert region_in_text(text) == region
