"""Study assembly: when is a study complete, and which series plays which role.

A study is *stable* when no instance has arrived for ``assembly.stable_seconds`` (DESIGN.md: the
release of an association is only a hint, because a PACS may send one study over several
associations, or several studies over one). At stability the series are re-classified from their
stored headers (rules may have changed since the first instance) and one series per role is
selected.

Choice when two or more series compete for a role (:func:`select_roles`): by fitness for the
task, first difference wins. The reference role (``geometry.reference_roles``) is chosen first and
the other roles are ranked against it:

1. ORIGINAL over DERIVED (ImageType value 1, PS3.3 C.7.6.1.1.2);
2. not reformatted (MPR, MIP, projection, SECONDARY);
3. in-plane resolution not coarse (pixel spacing at most 1.5x the finest candidate's);
4. acquisition plane (from ImageOrientationPatient) matches the reference series'; for the
   reference itself, axial (the plane the models see; docs/geometry.md, axial working grid);
5. slice coverage (instances x slice spacing) at least 80 % of the reference series';
6. finer in-plane pixel spacing (0.1 mm steps);
7. more instances (late tie-break: a complete acquisition beats a partial one);
8. higher SeriesNumber (the later acquisition); a series without SeriesNumber loses;
9. lower SeriesInstanceUID in string order (only to make the choice deterministic).

Calibration scans, B1/T1 maps and localisers never compete: classification makes them OTHER. The
ranking of every contested role is recorded in the study's notes (code ``series_ranking``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field


from pgsam_node.assemble.classify import classify_series, rules_for, shared_exam_values, stand_in_role
from pgsam_node.db.models import Study, StudyState
from pgsam_node.logsetup import uid_hash

log = logging.getLogger(__name__)

SEQUENCE_ROLES = ("T1", "T2", "T1C")


@dataclass
class Choice:
    """The selection for one role: the chosen series and why."""

    role: str
    series_uid: str
    reason: str
    competitors: list[str]
    #: One line per candidate, best first (recorded in the study's notes).
    ranking: list[str] = field(default_factory=list)


_REFORMAT_TYPES = {"MPR", "CPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "MNIP", "MINIP", "CURVED", "SECONDARY"}
_PLANES = ("sagittal", "coronal", "axial")


@dataclass
class Fitness:
    """What makes a candidate series fit to be a model input (from ``Series.headers``)."""

    derived: bool
    reformatted: bool
    plane: str | None
    pixel_mm: float | None
    coverage_mm: float | None
    instances: int
    series_number: int | None

    def describe(self) -> str:
        parts = ["DERIVED" if self.derived else "ORIGINAL"]
        if self.reformatted:
            parts.append("reformatted")
        parts.append(self.plane or "plane unknown")
        parts.append(f"{self.pixel_mm:.2f} mm in-plane" if self.pixel_mm else "in-plane unknown")
        parts.append(f"{self.coverage_mm:.0f} mm coverage" if self.coverage_mm else "coverage unknown")
        parts.append(f"{self.instances} instances")
        return ", ".join(parts)


def plane_of(iop) -> str | None:
    """Acquisition plane from ImageOrientationPatient (PS3.3 C.7.6.2.1.1): the normal's main axis."""
    if not iop or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    mags = [abs(v) for v in n]
    if max(mags) == 0:
        return None
    return _PLANES[mags.index(max(mags))]


def fitness(s) -> Fitness:
    """Fitness features of a series (objects with ``headers``, ``instance_count``, ``series_number``)."""
    h = getattr(s, "headers", None) or {}
    it = set(h.get("ImageType") or [])
    ps = h.get("PixelSpacing") or []
    pixel = max(ps[:2]) if len(ps) >= 2 and min(ps[:2]) > 0 else None
    n = int(s.instance_count or 0)
    step = h.get("SpacingBetweenSlices") or h.get("SliceThickness")
    coverage = step * n if step and n > 1 else None
    return Fitness("DERIVED" in it, bool(it & _REFORMAT_TYPES), plane_of(h.get("ImageOrientationPatient")),
                   pixel, coverage, n, s.series_number)


