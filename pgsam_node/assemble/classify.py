"""Sequence roles (T1, T2, T1C, OTHER) from a series' header evidence.

The rules are data (``config/sequences.yaml``, packaged as ``pgsam_node/resources/sequences.yaml``);
this module only extracts the headers and evaluates the rules. See the YAML file for the rule
language and the order of evaluation. Everything here is pure: :func:`classification_headers`
turns a pydicom dataset into a small JSON-safe dict (stored as ``Series.headers`` so that a series
can be re-classified without its files) and :func:`classify_series` maps that dict to a role.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import yaml

from pgsam_node.errors import ClassifyError
from pgsam_node.ingest.evidence import HEADER_KEYWORDS, NAME_FIELDS, classification_headers  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

ROLES = ("T1", "T2", "T1C", "OTHER")

# ---- rules ------------------------------------------------------------------------------------
@dataclass
class _Cond:
    kind: str
    arg: Any


@dataclass
class Rule:
    id: str
    role: str
    reason: str
    when: _Cond
    #: A model role a series of this rule fills when the study has no series of that role
    #: (``stands_in_for`` in sequences.yaml; e.g. STIR for a missing T2).
    stands_in_for: str | None = None


@dataclass
class Rules:
    """Compiled classification rules (see ``sequences.yaml``)."""

    source: str
    mr_image_sop_classes: list[str]
    rules: list[Rule]
    contrast_applies_to: set[str]
    negative_names: list[re.Pattern]
    positive_names: list[re.Pattern]
    header_fields: list[str]
    header_empty_values: set[str]
    notes: list[tuple[str, str, _Cond]] = field(default_factory=list)
    #: Free-text fields that always name the whole exam (never series evidence).
    exam_fields: list[str] = field(default_factory=lambda: ["StudyDescription"])
    #: Fields that name the series on some consoles and the exam on others (see sequences.yaml).
    maybe_exam_fields: list[str] = field(default_factory=lambda: ["ProtocolName"])
    #: Manufacturers whose consoles write the exam protocol into ``maybe_exam_fields``.
    exam_manufacturers: list[re.Pattern] = field(default_factory=list)


_COND_KEYS = {
    "names", "fields", "image_type", "scanning_sequence", "sequence_variant", "scan_options", "range",
    "sop_class_not_in", "contrast_header", "any", "all", "not",
}


def _compile_regexes(patterns: Any, where: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list):
        raise ClassifyError(f"{where}: expected a list of regular expressions")
    out = []
    for p in patterns:
        try:
            out.append(re.compile(str(p), re.IGNORECASE))
        except re.error as exc:
            raise ClassifyError(f"{where}: invalid regular expression {p!r}: {exc}") from None
    return out


def _compile_cond(spec: Any, where: str, variables: dict[str, Any]) -> _Cond:
    if not isinstance(spec, dict) or not spec:
        raise ClassifyError(f"{where}: a condition must be a non-empty mapping")
    parts = []
    for key, val in spec.items():
        if key not in _COND_KEYS:
            raise ClassifyError(f"{where}: unknown condition {key!r} (known: {', '.join(sorted(_COND_KEYS))})")
        if isinstance(val, str) and val.startswith("$"):
            if val[1:] not in variables:
                raise ClassifyError(f"{where}: unknown variable {val}")
            val = variables[val[1:]]
        w = f"{where}.{key}"
        if key == "names":
            parts.append(_Cond("names", _compile_regexes(val, w)))
        elif key == "fields":
            if not isinstance(val, dict):
                raise ClassifyError(f"{w}: expected a mapping of header keyword to regexes")
            parts.append(_Cond("fields", {k: _compile_regexes(v, f"{w}.{k}") for k, v in val.items()}))
        elif key in ("image_type", "scanning_sequence", "sequence_variant", "scan_options"):
            if not isinstance(val, list):
                raise ClassifyError(f"{w}: expected a list of values")
            parts.append(_Cond(key, {str(v).strip().upper() for v in val}))
        elif key == "range":
            if not isinstance(val, dict):
                raise ClassifyError(f"{w}: expected {{Keyword: [min, max]}}")
            rng = {}
            for k, lim in val.items():
                if not isinstance(lim, list) or len(lim) != 2:
                    raise ClassifyError(f"{w}.{k}: expected [min, max] (null for an open end)")
                rng[k] = (None if lim[0] is None else float(lim[0]), None if lim[1] is None else float(lim[1]))
            parts.append(_Cond("range", rng))
        elif key == "sop_class_not_in":
            parts.append(_Cond(key, {str(v) for v in val}))
        elif key == "contrast_header":
            parts.append(_Cond(key, bool(val)))
        elif key in ("any", "all"):
            if not isinstance(val, list) or not val:
                raise ClassifyError(f"{w}: expected a non-empty list of conditions")
            parts.append(_Cond(key, [_compile_cond(c, f"{w}[{i}]", variables) for i, c in enumerate(val)]))
        elif key == "not":
            parts.append(_Cond("not", _compile_cond(val, w, variables)))
    return parts[0] if len(parts) == 1 else _Cond("all", parts)


def parse_rules(data: Any, source: str = "<rules>") -> Rules:
    """Validate and compile a rules mapping (the parsed YAML).

    Raises
    ------
    ClassifyError
        The rules are malformed; the message names the rule and key.
    """
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ClassifyError(f"{source}: expected a mapping with a 'rules' list")
    variables = {k: v for k, v in data.items() if k not in ("rules", "contrast", "notes", "field_levels")}
    rules = []
    seen = set()
    for i, r in enumerate(data["rules"]):
        where = f"{source}: rules[{i}]"
        if not isinstance(r, dict) or "id" not in r or "role" not in r or "when" not in r:
            raise ClassifyError(f"{where}: each rule needs id, role and when")
        where = f"{source}: rule {r['id']}"
        if r["id"] in seen:
            raise ClassifyError(f"{where}: duplicate id")
        seen.add(r["id"])
        if r["role"] not in ("T1", "T2", "OTHER"):
            raise ClassifyError(f"{where}: role must be T1, T2 or OTHER (T1C comes from the contrast stage)")
        stand_in = r.get("stands_in_for")
        if stand_in is not None and (r["role"] != "OTHER" or stand_in not in ("T1", "T2")):
            raise ClassifyError(f"{where}: stands_in_for (T1 or T2) is for an OTHER rule only")
        rules.append(Rule(str(r["id"]), r["role"], str(r.get("reason", r["id"])), _compile_cond(r["when"], where, variables),
                          stands_in_for=stand_in))
    c = data.get("contrast") or {}
    levels = data.get("field_levels") or {}
    if not isinstance(levels, dict):
        raise ClassifyError(f"{source}: field_levels must be a mapping")
    notes = []
    for i, n in enumerate(data.get("notes") or []):
        where = f"{source}: notes[{i}]"
        if not isinstance(n, dict) or "when" not in n:
            raise ClassifyError(f"{where}: each note needs id, note and when")
        notes.append((str(n.get("id", i)), str(n.get("note", n.get("id", ""))), _compile_cond(n["when"], where, variables)))
    return Rules(
        source=source,
        mr_image_sop_classes=[str(u) for u in data.get("mr_image_sop_classes", [])],
        rules=rules,
        contrast_applies_to=set(c.get("applies_to", ["T1"])),
        negative_names=_compile_regexes(c.get("negative_names", []), f"{source}: contrast.negative_names"),
        positive_names=_compile_regexes(c.get("positive_names", []), f"{source}: contrast.positive_names"),
        header_fields=[str(f) for f in c.get("header_fields", [])],
        header_empty_values={str(v).strip().lower() for v in c.get("header_empty_values", [""])},
        notes=notes,
        exam_fields=[str(f) for f in levels.get("exam", ["StudyDescription"])],
        maybe_exam_fields=[str(f) for f in levels.get("exam_when_shared", ["ProtocolName"])],
        exam_manufacturers=_compile_regexes(levels.get("exam_manufacturers", []), f"{source}: field_levels.exam_manufacturers"),
    )


def default_rules_path() -> Path:
    """The packaged ``sequences.yaml`` (same file as ``config/sequences.yaml`` in a checkout)."""
    return Path(str(resources.files("pgsam_node") / "resources" / "sequences.yaml"))


_cache: dict[tuple[str, float], Rules] = {}
_cache_lock = threading.Lock()


def load_rules(path: str | Path | None = None) -> Rules:
    """Load (and cache, keyed by path and modification time) the rules file.

    Parameters
    ----------
    path
        YAML file; None = :func:`default_rules_path` (what ``classify.rules_file: null`` means).
    """
    p = Path(path) if path else default_rules_path()
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise ClassifyError(f"cannot read sequence rules {p}: {exc.strerror}") from None
    key = (str(p), mtime)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClassifyError(f"cannot load sequence rules {p}: {exc}") from None
    rules = parse_rules(data, str(p))
    with _cache_lock:
        _cache[key] = rules
    return rules


def rules_for(settings) -> Rules:
    """Rules named by ``settings.classify.rules_file`` (None = packaged default)."""
    return load_rules(settings.classify.rules_file)


# ---- evaluation -------------------------------------------------------------------------------
def _name_texts(h: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f, str(h[f]).lower()) for f in NAME_FIELDS if h.get(f)]


def _search_names(patterns: list[re.Pattern], h: dict[str, Any]) -> str | None:
    for fld, text in _name_texts(h):
        for p in patterns:
            m = p.search(text)
            if m:
                return f"'{m.group(0).strip()}' in {fld}"
    return None


def _contrast_header(h: dict[str, Any], rules: Rules) -> str | None:
    for f in rules.header_fields:
        v = h.get(f)
        if v is None:
            continue
        if isinstance(v, (int, float)):
            if v > 0:
                return f"{f}={v:g}" if isinstance(v, float) else f"{f} ({v} item(s))"
            continue
        if str(v).strip().lower() not in rules.header_empty_values:
            return f"{f} present"
    return None


def _eval(c: _Cond, h: dict[str, Any], rules: Rules) -> str | None:
    """Evaluate a condition; return a short evidence string when it holds, else None."""
    k = c.kind
    if k == "names":
        return _search_names(c.arg, h)
    if k == "fields":
        for fld, pats in c.arg.items():
            text = str(h.get(fld, "")).lower()
            for p in pats:
                m = p.search(text) if text else None
                if m:
                    return f"{m.group(0)!r} in {fld}"
        return None
    if k in ("image_type", "scanning_sequence", "sequence_variant", "scan_options"):
        kw = {"image_type": "ImageType", "scanning_sequence": "ScanningSequence",
              "sequence_variant": "SequenceVariant", "scan_options": "ScanOptions"}[k]
        hit = [v for v in h.get(kw, []) if v in c.arg]
        return f"{kw} {'/'.join(hit)}" if hit else None
    if k == "range":
        ev = []
        for fld, (lo, hi) in c.arg.items():
            v = h.get(fld)
            if not isinstance(v, (int, float)):
                return None
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return None
            ev.append(f"{fld}={v:g}")
        return ", ".join(ev)
    if k == "sop_class_not_in":
        uid = h.get("SOPClassUID")
        if uid in c.arg:
            return None
        return f"SOP class {_sop_name(uid)}"
    if k == "contrast_header":
        ev = _contrast_header(h, rules)
        return ev if bool(ev) == c.arg else None
    if k == "all":
        evs = []
        for sub in c.arg:
            e = _eval(sub, h, rules)
            if e is None:
                return None
            if e:
                evs.append(e)
        return "; ".join(evs)
    if k == "any":
        for sub in c.arg:
            e = _eval(sub, h, rules)
            if e is not None:
                return e
        return None
    if k == "not":
        return "" if _eval(c.arg, h, rules) is None else None
    raise ClassifyError(f"unknown condition kind {k}")  # guarded by parse_rules


def _sop_name(uid: str | None) -> str:
    if not uid:
        return "missing"
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        return f"{name} ({uid})" if name and name != uid else uid
    except Exception:  # noqa: BLE001 - a name is only decoration
        return uid


def shared_exam_values(series_headers: Iterable[dict[str, Any]], rules: Rules | None = None) -> dict[str, set[str]]:
    """Values of the ``field_levels.exam_when_shared`` fields that name the exam, not a series.

    A ProtocolName carried unchanged by two MR image series whose SeriesDescriptions differ names
    the session it was run under (GE: the exam protocol, e.g. "Brain - RCBV", in every series),
    not what either series is. Siemens and Philips write the protocol step instead, which differs
    per series (PS3.3 C.7.3.1: Protocol Name is a Series-module attribute, but its content is the
    console's choice).

    Parameters
    ----------
    series_headers
        ``Series.headers`` of every series of one study.

    Returns
    -------
    dict
        Field -> lower-cased values judged exam-level in this study.
    """
    rules = rules or load_rules()
    seen: dict[str, dict[str, set[str]]] = {f: {} for f in rules.maybe_exam_fields}
    for h in series_headers:
        if h.get("SOPClassUID") and h.get("SOPClassUID") not in rules.mr_image_sop_classes:
            continue
        desc = str(h.get("SeriesDescription") or "").strip().lower()
        for f in rules.maybe_exam_fields:
            v = str(h.get(f) or "").strip().lower()
            if v:
                seen[f].setdefault(v, set()).add(desc)
    return {f: {v for v, descs in vals.items() if len(descs) >= 2} for f, vals in seen.items()}


def exam_level_fields(headers: dict[str, Any], rules: Rules, shared: dict[str, set[str]] | None = None) -> dict[str, str]:
    """Free-text fields of ``headers`` that name the exam, with why (field -> explanation)."""
    out = {f: "names the exam" for f in rules.exam_fields if headers.get(f)}
    manu = str(headers.get("Manufacturer") or "").lower()
    for f in rules.maybe_exam_fields:
        v = str(headers.get(f) or "").strip().lower()
        if not v:
            continue
        if shared and v in shared.get(f, set()):
            out[f] = "shared by series with different descriptions: the exam's protocol"
        elif manu and any(p.search(manu) for p in rules.exam_manufacturers):
            out[f] = f"{headers.get('Manufacturer')} writes the exam protocol here"
    return out


def _first_rule(rules: Rules, h: dict[str, Any]) -> tuple[Rule | None, str | None]:
    for rule in rules.rules:
        ev = _eval(rule.when, h, rules)
        if ev is not None:
            return rule, ev
    return None, None


def stand_in_role(headers: dict[str, Any], rules: Rules | None = None, shared: dict[str, set[str]] | None = None) -> str | None:
    """The model role an OTHER series may fill when its study has none of that role: the
    ``stands_in_for`` of the rule that classified it (on series-level evidence, as
    :func:`classify_series` judges), else None."""
    rules = rules or load_rules()
    exam = exam_level_fields(headers, rules, shared)
    rule, _ = _first_rule(rules, {k: v for k, v in headers.items() if k not in exam})
    return rule.stands_in_for if rule is not None and rule.role == "OTHER" else None


def classify_series(headers: dict[str, Any], rules: Rules | None = None,
                    shared: dict[str, set[str]] | None = None) -> tuple[str, str]:
    """Role of a series from its classification headers.

    Evidence is ranked by field level: SeriesDescription, SequenceName, ImageType, the contrast
    tags and TR/TE/TI describe this series; StudyDescription, and ProtocolName where it names the
    exam (:func:`exam_level_fields`), describe the session. Rules are evaluated on the series-level
    evidence only; a rule that would have matched only through an exam-level field is reported in
    the reason as the weaker evidence that lost, and never decides the role or the contrast.

    Parameters
    ----------
    headers
        From :func:`classification_headers` (``Series.headers``).
    rules
        Compiled rules; None = the packaged default.
    shared
        From :func:`shared_exam_values` over the whole study (None: judge the series alone).

    Returns
    -------
    (role, reason)
        ``role`` in ``T1``, ``T2``, ``T1C``, ``OTHER``; ``reason`` names the rule that fired and
        the evidence, e.g. ``"T1C: rule t1_name (T1 named in the protocol: 't1' in
        SeriesDescription); post-contrast: ContrastBolusAgent present"``.
    """
    rules = rules or load_rules()
    exam = exam_level_fields(headers, rules, shared)
    series_view = {k: v for k, v in headers.items() if k not in exam}
    role, reason = "OTHER", "no rule identified the weighting"
    rule, ev = _first_rule(rules, series_view)
    if rule is not None:
        role = rule.role
        reason = f"rule {rule.id} ({rule.reason}" + (f": {ev})" if ev else ")")
    if exam:
        loser, lev = _first_rule(rules, headers)
        if loser is not None and loser is not rule:
            why = "; ".join(f"{f} {exp}" for f, exp in exam.items())
            reason += (f"; weaker evidence lost: rule {loser.id} matched only exam-level text"
                       + (f" ({lev})" if lev else "") + f" [{why}]")
    if role in rules.contrast_applies_to:
        neg = _search_names(rules.negative_names, series_view)
        pos = None if neg else _search_names(rules.positive_names, series_view)
        hdr = None if neg else _contrast_header(headers, rules)
        if neg:
            reason += f"; pre-contrast wording ({neg})"
            if _contrast_header(headers, rules):
                reason += " overrides the contrast header"
        elif pos:
            role = "T1C"
            reason += f"; post-contrast wording ({pos})"
        elif hdr:
            role = "T1C"
            reason += f"; post-contrast header ({hdr})"
        else:
            reason += "; no contrast evidence"
        if exam and not neg:
            ex_neg = _search_names(rules.negative_names, headers)
            ex_pos = None if ex_neg else _search_names(rules.positive_names, headers)
            if (ex_neg or ex_pos) and (ex_neg or ex_pos) not in (pos, neg):
                reason += f"; exam-level contrast wording ignored ({ex_neg or ex_pos})"
    if role != "OTHER":
        for _id, note, cond in rules.notes:
            ev = _eval(cond, series_view, rules)
            if ev is not None:
                reason += f"; {note} ({ev})"
    return role, f"{role}: {reason}"
