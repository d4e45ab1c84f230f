"""Structured findings read from a radiology report, shared by the report parser and the model.

The parser (:mod:`pgsam_node.reports.parse`) fills :class:`Findings`; the model's prompt generator turns
it into a fixed-length vector with :func:`findings_vector`, next to the text embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SIDES = ("left", "right", "bilateral")
GLANDS = ("parotid", "submandibular", "brain")
LOBES = ("superficial", "deep")
#: Canonical diagnosis codes the parser emits (free-text variants map onto these).
DIAGNOSES = (
    "pleomorphic_adenoma",
    "warthin_tumour",
    "basal_cell_adenoma",
    "mucoepidermoid_carcinoma",
    "adenoid_cystic_carcinoma",
    "acinic_cell_carcinoma",
    "lymphoma",
    "metastasis",
    "glioma",
    "other",
)
MARGINS = ("well_defined", "ill_defined")
SIGNALS = ("hypo", "iso", "hyper")


@dataclass
class Findings:
    """What a report says about the target lesion.

    ``None`` means the report does not say. ``present`` is False when the report states there is
    no lesion (negation) and None when it says nothing either way.
    """

    present: bool | None = None
    side: str | None = None
    gland: str | None = None
    lobe: str | None = None
    size_mm: float | None = None
    #: Every diameter given for the main lesion, largest first (mm).
    dimensions_mm: list[float] = field(default_factory=list)
    count: int | None = None
    margins: str | None = None
    #: e.g. {"T1": "hypo", "T2": "hyper", "enhancement": "heterogeneous"}
    signal: dict[str, str] = field(default_factory=dict)
    diagnosis: str | None = None
    #: The diagnosis or finding is hedged ("likely", "suspicious for", "考虑", "可能").
    hedged: bool = False
    #: Sides the report explicitly calls normal / free of lesion.
    negated_sides: list[str] = field(default_factory=list)
    language: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Findings:
        if not d:
            return cls()
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _one_hot(value: str | None, choices: tuple[str, ...]) -> list[float]:
    # Last slot = unknown, so "not stated" is distinguishable from every stated value.
    out = [0.0] * (len(choices) + 1)
    out[choices.index(value) if value in choices else len(choices)] = 1.0
    return out


#: Length of :func:`findings_vector`.
FINDINGS_DIM = (len(SIDES) + 1) + (len(GLANDS) + 1) + (len(LOBES) + 1) + (len(DIAGNOSES) + 1) + (len(MARGINS) + 1) + 4


def findings_vector(f: Findings | None) -> list[float]:
    """Fixed-length numeric encoding of findings for the prompt generator (length FINDINGS_DIM).

    Layout: one-hot side, gland, lobe, diagnosis, margins (each with an 'unknown' slot), then
    size in cm (0 when unknown), size-known flag, hedged flag, present flag (1 yes, -1 no, 0 unknown).
    """
    f = f or Findings()
    size_cm = (f.size_mm or 0.0) / 10.0
    present = 0.0 if f.present is None else (1.0 if f.present else -1.0)
    vec = (
        _one_hot(f.side, SIDES)
        + _one_hot(f.gland, GLANDS)
        + _one_hot(f.lobe, LOBES)
        + _one_hot(f.diagnosis, DIAGNOSES)
        + _one_hot(f.margins, MARGINS)
        + [size_cm, 1.0 if f.size_mm else 0.0, 1.0 if f.hedged else 0.0, present]
    )
    assert len(vec) == FINDINGS_DIM
    return vec