def _rank_key(s, f: Fitness, best_pixel: float | None, ref: Fitness | None) -> tuple:
    # Sort ascending, first difference wins (module docstring).
    coarse = bool(f.pixel_mm and best_pixel and f.pixel_mm > 1.5 * best_pixel)
    # The reference itself: axial, the plane every model sees (a coronal or sagittal reference is
    # resampled onto an axial working grid, pgsam_node.geometry.working).
    plane_off = bool(ref.plane and f.plane and f.plane != ref.plane) if ref else bool(f.plane and f.plane != "axial")
    short = bool(ref and ref.coverage_mm and f.coverage_mm and f.coverage_mm < 0.8 * ref.coverage_mm)
    return (f.derived, f.reformatted, coarse, plane_off, short, round(f.pixel_mm or 99.0, 1), -f.instances,
            0 if f.series_number is not None else 1, -(f.series_number or 0), s.series_uid)


_CRITERIA = ("ORIGINAL over DERIVED", "not reformatted", "in-plane resolution not coarse",
             "acquisition plane matches the reference (for the reference: axial)", "slice coverage matches the reference",
             "finer in-plane resolution", "more instances", "has a series number", "later series number",
             "lowest SeriesInstanceUID")


def select_roles(series: Iterable, reference_roles: Iterable[str] = ("T1C", "T2", "T1"),
                 stand_ins: dict[str, str] | None = None) -> dict[str, Choice]:
    """Choose one series per role (T1, T2, T1C) by fitness, deterministically.

    The reference role (first of ``reference_roles`` with a candidate) is chosen first; the
    others are then ranked against it (plane and slice coverage). Instance count is a late
    tie-break only.

    Parameters
    ----------
    series
        Objects with ``series_uid``, ``role``, ``instance_count``, ``series_number`` and
        ``headers`` (e.g. :class:`~pgsam_node.db.Series` rows).
    reference_roles
        ``geometry.reference_roles``.
    stand_ins
        series UID -> the role that (OTHER) series may fill when no series has that role
        (:func:`~pgsam_node.assemble.classify.stand_in_role`); ranked like the role's own series.

    Returns
    -------
    dict
        Role -> :class:`Choice`; roles without a candidate are absent.
    """
    series = list(series)
    by_role: dict[str, list] = {}
    for s in series:
        if s.role in SEQUENCE_ROLES:
            by_role.setdefault(s.role, []).append(s)
    standing_in: set[str] = set()
    present = {s.role for s in series}
    for s in series:
        role = (stand_ins or {}).get(s.series_uid)
        if role in SEQUENCE_ROLES and role not in present and s.role not in SEQUENCE_ROLES:
            by_role.setdefault(role, []).append(s)
            standing_in.add(role)
    order = [r for r in reference_roles if r in by_role] + [r for r in SEQUENCE_ROLES if r in by_role and r not in reference_roles]
    out: dict[str, Choice] = {}
    ref: Fitness | None = None
    for role in order:
        cands = by_role[role]
        fits = {c.series_uid: fitness(c) for c in cands}
        pixels = [f.pixel_mm for f in fits.values() if f.pixel_mm]
        best_pixel = min(pixels) if pixels else None
        keys = {c.series_uid: _rank_key(c, fits[c.series_uid], best_pixel, ref) for c in cands}
        ranked = sorted(cands, key=lambda c: keys[c.series_uid])
        best = ranked[0]
        if len(ranked) == 1:
            why = "only candidate"
        else:
            a, b = keys[best.series_uid], keys[ranked[1].series_uid]
            i = next(k for k in range(len(a)) if a[k] != b[k])
            fa, fb = fits[best.series_uid], fits[ranked[1].series_uid]
            detail = {5: f" ({fa.pixel_mm} vs {fb.pixel_mm} mm)", 6: f" ({fa.instances} vs {fb.instances})",
                      8: f" ({fa.series_number} vs {fb.series_number})"}.get(i, "")
            why = f"chosen among {len(ranked)}: {_CRITERIA[i]}{detail}"
            if i == 6:
                why = f"chosen among {len(ranked)}: most instances ({fa.instances} vs {fb.instances})"
            elif i == 8:
                why = f"chosen among {len(ranked)}: later series number ({fa.series_number} vs {fb.series_number})"
            elif i == 9:
                why = f"chosen among {len(ranked)}: lowest SeriesInstanceUID (equal instances and series number)"
        if role in standing_in:
            why = f"no {role} series: stands in for {role} ({why})"
        lines = [f"#{c.series_number if c.series_number is not None else '-'} {uid_hash(c.series_uid)} "
                 f"({fits[c.series_uid].describe()})" for c in ranked]
        out[role] = Choice(role, best.series_uid, why, [c.series_uid for c in ranked[1:]], lines)
        if ref is None:
            ref = fits[best.series_uid]
    return out


