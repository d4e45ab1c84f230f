"""Structured findings from free report text (English and Chinese).

:func:`parse_report` reads what a radiologist wrote about the target lesion and fills a
:class:`~pgsam_node.findings.Findings`: side, gland, lobe, size, number of lesions, margins,
signal, the stated diagnosis (canonical code), negation and hedging.

How it works (rule based, deterministic, no model):

1. The text is normalised (Unicode NFKC: full-width digits, letters and punctuation become ASCII;
   traditional Chinese characters of the vocabularies become simplified;
   ``×``, ``*``, ``by`` and ``乘`` separate dimensions; ``左右`` meaning "about" is removed).
2. It is split into sentences, then clauses (commas, semicolons, colons, "but", "whereas"...).
3. Each clause is classified: *negative* (a negation cue governs a lesion word, or the clause
   calls a structure normal: "no lesion in the right parotid", "the left parotid is unremarkable",
   "右侧腮腺未见异常", "未见明确肿块"), *history* ("status post", "术后"), or *positive* (a lesion
   word, a lesion size or a diagnosis without negation).
4. The side of the lesion comes from positive clauses (or the side named earlier in the same
   sentence: "In the left parotid gland, there is a 2 cm mass"); sides named in negative clauses
   become ``negated_sides`` unless they are also the lesion side.
5. Diagnoses are looked up in the impression/conclusion section first ("Impression:", "诊断意见",
   "印象", "结论"), skipping negated ones ("no evidence of lymphoma", "Warthin tumour is less
   likely", "不考虑…"); hedging cues in the sentence of the chosen diagnosis ("likely",
   "suspicious for", "cannot exclude", "考虑", "可能", "倾向", "不除外") set ``hedged``.

Report text never goes to a log line (it is patient data); this module logs nothing.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from pgsam_node.findings import Findings

__all__ = ["parse_report", "report_hash"]

# ---------------------------------------------------------------------------------------------
# Vocabularies (regular expressions, case-insensitive). Chinese terms need no word boundaries.
# ---------------------------------------------------------------------------------------------
_CJK = re.compile(r"[\u4e00-\u9fff]")

_LESION_EN = (
    r"(?:lesions?|mass(?:es)?(?!\s+effect)|tumou?rs?|nodules?|neoplasms?|masslike|mass-like|"
    r"cysts?|foci|focus|abnormalit(?:y|ies)|abnormal\s+(?:signal|enhancement|intensity)|"
    r"recurrences?|recurrent\s+(?:disease|tumou?r)|residual\s+(?:disease|tumou?r|lesion)|"
    r"growths?|adenomas?|carcinomas?|gliomas?|glioblastomas?|lymphomas?|metastas[ie]s)"
)
_LESION_ZH = r"(?:肿块|结节|占位|病灶|病变|肿物|肿瘤|团块|囊肿|异常信号|异常强化|强化灶|复发|残留|软组织影|异常)"
_LESION = re.compile(rf"\b{_LESION_EN}\b|{_LESION_ZH}", re.I)

_NEG_EN = re.compile(
    rf"\b(?:no|without|absence\s+of|negative\s+for|free\s+of|nor)\b(?:\s+[\w/-]+){{0,6}}?\s+{_LESION_EN}\b"
    rf"|\b{_LESION_EN}\b(?:\s+[\w/-]+){{0,6}}?\s+(?:is|are|was|were|has|have)\s+(?:not|no\s+longer|not\s+been)\s+"
    r"(?:seen|identified|demonstrated|visuali[sz]ed|present|evident|detected|shown)"
    r"|\b(?:unremarkable|within\s+normal\s+limits|normal\s+in\s+(?:size|appearance|signal)|(?:is|are|appears?|looks?)\s+normal)\b"
    r"|\bno\s+(?:significant\s+)?abnormalit(?:y|ies)\b",
    re.I,
)
_NEG_ZH = re.compile(
    rf"(?:未见|未发现|未显示|未探及|没有|无)[^,;:。]{{0,10}}?{_LESION_ZH}"
    r"|(?:形态|大小|信号|密度)?[^,;:。]{0,6}正常|无异常"
)
#: A cue right before a term negates that term ("does not involve the deep lobe", "未累及深叶").
_NEG_BEFORE = re.compile(r"(?:\b(?:no|not|without|nor|never)\b|未|无|没有|不(?!规则|均匀|整|除外|能除外|能排除)|非)[^,;.。]{0,24}$", re.I)

_HISTORY = re.compile(
    r"\b(?:history\s+of|status\s+post|s/p|post[- ]?operative|postoperative|previously\s+resected|"
    r"after\s+(?:surgical\s+)?(?:resection|excision|parotidectomy)|prior\s+(?:resection|parotidectomy|surgery)|"
    r"(?:interval\s+)?(?:resection|excision)\s+of|resected|parotidectomy)\b"
    r"|术后|病史|切除后",
    re.I,
)

# A capital L or R is a side only right before the organ it qualifies: "R parotid", "L hemisphere".
_LETTER_SIDE = r"(?=\.?\s*(?:parotid|submandibular|hemisphere|frontal|temporal|parietal|occipital|cerebell))"

_SIDE_PATTERNS = [
    ("bilateral", re.compile(r"\b(?:bilateral(?:ly)?|both|either)\b|双侧|两侧|双(?=腮腺|颌下腺|下颌下腺|侧)", re.I)),
    ("left", re.compile(rf"\b(?:left|lt|sinist(?:er|ra|rum))\b|(?-i:\bL\b){_LETTER_SIDE}|(?-i:\(\s*L\s*\))|左", re.I)),
    ("right", re.compile(rf"\b(?:right|rt|dext(?:er|ra|rum))\b|(?-i:\bR\b){_LETTER_SIDE}|(?-i:\(\s*R\s*\))|右", re.I)),
]

_GLAND_PATTERNS = [
    ("parotid", re.compile(r"\bparotids?\b|腮腺", re.I)),
    ("submandibular", re.compile(r"\bsub(?:mandibular|maxillary)\b|颌下腺|颌下", re.I)),
    (
        "brain",
        re.compile(
            r"\b(?:brain|cerebr\w*|intracranial|hemispher\w*|cerebell\w*|basal\s+ganglia|thalam\w*|corpus\s+callosum|"
            r"(?:frontal|temporal|parietal|occipital|insular)\s+(?:lobes?|horns?|cortex|gyr[iu]s?|sulc[iu]s?|white\s+matter|"
            r"convexity|operculum)|periventricular|white\s+matter|"
            r"(?:fronto|parieto|temporo|occipito)-?(?:parietal|occipital|temporal|frontal)|"
            # "right temporal ring-enhancing lesion", "left occipital mass": a cerebral region right
            # before the lesion; not the neck's "occipital nodes", "superficial temporal artery"...
            r"(?:frontal|parietal|occipital|temporal)(?!\s+(?:bones?|arter\w*|veins?|nodes?|lymph\w*|scalp|sinus\w*|condyles?|"
            r"triangle|belly|fossa))(?=\s+(?:[\w-]+\s+){0,2}(?:lesions?|mass(?:es)?|tumou?rs?|gliomas?|glioblastomas?|"
            r"metastas[ie]s|haemorrhage|hemorrhage|infarcts?|enhancement)\b)|"
            r"(?:lateral|third|fourth)\s+ventricles?|intraventricular|(?:supra|infra)tentorial|brain\s*stem|pons|pontine|midbrain|"
            r"centrum\s+semiovale|corona\s+radiata|internal\s+capsule|juxtacortical|subcortical|vasogenic|midline\s+shift|"
            r"resection\s+cavity|craniotomy|meningiomas?|demyelinat\w*|multiple\s+sclerosis|leptomeningeal)\b"
            r"|脑|额叶|颞叶|顶叶|枕叶|小脑|基底节|丘脑|胼胝体|颅内|脑室",
            re.I,
        ),
    ),
]

# The facial nerve (or the retromandibular vein beside it) divides the parotid into its lobes:
# "lateral to the facial nerve" is the superficial lobe, "medial to the retromandibular vein" the deep.
# The parotid tail (its lower pole, over the sternocleidomastoid) is part of the superficial lobe.
_LOBE_PLANE = r"(?:the\s+)?(?:plane\s+of\s+the\s+|course\s+of\s+the\s+)?(?:facial\s+nerve|retromandibular\s+vein)"

_LOBE_PATTERNS = [
    ("superficial", re.compile(r"\bsuperficial\s+(?:lobe|portion|part|component)s?\b|\bsuperficial\b(?=[^.]{0,30}\blobes?\b)|"
                             rf"\blateral\s+to\s+{_LOBE_PLANE}|\bparotid\s+tail\b|\b(?:tail|(?:lower|inferior)\s+pole)(?:\s+\(tail\))?\s+of\s+the\s+(?:(?:left|right)\s+)?parotid\b|"
                             r"浅叶|浅部|腮腺尾", re.I)),
    ("deep", re.compile(r"\bdeep\s+(?:lobe|portion|part|component)s?\b|\bdeep\b(?=[^.]{0,30}\blobes?\b)|\bparapharyngeal\b|"
                      rf"\bmedial\s+to\s+{_LOBE_PLANE}|深叶|深部|咽旁", re.I)),
]

#: Diagnoses, most specific first (``adenolymphoma`` before ``lymphoma``; carcinoma ex
#: pleomorphic adenoma before pleomorphic adenoma).
_DIAGNOSIS_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("other", re.compile(r"carcinoma\s+ex[- ]pleomorphic\s+adenoma|多形性腺瘤癌变|癌在多形性腺瘤中|恶性混合瘤", re.I)),
    ("pleomorphic_adenoma", re.compile(r"pleomorphic\s+adenomas?|(?:benign\s+)?mixed\s+tumou?rs?|多形性腺瘤|混合瘤", re.I)),
    (
        "warthin_tumour",
        re.compile(
            r"warthin(?:'s|s)?(?:\s+tumou?rs?)?|papillary\s+cystadenoma\s+lymphomatosum|adenolymphomas?|"
            r"沃辛瘤|华氏瘤|warthin瘤|腺淋巴瘤",
            re.I,
        ),
    ),
    ("basal_cell_adenoma", re.compile(r"basal\s+cell\s+adenomas?|基底细胞腺瘤", re.I)),
    ("mucoepidermoid_carcinoma", re.compile(r"muco-?epidermoid\s+carcinomas?|\bMEC\b|[黏粘]液表皮样癌", re.I)),
    ("adenoid_cystic_carcinoma", re.compile(r"adenoid\s+cystic\s+carcinomas?|\bACC\b|腺样囊性癌", re.I)),
    ("acinic_cell_carcinoma", re.compile(r"acinic\s+cell\s+carcinomas?|腺泡细胞癌", re.I)),
    ("lymphoma", re.compile(r"(?<!adeno)lymphomas?|\bMALT\b|(?<!腺)淋巴瘤", re.I)),
    ("metastasis", re.compile(r"metasta(?:sis|ses|tic)|转移瘤|转移", re.I)),
    (
        "glioma",
        re.compile(
            r"glioblastomas?|gliomas?|\bGBM\b|astrocytomas?|oligodendrogliomas?|胶质母细胞瘤|胶质瘤|星形细胞瘤|少突胶质细胞瘤",
            re.I,
        ),
    ),
    (
        "other",
        re.compile(
            r"schwannomas?|neurilemmomas?|lipomas?|ha?emangiomas?|oncocytomas?|myoepitheliomas?|meningiomas?|"
            r"squamous\s+cell\s+carcinomas?|salivary\s+duct\s+carcinomas?|"
            r"神经鞘瘤|脂肪瘤|血管瘤|嗜酸细胞瘤|肌上皮瘤|脑膜瘤|鳞癌|鳞状细胞癌|导管癌",
            re.I,
        ),
    ),
]

_HEDGE = re.compile(
    r"(?<!less\s)\blikely\b|\bprobabl[ey]\b|\bpossibl[ey]\b|\bsuspicious\b|\bsuspect(?:ed)?\b|\bsuggestive\b|"
    r"\bsuggest(?:s|ing)?\b|\bconcerning\s+for\b|\b(?:may|might|could)\s+(?:represent|be)\b|\bfavou?r(?:s|ed)?\b|"
    r"\bcannot\s+(?:be\s+)?(?:exclude[ds]?|rule[ds]?\s+out|ruled\s+out)\b|\bcan\s*not\s+be\s+(?:excluded|ruled\s+out)\b|"
    r"\bnot\s+(?:be\s+)?excluded\b|\bdifferential\b|\bquestionable\b|\bpresum(?:ed|ably)\b|\bworrisome\b|"
    r"\bindeterminate\b|\bquery\b|\?"
    r"|考虑|可能|倾向|可疑|疑似|疑为|不除外|不能除外|不能排除|待排|待除外|首先考虑",
    re.I,
)
#: Cues that reject a named diagnosis ("lymphoma is unlikely", "no evidence of metastasis").
_DX_NEG_BEFORE = re.compile(
    r"(?:\b(?:no|not|without|negative\s+for|rather\s+than|instead\s+of|nor)\b(?:\s+[\w/-]+){0,4}\s*|不考虑|非|排除)$",
    re.I,
)
_DX_NEG_AFTER = re.compile(
    r"^[^,;.]{0,20}?(?:\b(?:is|are|seems?)?\s*(?:less\s+likely|unlikely|excluded|ruled\s+out|not\s+favou?red|not\s+suspected)\b|可能性小|可能性不大|不支持)",
    re.I,
)

_IMPRESSION = re.compile(
    r"\b(?:impression|conclusions?|diagnosis|opinion|summary)\s*:|诊断意见|影像诊断|影像学诊断|印象|结论|意见\s*:|诊断\s*:",
    re.I,
)

# Sizes: "2.3 cm", "23 mm", "2.3 x 1.8 cm", "23×18mm", "2.3厘米", "2.3*1.8cm", "2.3 cm by 1.8 cm",
# "2,3 cm" (decimal comma: one or two digits after it), "23 millimetres".
_NUM = r"\d+(?:\.\d+|,\d{1,2}(?!\d))?"
_UNIT = r"(?:millimet(?:re|er)s?|centimet(?:re|er)s?|mm|cm|毫米|厘米|公分)"
#: Units (or their beginnings) that are centimetres.
_CM_UNITS = ("cm", "厘米", "公分", "centimet")
_SEP = r"\s*(?:x|×|\*|by|乘)\s*"
# Orientation labels may follow each diameter: "5.2 cm AP x 4.8 cm TV x 4.5 cm CC".
_AXIS = r"(?:\s*\(?(?:AP|TV|TR|CC|LR|RL|SI|ML|trans(?:verse)?|cranio-?caudal|antero-?posterior)\b\)?)?"
# "mm2/s" (ADC), "mm^2" are not lengths.
# "A 2.5-cm mass", "a 15-mm nodule": a hyphen may join the number to its unit.
_DIM = rf"{_NUM}(?:\s*-?\s*{_UNIT}(?![a-z0-9/^]){_AXIS})?"
_SIZE = re.compile(rf"(?<![A-Za-z0-9.]){_DIM}(?:{_SEP}{_DIM}){{0,2}}", re.I)
_SIZE_PART = re.compile(rf"({_NUM})(?:\s*-?\s*({_UNIT}))?", re.I)
_TECHNIQUE = re.compile(r"slice|section|thickness|gap|spacing|层厚|层距|间距", re.I)
_NODE = re.compile(r"\blymph\s*nodes?\b|\bnodes\b|\blymphadenopathy\b|淋巴结", re.I)

#: Quantifiers that mean "two or more" (count 2 unless a number is stated).
_VAGUE_COUNTS = ("multiple", "several", "numerous", "few", "multifocal")
_COUNT_WORDS = {
    "one": 1, "single": 1, "solitary": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, **dict.fromkeys(_VAGUE_COUNTS, 2),
}
#: Plural lesion nouns: a clause naming one of them describes two or more lesions.
_PLURAL_LESIONS = r"lesions|masses|nodules|tumou?rs|foci|cysts"
_COUNT_EN = re.compile(
    rf"\b(one|single|solitary|an?|two|three|four|five|six|{'|'.join(_VAGUE_COUNTS)}|(?<![\d.])\d+(?![.\d]|\s*(?:mm|cm)\b))\b"
    r"((?:[\s,-]+(?!(?:in|of|on|at|with|and|measuring)\b)[\w/-]+){0,5}?)[\s-]+"
    r"(lesions?|mass(?:es)?|tumou?rs?|nodules?|foci|focus|masslike|cysts?)\b",
    re.I,
)
#: A vague quantifier with the number in brackets: "multiple small (approximately 35) ... lesions",
#: "numerous (>20) foci". The bracketed number is the count (up to _MAX_STATED_COUNT).
_COUNT_BRACKETED = re.compile(
    rf"\b(?:{'|'.join(_VAGUE_COUNTS)}|innumerable|countless)\b[^()]{{0,40}}?"
    r"\(\s*(?:approximately|approx\.?|about|around|roughly|some|more than|over|at least|ca\.?|~|>|≈)?\s*(\d{1,3})\s*\)"
    rf"[^()]{{0,60}}?\b(?:{_PLURAL_LESIONS}|plaques)\b",
    re.I,
)
_MAX_STATED_COUNT = 500
_CN_DIGITS = {"一": 1, "两": 2, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6}
_COUNT_ZH = re.compile(
    r"(多发|多个|数个|[一两二三四五六\d])\s*(?:个|枚|处|发)?[^,;:。]{0,10}?(?:结节|肿块|病灶|占位|肿物|团块|囊肿|异常信号)"
)

# Signal. Chinese "长T1" = long T1 relaxation = hypointense on T1; "长T2" = hyperintense on T2.
_CE_SEQ = re.compile(
    r"(?:post[- ]?(?:contrast|gadolinium|gad)|contrast[- ]enhanced|gadolinium[- ]enhanced|enhanced)\s+T1(?:[- ]?weighted|WI|W)?"
    r"|T1(?:[- ]?weighted|WI|W)?\s*(?:\+\s*C|C\b|post[- ]?(?:contrast|gadolinium|gad))|增强\s*T1(?:WI)?",
    re.I,
)
#: Fat-suppressed inversion-recovery sequences are T2-weighted for a lesion's signal ("STIR hyperintense").
_STIR = re.compile(r"\b(?:STIR|TIRM)\b", re.I)
_LONG_SHORT = re.compile(r"(长|短|等)\s*(T[12])(?:WI)?", re.I)
_SIG_TOKEN = re.compile(
    r"(?P<seq>\bT[12](?=[\s/,、及和与-]|WI|W\b|-?weighted|\b|[^a-z0-9]))(?:WI|W\b|[- ]?weighted)?"
    r"|(?P<hypo>\bhypo(?:-?intens\w*|-)|\blow(?:[- ]signal)?\b|\bdark\b|(?:稍|略|明显)?低(?=信号|[、,及和与]\s*T))"
    r"|(?P<iso>\biso(?:-?intens\w*|-)|\bintermediate\b|(?:稍|略)?等(?=信号|[、,及和与]\s*T))"
    r"|(?P<hyper>\bhyper(?:-?intens\w*|-)|\bhigh(?:[- ]signal)?\b|\bbright\b|(?:稍|略|明显)?高(?=信号|[、,及和与]\s*T))"
    r"|(?P<on>\b(?:on|in)\b(?:\s+the)?\s*(?=T[12]))",
    re.I,
)
_ENHANCEMENT = [
    ("none", re.compile(r"\bno(?:\s+\w+)?\s+enhancement\b|\bnon-?enhancing\b"
                        r"|\bdoes\s+not\s+enhance\b|\bwithout\s+(?:\w+\s+)?enhancement\b"
                        r"|\bunenhanced\s+lesion\b|未见(?:明显)?强化|无(?:明显)?强化|不强化", re.I)),
    ("rim", re.compile(r"\b(?:rim|ring|peripheral)(?:[- ]like)?[- ]enhanc\w*"
                       r"|\benhanc\w*\s+(?:\w+\s+)?(?:rim|ring|periphery)\b|环形强化|环状强化|环样强化"
                       r"|花环样?强化|边缘强化|周边强化", re.I)),
    ("heterogeneous", re.compile(r"\b(?:heterogeneous(?:ly)?|inhomogeneous(?:ly)?"
                                 r"|patchy)\b[^.;]{0,20}enhanc\w*"
                                 r"|\benhanc\w*\s+(?:\w+\s+)?(?:heterogeneously|inhomogeneously)\b|不均匀强化"
                                 r"|不均匀[^,;。]{0,4}强化", re.I)),
    ("homogeneous", re.compile(r"\b(?:homogeneous(?:ly)?|uniform(?:ly)?)\b[^.;]{0,20}enhanc\w*"
                               r"|\benhanc\w*\s+(?:\w+\s+)?(?:homogeneously|uniformly)\b|均匀强化"
                               r"|均匀[^,;。]{0,4}强化", re.I)),
    ("present", re.compile(r"\benhanc(?:ing|es|ement|ed)\b|强化", re.I)),
]

_MARGINS_ILL = re.compile(
    r"\b(?:ill|poorly)[- ]?(?:defined|circumscribed|marginated)\b|\binfiltrat\w*|\bindistinct\b|\bspiculated\b|"
    r"\birregular\s+(?:margins?|borders?|contours?|outline)\b|\bblurred\s+margins?\b|"
    r"\bnot\s+(?:well|clearly|sharply)[- ]?(?:defined|circumscribed|marginated)\b|\binvasi(?:ve|on)\s+(?:of|into)\b|"
    r"边界不清|边界欠清|边界模糊|境界不清|境界欠清|边缘不清|边缘模糊|浸润",
    re.I,
)
_MARGINS_WELL = re.compile(
    r"\b(?:well|sharply|clearly)[- ]?(?:defined|circumscribed|demarcated|marginated)\b|\bcircumscribed\b|"
    r"\b(?:smooth|sharp|clear|lobulated)\s+(?:margins?|borders?|contours?)\b|\bencapsulated\b|"
    r"边界清|边界清楚|边界清晰|境界清|边缘光整|边缘清|包膜完整",
    re.I,
)

_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|[\n!?。！？]+|(?<=\d)\.(?=\s|$)")
_CLAUSE_SPLIT = re.compile(r"(?<!\d),|,(?!\d)|[;:]|\b(?:but|whereas|while|however|although)\b", re.I)


#: Traditional → simplified for the characters the vocabularies use (Taiwan / Hong Kong reports).
_TRAD = str.maketrans(
    "側雙兩邊見結節腫塊葉淺強號訊異無顯診斷慮腦額顳頂頜約釐轉膠質樣發現濾實變廣門"
    "狀內較輕積環緣輪廓複與對稱緻範圍擴張鄰勻徑區術後復徵彌縮規則體",
    "侧双两边见结节肿块叶浅强号讯异无显诊断虑脑额颞顶颌约厘转胶质样发现滤实变广门"
    "状内较轻积环缘轮廓复与对称致范围扩张邻匀径区术后复征弥缩规则体",
)


def _normalise(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).translate(_TRAD).replace("讯号", "信号")
    t = t.replace("\u3000", " ").replace("；", ";").replace("：", ":")
    # "约2cm左右" = "about 2 cm": 左右 here is not a side.
    t = t.replace("左右", "")
    return t


def _is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


@dataclass
class _Clause:
    text: str
    sentence: int
    start: int  # offset in the normalised text
    negative: bool = False
    history: bool = False
    lesion: bool = False
    sides: set[str] = field(default_factory=set)


def _sides_in(text: str) -> set[str]:
    out: set[str] = set()
    for name, pat in _SIDE_PATTERNS:
        if pat.search(text):
            if name == "bilateral":
                out |= {"left", "right"}
            else:
                out.add(name)
    return out


def _split(text: str) -> list[_Clause]:
    clauses: list[_Clause] = []
    pos = 0
    sentences: list[tuple[int, str]] = []
    for m in _SENTENCE_SPLIT.finditer(text):
        sentences.append((pos, text[pos : m.start()]))
        pos = m.end()
    sentences.append((pos, text[pos:]))
    for si, (s_start, sentence) in enumerate(sentences):
        cpos = 0
        for m in list(_CLAUSE_SPLIT.finditer(sentence)) + [None]:
            end = m.start() if m else len(sentence)
            chunk = sentence[cpos:end]
            if chunk.strip():
                clauses.append(_Clause(text=chunk, sentence=si, start=s_start + cpos))
            if m:
                cpos = m.end()
    return clauses


def _classify(c: _Clause) -> None:
    t = c.text
    c.history = bool(_HISTORY.search(t))
    c.negative = bool(_NEG_EN.search(t) or _NEG_ZH.search(t))
    if c.negative:
        # "no lesion in the right parotid and a 2 cm mass on the left" is rare; a clause with a
        # negation stays negative unless it also gives a lesion size.
        if _lesion_sizes(t):
            c.negative = False
    has_lesion_word = any(not _negated_before(t, m.start()) for m in _LESION.finditer(t))
    has_dx = any(pat.search(t) for _, pat in _DIAGNOSIS_PATTERNS)
    c.lesion = not c.negative and not c.history and (has_lesion_word or has_dx or bool(_lesion_sizes(t)))
    c.sides = _sides_in(t)


def _negated_before(text: str, pos: int) -> bool:
    return bool(_NEG_BEFORE.search(text[max(0, pos - 30) : pos]))


_EARLIER = re.compile(r"(?:\b(?:previous(?:ly)?|prior|was|from|before)\b|原|较前|前次)[^,;]{0,10}$", re.I)


def _lesion_sizes(text: str, earlier: bool = False) -> list[list[float]]:
    """Every dimension group with a unit in ``text``, in mm (technique and node sizes excluded).

    Sizes given for an earlier study ("previously 2.0 cm", "from 1.5 cm") are left out, or
    returned alone with ``earlier=True``.
    """
    if _NODE.search(text):
        return []
    out: list[list[float]] = []
    for m in _SIZE.finditer(text):
        parts = _SIZE_PART.findall(m.group(0))
        units = [u for _, u in parts]
        if not any(units):
            continue
        before = text[max(0, m.start() - 20) : m.start()]
        after = text[m.end() : m.end() + 12]
        if _TECHNIQUE.search(before) or _TECHNIQUE.search(after):
            continue
        if bool(_EARLIER.search(before)) != earlier:
            continue
        dims: list[float] = []
        for i, (num, unit) in enumerate(parts):
            u = unit or next((x for x in units[i + 1 :] if x), None) or next((x for x in reversed(units[:i]) if x), "mm")
            factor = 10.0 if u.lower().startswith(_CM_UNITS) else 1.0
            dims.append(round(float(num.replace(",", ".")) * factor, 1))
        if all(0 < d < 500 for d in dims):
            out.append(sorted(dims, reverse=True))
    return out


def _find_diagnosis(text: str, clauses: list[_Clause]) -> tuple[str | None, int | None, bool]:
    """(code, offset, from_history) of the stated diagnosis; impression section first."""
    imp = _IMPRESSION.search(text)
    candidates: list[tuple[int, int, str, bool]] = []  # (priority, offset, code, history)
    for c in clauses:
        taken: list[tuple[int, int]] = []
        for code, pat in _DIAGNOSIS_PATTERNS:
            for m in pat.finditer(c.text):
                if any(a <= m.start() < b for a, b in taken):
                    continue
                taken.append((m.start(), m.end()))
                before = c.text[max(0, m.start() - 40) : m.start()]
                after = c.text[m.end() : m.end() + 30]
                cant_exclude = bool(
                    re.search(r"cannot\s+(?:be\s+)?(?:exclude|rule\s+out)|不能排除$|不除外$|不能除外$", before, re.I)
                    or re.search(r"^[^,;.]{0,12}?(?:cannot|can\s*not|could\s+not|not)\s+be\s+(?:excluded|ruled\s+out)", after, re.I)
                )
                if not cant_exclude and (_DX_NEG_BEFORE.search(before) or _DX_NEG_AFTER.search(after)):
                    continue
                if re.search(r"\b(?:no|without)\b[^,;.]{0,30}$", before, re.I) and not cant_exclude:
                    continue
                if re.search(r"(?:未见|无|没有)[^,;。]{0,8}$", before) and not cant_exclude:
                    continue
                offset = c.start + m.start()
                in_impression = imp is not None and offset >= imp.start()
                priority = (0 if in_impression else 1) + (2 if c.history else 0)
                candidates.append((priority, offset, code, c.history))
    if not candidates:
        return None, None, False
    candidates.sort()
    _, off, code, hist = candidates[0]
    return code, off, hist


def _signal(clauses: list[_Clause]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in clauses:
        if c.negative and not c.lesion:
            continue
        t = _STIR.sub(" T2 ", _CE_SEQ.sub(" CE ", c.text))
        t = _LONG_SHORT.sub(lambda m: f" {m.group(2).upper()} {_long_short(m.group(1), m.group(2))} ", t)
        pending_seq: list[str] = []
        pending_int: str | None = None
        saw_on = False
        for m in _SIG_TOKEN.finditer(t):
            kind = m.lastgroup
            if kind == "seq":
                seq = m.group("seq").upper()
                if pending_int and (saw_on or not pending_seq):
                    out.setdefault(seq, pending_int)
                    pending_int = None
                    saw_on = False
                    # "hypointense on T1 and T2" keeps the intensity for the next sequence
                    continue
                pending_seq.append(seq)
            elif kind == "on":
                saw_on = True
            else:
                if pending_seq:
                    for seq in pending_seq:
                        out.setdefault(seq, kind)
                    pending_seq = []
                else:
                    pending_int = kind
                saw_on = False
    for c in clauses:
        t = c.text
        for name, pat in _ENHANCEMENT:
            if pat.search(t):
                if name == "present" and "enhancement" in out:
                    continue
                if name == "present" and _NEG_BEFORE.search(t[: pat.search(t).start()][-30:]):
                    continue
                if "enhancement" not in out or out["enhancement"] == "present":
                    out["enhancement"] = name
                break
    return out


def _long_short(word: str, seq: str) -> str:
    seq = seq.upper()
    if word == "等":
        return "isointense"
    if word == "长":
        return "hypointense" if seq == "T1" else "hyperintense"
    return "hyperintense" if seq == "T1" else "hypointense"


def _count(clauses: list[_Clause]) -> int | None:
    for c in clauses:
        if not c.lesion:
            continue
        # Sizes are not counts ("25 x 20 x 18 mm lesion").
        text = _SIZE.sub(lambda m: " size " if re.search(_UNIT, m.group(0), re.I) else m.group(0), c.text)
        m = _COUNT_BRACKETED.search(text)
        if m and 2 <= int(m.group(1)) <= _MAX_STATED_COUNT:
            return int(m.group(1))
        m = _COUNT_EN.search(text)
        if m:
            word = m.group(1).lower()
            n = int(word) if word.isdigit() else _COUNT_WORDS[word]
            if n == 1 and m.group(3).lower().endswith(("es", "s")) and m.group(3).lower() not in ("focus", "mass"):
                n = 2
            if 0 < n < 50:
                return n
        m = _COUNT_ZH.search(text)
        if m:
            w = m.group(1)
            if w in ("多发", "多个", "数个"):
                return 2
            return int(w) if w.isdigit() else _CN_DIGITS[w]
        m = re.search(rf"\b({_PLURAL_LESIONS})\b", text, re.I)
        if m:
            return 2
    return None


def _pick_term(patterns, clauses: list[_Clause], only_lesion: bool, check_negation: bool = True) -> str | None:
    found: list[str] = []
    for c in clauses:
        if only_lesion and not c.lesion:
            continue
        for name, pat in patterns:
            for m in pat.finditer(c.text):
                if not check_negation:
                    pass  # the gland named in "no lesion in the right parotid" is still the gland
                elif _negated_before(c.text, m.start()) and not c.lesion:
                    continue
                elif re.search(r"(?:\b(?:not|without|no)\b|未|无|不)[^,;.。]{0,14}(?:involv|extend|累及|侵犯|达)[^,;.。]{0,16}$", c.text[: m.start()], re.I):
                    continue
                if name not in found:
                    found.append(name)
    return found[0] if len(found) == 1 else ("|".join(found) if found else None)


def region_in_text(text: str | None) -> str | None:
    """The one region (``parotid``, ``submandibular``, ``brain``) a free text names, else None.

    For DICOM descriptions and BodyPartExamined ("MRI BRAIN W/WO", "MR PAROTID", "BRAIN"): None
    when the text names none ("MR NECK", "HEAD") or several ("PAROTID / BRAIN").
    """
    if not text:
        return None
    found = {name for name, pat in _GLAND_PATTERNS if pat.search(text[:4096])}
    return found.pop() if len(found) == 1 else None


def parse_report(text: str) -> Findings:
    """Read the structured findings of a radiology report.

    Parameters
    ----------
    text
        Free report text, English or Chinese (simplified or traditional), findings and impression.

    Returns
    -------
    Findings
        ``present`` True (a lesion is described), False (the report states there is none, e.g.
        "no recurrence", "双侧腮腺未见异常"), None (nothing either way). ``size_mm`` is the
        largest diameter of the largest described lesion; ``dimensions_mm`` all its diameters,
        largest first. ``count`` is the number of lesions (``multiple``/``多发`` = 2, meaning
        "two or more", unless a bracketed number follows: "multiple small (approximately 35)
        lesions" = 35; a present lesion without a stated number counts 1, 2 when bilateral).
        ``signal`` maps "T1"/"T2" to "hypo"/"iso"/"hyper" and "enhancement" to
        "homogeneous"/"heterogeneous"/"rim"/"none"/"present". Never raises on any string.
    """
    f = Findings()
    if not text or not text.strip():
        return f
    t = _normalise(text)
    f.language = "zh" if _is_chinese(t) else "en"
    clauses = _split(t)
    node_sentence: set[int] = set()
    for c in clauses:
        _classify(c)
        # "左侧腮腺内见多个小淋巴结，短径均小于5mm": a size right after a lymph node in the same
        # sentence describes the node, not a lesion.
        if _NODE.search(c.text):
            node_sentence.add(c.sentence)
        elif c.lesion and c.sentence in node_sentence and not _LESION.search(c.text):
            c.lesion = False

    # Side context: the last side named earlier in the same sentence.
    lesion_sides: set[str] = set()
    negated: set[str] = set()
    context: dict[int, set[str]] = {}
    for c in clauses:
        sides = c.sides or context.get(c.sentence, set())
        if c.sides:
            context[c.sentence] = c.sides
        if c.lesion:
            lesion_sides |= sides
        elif c.negative:
            negated |= sides

    code, dx_offset, dx_history = _find_diagnosis(t, clauses)
    lesion_clauses = [c for c in clauses if c.lesion]
    f.present = True if lesion_clauses else (False if any(c.negative for c in clauses) else None)
    if f.present is False and code and not dx_history:
        # "consistent with Warthin tumour" in an impression whose findings say nothing positive.
        f.present = True
    if f.present:
        if not lesion_sides:
            positive_sides: set[str] = set()
            for c in clauses:
                if not c.negative and not c.history:
                    positive_sides |= c.sides
            lesion_sides = positive_sides
        if not lesion_sides:
            # "History of right parotidectomy. Now nodules in the surgical bed": the operated side.
            for c in clauses:
                if c.history and not c.negative:
                    lesion_sides |= c.sides
        if lesion_sides >= {"left", "right"}:
            f.side = "bilateral"
        elif lesion_sides:
            f.side = next(iter(lesion_sides))
        f.diagnosis = code
    f.negated_sides = sorted(negated - lesion_sides) if f.present else sorted(negated)

    # Gland: lesion clauses, then the diagnosis (glioma means brain), then any mention.
    gland = _pick_term(_GLAND_PATTERNS, clauses, only_lesion=True)
    if gland and "|" in gland:
        gland = gland.split("|")[0]
    if not gland and f.diagnosis == "glioma":
        gland = "brain"
    if not gland:
        gland = _pick_term(_GLAND_PATTERNS, clauses, only_lesion=False, check_negation=False)
        if gland and "|" in gland:
            gland = gland.split("|")[0]
    f.gland = gland

    if f.present:
        lobe = _pick_term(_LOBE_PATTERNS, clauses, only_lesion=True)
        if lobe is None:
            lobe = _pick_term(_LOBE_PATTERNS, [c for c in clauses if not c.negative], only_lesion=False)
        # A lesion in both lobes ("dumbbell", "superficial and deep") is not one lobe: None.
        f.lobe = lobe if lobe and "|" not in lobe else None

        groups: list[list[float]] = []
        for c in lesion_clauses:
            groups += _lesion_sizes(c.text)
        if not groups:
            for c in lesion_clauses:
                groups += _lesion_sizes(c.text, earlier=True)
        if groups:
            best = max(groups, key=lambda g: g[0])
            f.dimensions_mm = best
            f.size_mm = best[0]

        f.count = _count(clauses)
        if f.count is None:
            f.count = 2 if f.side == "bilateral" else 1

    # Margins and signal describe the lesion (ignored when the report describes none).
    if f.present:
        described = [c.text for c in clauses if not (c.negative and not c.lesion)]

        def stated(pat: re.Pattern[str]) -> bool:
            # "No invasion of the surrounding structures" / "未见浸润" is not an ill-defined margin;
            # the negation must be in the same clause.
            return any(
                not _negated_before(t, m.start()) or m.group(0).lower().startswith("not")
                for t in described
                for m in pat.finditer(t)
            )

        if stated(_MARGINS_ILL):
            f.margins = "ill_defined"
        elif stated(_MARGINS_WELL):
            f.margins = "well_defined"
        f.signal = _signal(clauses)

    # Hedging: a cue in the sentence holding the diagnosis, else in any lesion sentence.
    if f.present:
        if dx_offset is not None and f.diagnosis:
            sentence = next((c.sentence for c in clauses if c.start <= dx_offset < c.start + len(c.text)), None)
            sents = {sentence}
            if dx_history:
                # "Status post resection of glioblastoma. … concerning for progression": the
                # hedge is on the current lesion.
                sents |= {c.sentence for c in lesion_clauses}
            scope = [c.text for c in clauses if c.sentence in sents]
        else:
            sents = {c.sentence for c in lesion_clauses}
            scope = [c.text for c in clauses if c.sentence in sents]
        f.hedged = any(_HEDGE.search(s) for s in scope)
    return f


def report_hash(text: str, version: int | str | None = None) -> str:
    """sha256 (hex, 64 characters) identifying one version of one report text.

    The node stores this on the study; a different hash for the matched report means the report
    was amended. The text is hashed as UTF-8 after stripping trailing whitespace of each line
    (RIS exports differ in line endings), prefixed by the version.
    """
    norm = "\n".join(line.rstrip() for line in (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()
    h = hashlib.sha256()
    h.update(f"v={'' if version is None else version}\n".encode())
    h.update(norm.encode("utf-8"))
    return h.hexdigest()
