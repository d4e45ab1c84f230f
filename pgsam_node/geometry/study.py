"""A study's classified series -> channels on one reference grid.

Policy (documented in ``docs/geometry.md``):

* every role's series is loaded with :func:`load_series`; a role whose series cannot be used
  (``GeometryError``) is dropped with a note carrying the error's reason - the model tolerates a
  missing sequence - unless no role is left, which raises;
* the reference is the first role of ``settings.reference_roles`` that loaded; roles not named
  there still become channels;
* different FrameOfReferenceUIDs (or a missing one) between a role and the reference follow
  ``settings.frame_of_reference_policy``: ``drop`` (default) drops that role with a note
  ``frame_of_reference_mismatch`` (the model tolerates a missing sequence), ``refuse`` raises
  ``GeometryError(reason="frame_of_reference_mismatch")``, ``continue`` resamples by patient
  coordinates anyway and records a note (only sound when the scanner kept one patient
  coordinate system); when neither has a FrameOfReferenceUID, nothing says they differ: the
  role is resampled by position with a note ``frame_of_reference_unknown`` (``refuse`` still refuses);
* a role whose volume does not overlap the reference at all is dropped (``no_overlap``); partial
  coverage below 50 % of the reference voxels is noted (``partial_coverage``);
* a reference that is not axial (``settings.working_plane``, :mod:`pgsam_node.geometry.working`)
  gets an axial working grid over its field: every role is resampled onto that grid from its
  native grid (note ``axial_working_grid``), and :meth:`StudyVolumes.to_reference` brings the
  model's mask back onto the reference grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgsam_node.config import GeometrySettings
from pgsam_node.errors import GeometryError
from pgsam_node.geometry.load import load_series
from pgsam_node.geometry.resample import resample_to
from pgsam_node.geometry.volume import GeometryNote, Volume
from pgsam_node.geometry.working import axial_grid, plane_name, tilt_from_axial, to_reference

log = logging.getLogger(__name__)

#: Coverage of the reference grid below which a note is recorded.
PARTIAL_COVERAGE = 0.5


@dataclass
class StudyVolumes:
    """Channels of one study on the reference grid.

    Attributes
    ----------
    reference
        The reference series' volume (its ``affine``, ``sop_uids``, ``frame_numbers`` define the
        grid a SEG is written on).
    reference_role
        Role of the reference ("T1C", "T2" or "T1").
    channels
        role -> float32 ``(Z, Y, X)`` raw intensities (rescaled, not normalised) on :attr:`grid`
        (the reference grid, or the axial working grid); 0 where ``valid`` is False. Missing roles
        are absent.
    valid
        role -> bool ``(Z, Y, X)``: where that sequence has data.
    notes
        Every note of every loaded series (message prefixed with the role) and of the
        study-level checks.
    volumes
        role -> the source ``Volume`` as loaded (native grid).
    working
        The axial working grid the channels are on when the reference is not axial, else None.
    """

    reference: Volume
    reference_role: str
    channels: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[GeometryNote] = field(default_factory=list)
    volumes: dict[str, Volume] = field(default_factory=dict)
    working: Volume | None = None

    @property
    def roles(self) -> list[str]:
        """Roles present, in insertion order (reference first)."""
        return list(self.channels)

    @property
    def grid(self) -> Volume:
        """The grid the channels are on (its ``affine`` is the one the model is given)."""
        return self.working if self.working is not None else self.reference

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of :attr:`grid`."""
        return self.grid.shape

    def to_reference(self, mask: np.ndarray, prob: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """A mask (and probability) on :attr:`grid` -> the reference grid (unchanged when they are one)."""
        if self.working is None:
            return mask, prob
        return to_reference(mask, prob, self.working, self.reference)


def build_study_volumes(series_paths: dict[str, list[Path]], settings: GeometrySettings | None = None) -> StudyVolumes:
    """Load each role's series and resample every channel onto the reference grid.

    Parameters
    ----------
    series_paths
        role ("T1", "T2", "T1C") -> the files of that role's series. Empty lists count as absent.
    settings
        ``geometry`` section of the node settings (reference roles, frame-of-reference policy,
        spacing tolerance); defaults when omitted.

    Returns
    -------
    StudyVolumes
        ``channels[role]`` float32 ``(Z, Y, X)`` and ``valid[role]`` bool ``(Z, Y, X)`` on the
        reference grid.

    Raises
    ------
    GeometryError
        ``no_sequences`` when no role could be loaded (the reason of the first failure is in
        the message), ``frame_of_reference_mismatch`` under the ``refuse`` policy.
    """
    settings = settings or GeometrySettings()
    notes: list[GeometryNote] = []
    volumes: dict[str, Volume] = {}
    failures: list[GeometryError] = []
    for role, paths in series_paths.items():
        if not paths:
            continue
        try:
            # Images, not labels: MONOCHROME1 is inverted so the model sees what a viewer shows.
            vol = load_series(list(paths), spacing_tolerance=settings.spacing_tolerance, invert_monochrome1=True)
        except GeometryError as exc:
            log.warning("role %s dropped: %s (%s)", role, exc.reason, exc)
            notes.append(GeometryNote(exc.reason, f"{role}: series not usable, role dropped: {exc}"))
            failures.append(exc)
            continue
        volumes[role] = vol
        notes.extend(GeometryNote(n.code, f"{role}: {n.message}") for n in vol.warnings)
    if not volumes:
        if failures:
            raise GeometryError(
                f"no sequence could be loaded; first failure: {failures[0]}", reason=failures[0].reason
            )
        raise GeometryError("no sequence series given", reason="no_sequences")

    order = [r for r in settings.reference_roles if r in volumes] + [r for r in volumes if r not in settings.reference_roles]
    reference_role = order[0]
    reference = volumes[reference_role]
    working = None
    tilt = tilt_from_axial(reference)
    if settings.working_plane == "axial" and tilt > settings.axial_max_tilt_deg:
        working = axial_grid(reference, settings.working_slice_mm, settings.working_max_slices, settings.working_max_matrix)
        notes.append(GeometryNote(
            "axial_working_grid",
            f"reference {reference_role} is {plane_name(reference)} ({tilt:.0f} deg from axial); the model ran on an axial "
            f"grid of {'x'.join(str(n) for n in working.shape)} voxels of {working.spacing[1]:.2f} mm, "
            f"{working.spacing[0]:.1f} mm slices; the segmentation is written on the reference series"))
    target = working if working is not None else reference

    channels: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    field_of_reference: np.ndarray | None = None
    for role in order:
        vol = volumes[role]
        if role != reference_role:
            a, b = vol.frame_of_reference_uid, reference.frame_of_reference_uid
            if a is None and b is None and settings.frame_of_reference_policy != "refuse":
                # Nothing says they differ (an anonymiser that strips the UID strips it everywhere).
                notes.append(GeometryNote("frame_of_reference_unknown", f"{role} and the reference {reference_role} both lack "
                                          "FrameOfReferenceUID; resampled by patient position (one coordinate system assumed)"))
            elif a is None or b is None or a != b:
                what = "is missing" if (a is None or b is None) else "differs"
                msg = (
                    f"{role}: FrameOfReferenceUID {what} from the reference {reference_role}; patient "
                    "coordinates are not guaranteed to match (PS3.3 C.7.4.1.1.1)"
                )
                if settings.frame_of_reference_policy == "refuse":
                    raise GeometryError(msg, reason="frame_of_reference_mismatch")
                if settings.frame_of_reference_policy == "drop":
                    notes.append(GeometryNote("frame_of_reference_mismatch", msg + "; role dropped"))
                    continue
                notes.append(GeometryNote("frame_of_reference_mismatch", msg + "; resampled by position anyway"))
        values, mask = resample_to(vol, target)
        if field_of_reference is None:  # the reference comes first: its own field on the target grid
            field_of_reference = mask
        # Overlap and coverage are judged within the reference's field (all of it without a working grid).
        inside = int(field_of_reference.sum())
        coverage = float((mask & field_of_reference).sum()) / inside if inside else 0.0
        if coverage == 0.0:
            notes.append(GeometryNote("no_overlap", f"{role}: no overlap with the reference grid, role dropped"))
            continue
        if coverage < PARTIAL_COVERAGE:
            notes.append(GeometryNote("partial_coverage", f"{role}: covers {coverage:.0%} of the reference grid"))
        channels[role] = values
        valid[role] = mask
    log.info(
        "study volumes: reference %s shape %s roles %s notes %s",
        reference_role,
        reference.shape,
        list(channels),
        [n.code for n in notes],
    )
    return StudyVolumes(
        reference=reference,
        reference_role=reference_role,
        channels=channels,
        valid=valid,
        notes=notes,
        volumes=volumes,
        working=working,
    )