def apply_roles(study: Study, settings) -> dict[str, Choice]:
    """Re-classify every series of ``study`` from its stored headers and mark the selection.

    Updates ``role``, ``role_reason`` and ``role_selected`` in place (caller's transaction).
    """
    rules = rules_for(settings)
    shared = shared_exam_values([dict(s.headers or {}) for s in study.series], rules)
    for s in study.series:
        headers = dict(s.headers or {})
        if headers:
            role, reason = classify_series(headers, rules, shared)
            if role != s.role:
                log.info("series %s re-classified %s -> %s", uid_hash(s.series_uid), s.role, role)
            s.role, s.role_reason = role, reason
    stand_ins = {s.series_uid: r for s in study.series if s.role == "OTHER" and s.headers
                 and (r := stand_in_role(dict(s.headers), rules, shared)) is not None}
    choices = select_roles(study.series, settings.geometry.reference_roles, stand_ins)
    notes = [n for n in (study.notes or []) if not (isinstance(n, dict) and n.get("code") == "series_ranking")]
    for c in choices.values():
        if len(c.ranking) > 1:
            notes.append({"code": "series_ranking", "role": c.role,
                          "message": f"{c.role}: " + " > ".join(c.ranking) + f" ({c.reason})"})
    study.notes = notes
    chosen = {c.series_uid: c for c in choices.values()}
    for s in study.series:
        c = chosen.get(s.series_uid)
        base = (s.role_reason or "").split(" | selection: ")[0]
        if c is not None:
            if s.role != c.role:  # an OTHER series standing in for a missing role
                base = f"{c.role} (stands in): {base}"
                s.role = c.role
            s.role_selected = True
            s.role_reason = f"{base} | selection: selected for {c.role}, {c.reason}"
        else:
            s.role_selected = False
            if s.role in SEQUENCE_ROLES:
                winner = choices[s.role].series_uid
                s.role_reason = f"{base} | selection: not selected, {s.role} taken by series {uid_hash(winner)} ({choices[s.role].reason})"
            else:
                s.role_reason = base
    return choices


def settle(study: Study, settings, now: dt.datetime) -> str | None:
    """Whether a RECEIVING study is complete: no instance for ``assembly.stable_seconds``.

    When it is, its series are re-classified and one per role selected (:func:`apply_roles`) and the
    reason for STABLE is returned; None otherwise. The caller holds the study row (and the ingest
    writer lock) so no instance commits between this check and its state change (``flow.advance``).
    """
    quiet = (now - study.last_instance_at).total_seconds()
    if study.state != StudyState.RECEIVING.value or quiet < settings.assembly.stable_seconds:
        return None
    choices = apply_roles(study, settings)
    roles = ", ".join(f"{r}={'yes' if r in choices else 'missing'}" for r in SEQUENCE_ROLES)
    return f"no instance for {quiet:.0f} s (stable_seconds={settings.assembly.stable_seconds:g}); {roles}"
