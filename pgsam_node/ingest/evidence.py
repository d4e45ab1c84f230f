"""Classification evidence: the small JSON-safe header dict kept per series (``Series.headers``).

Extracted by the index from the first instance of a series, so that assembly can classify the
series (and choose among candidates by fitness) when the study becomes STABLE, without re-reading
files. Interpretation lives in :mod:`pgsam_node.assemble.classify`; this module only reads.
"""

from __future__ import annotations

from typing import Any

#: Free-text headers searched by ``names`` conditions, in the order they are reported.
NAME_FIELDS = ("SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName", "StudyDescription")
_STR_FIELDS = (
    "StudyDescription", "SOPClassUID", "Modality", "SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName",
    "Manufacturer", "ManufacturerModelName", "MRAcquisitionType", "BodyPartExamined",
    "ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusIngredient", "ContrastBolusStartTime",
)
_LIST_FIELDS = ("ImageType", "ScanningSequence", "SequenceVariant", "ScanOptions")
#: Numeric multi-valued geometry (PS3.3 C.7.6.2): kept as float lists for the fitness ranking.
_VEC_FIELDS = ("PixelSpacing", "ImageOrientationPatient")
_NUM_FIELDS = (
    "Rows", "Columns", "SliceThickness", "SpacingBetweenSlices", "RepetitionTime", "EchoTime", "InversionTime",
    "FlipAngle", "DiffusionBValue", "MagneticFieldStrength",
    "ContrastBolusVolume", "ContrastBolusTotalDose", "ContrastBolusIngredientConcentration",
)
#: Tags :func:`classification_headers` reads: pass to ``dcmread(specific_tags=...)``.
HEADER_KEYWORDS = _STR_FIELDS + _LIST_FIELDS + _NUM_FIELDS + _VEC_FIELDS + (
    "ContrastBolusAgentSequence", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "EchoPulseSequence", "InversionRecovery", "FrameType",
)


# ---- header extraction ---------------------------------------------------------------------
def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _vec(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    items = value if (isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue") else [value]
    try:
        return [round(float(v), 6) for v in items]
    except (TypeError, ValueError):
        return []


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    s = str(value).strip()
    return s or None


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        return [str(v).strip().upper() for v in value if str(v).strip()]
    return [p.strip().upper() for p in str(value).split("\\") if p.strip()]


def _first_item(ds, *path: str):
    """Walk nested sequences (first item each) and return the last dataset, or None."""
    cur = ds
    for kw in path:
        seq = getattr(cur, kw, None) if cur is not None else None
        if not seq:
            return None
        cur = seq[0]
    return cur


def classification_headers(ds) -> dict[str, Any]:
    """The header evidence used for classification, as a JSON-safe dict.

    Parameters
    ----------
    ds : pydicom.Dataset
        Any instance of the series (the first one received); pixel data is not needed.

    Returns
    -------
    dict
        Keys from :data:`HEADER_KEYWORDS` that carry a value. Enhanced MR (PS3.3 C.8.13) keeps
        TR/TE/TI/b-value and frame type in functional groups; they are lifted to the classic
        keyword so that the rules need not care which IOD the series used.
    """
    out: dict[str, Any] = {}
    for kw in _STR_FIELDS:
        v = _text(ds.get(kw))
        if v is not None:
            out[kw] = v[:256]
    for kw in _LIST_FIELDS:
        v = _values(ds.get(kw))
        if v:
            out[kw] = v
    for kw in _NUM_FIELDS:
        v = _num(ds.get(kw))
        if v is not None:
            out[kw] = v
    for kw in _VEC_FIELDS:
        v = _vec(ds.get(kw))
        if v:
            out[kw] = v
    seq = ds.get("ContrastBolusAgentSequence")
    if seq:
        out["ContrastBolusAgentSequence"] = len(seq)
        if "ContrastBolusAgent" not in out:
            meaning = _text(getattr(seq[0], "CodeMeaning", None))
            if meaning:
                out["ContrastBolusAgent"] = meaning[:256]
    # Enhanced MR: PS3.3 C.8.13.5 functional groups (shared first, else first frame).
    for groups_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        fg = _first_item(ds, groups_kw)
        if fg is None:
            continue
        lifts = (
            ("RepetitionTime", ("MRTimingAndRelatedParametersSequence",), "RepetitionTime"),
            ("FlipAngle", ("MRTimingAndRelatedParametersSequence",), "FlipAngle"),
            ("EchoTime", ("MREchoSequence",), "EffectiveEchoTime"),
            ("InversionTime", ("MRModifierSequence",), "InversionTimes"),
            ("DiffusionBValue", ("MRDiffusionSequence",), "DiffusionBValue"),
        )
        for key, path, kw in lifts:
            item = _first_item(fg, *path)
            if key not in out and item is not None:
                v = _num(item.get(kw))
                if v is not None:
                    out[key] = v
        for key, path, kw in (("PixelSpacing", ("PixelMeasuresSequence",), "PixelSpacing"),
                              ("ImageOrientationPatient", ("PlaneOrientationSequence",), "ImageOrientationPatient")):
            item = _first_item(fg, *path)
            if key not in out and item is not None:
                v = _vec(item.get(kw))
                if v:
                    out[key] = v
        item = _first_item(fg, "PixelMeasuresSequence")
        if "SliceThickness" not in out and item is not None and _num(item.get("SliceThickness")) is not None:
            out["SliceThickness"] = _num(item.get("SliceThickness"))
        frame = _first_item(fg, "MRImageFrameTypeSequence")
        if frame is not None and "FrameType" in frame:
            types = _values(frame.FrameType)
            out["ImageType"] = sorted(set(out.get("ImageType", [])) | set(types), key=(out.get("ImageType", []) + types).index)
    # Enhanced MR: EchoPulseSequence / InversionRecovery replace ScanningSequence (C.8.13.4).
    if "ScanningSequence" not in out:
        scanning = []
        eps = _text(ds.get("EchoPulseSequence"))
        if eps:
            scanning += {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}.get(eps.upper(), [])
        if (_text(ds.get("InversionRecovery")) or "").upper() == "YES":
            scanning.append("IR")
        if scanning:
            out["ScanningSequence"] = scanning
    return out
