"""The ``Volume`` dataclass: voxels plus a geometry that can be written back into DICOM.

Conventions (used by every module of the node):

* ``array`` is float32 shaped ``(Z, Y, X)`` = (slice, row, column). ``array[k, j, i]`` is the pixel
  in row ``j``, column ``i`` of slice ``k``.
* ``affine`` is a 4 x 4 float64 matrix mapping the voxel index vector ``(i, j, k, 1)`` =
  (column, row, slice, 1) to patient coordinates in millimetres, in the DICOM patient coordinate
  system LPS (+x towards the patient's Left, +y Posterior, +z Head; PS3.3 C.7.6.2.1.1):

  - ``affine[:3, 0]`` = ImageOrientationPatient[0:3] * column spacing (PixelSpacing[1]) - the
    direction of increasing column index;
  - ``affine[:3, 1]`` = ImageOrientationPatient[3:6] * row spacing (PixelSpacing[0]) - the direction
    of increasing row index;
  - ``affine[:3, 2]`` = the measured step between consecutive slices (ImagePositionPatient of
    slice k+1 minus that of slice k). Slices are ordered by ascending position along the normal
    ``row_dir x col_dir`` so for an untilted stack the affine is right-handed (det > 0). For a
    gantry-tilt-like stack this column is not parallel to the normal (a sheared affine); the
    loader records a ``gantry_tilt`` note.
  - ``affine[:3, 3]`` = ImagePositionPatient of slice 0 (centre of its first transmitted pixel).

* ``spacing`` is ``(z, y, x)`` in mm: (norm of the slice step, PixelSpacing[0] between rows,
  PixelSpacing[1] between columns).
* ``sop_uids[k]``, ``frame_numbers[k]`` and ``paths[k]`` identify the source of slice ``k``:
  SOP Instance UID, 1-based frame number inside an Enhanced multi-frame object (``None`` for a
  single-frame instance), and the file it was read from. A DICOM SEG that references its source
  frames uses exactly these (PS3.3 C.8.20.2 / C.7.6.16.2.6 Derivation Image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GeometryNote:
    """Something about a series' geometry worth recording (not necessarily fatal).

    ``code`` is a short machine-readable reason (see ``docs/geometry.md`` for the list) and
    ``message`` a human-readable explanation without patient data.
    """

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class Volume:
    """One series as a 3-D volume with its patient-space geometry.

    Attributes
    ----------
    array
        float32 ``(Z, Y, X)`` = (slice, row, column); rescale slope/intercept already applied.
    affine
        float64 ``(4, 4)``: ``(i, j, k, 1)`` = (column, row, slice, 1) -> patient LPS mm.
    spacing
        ``(z, y, x)`` voxel spacing in mm.
    series_uid
        SeriesInstanceUID of the source series.
    frame_of_reference_uid
        FrameOfReferenceUID (``None`` when the source has none).
    sop_uids
        One SOP Instance UID per slice, in slice order (length Z).
    frame_numbers
        One entry per slice: 1-based frame number in an Enhanced multi-frame object, or ``None``
        for a single-frame instance (length Z).
    paths
        File each slice came from (length Z).
    warnings
        Notes recorded while loading (non-fatal geometry findings).
    slice_thickness
        Nominal SliceThickness in mm when the source gives one.
    sop_class_uid
        SOP Class UID of the source instances (first slice).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_uids: list[str] = field(default_factory=list)
    frame_numbers: list[int | None] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    warnings: list[GeometryNote] = field(default_factory=list)
    slice_thickness: float | None = None
    sop_class_uid: str | None = None

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be (Z, Y, X), got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {self.affine.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]

    # ------------------------------------------------------------------ geometry helpers
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def row_direction(self) -> np.ndarray:
        """Unit vector of increasing column index (ImageOrientationPatient[0:3])."""
        v = self.affine[:3, 0]
        return v / np.linalg.norm(v)

    @property
    def column_direction(self) -> np.ndarray:
        """Unit vector of increasing row index (ImageOrientationPatient[3:6])."""
        v = self.affine[:3, 1]
        return v / np.linalg.norm(v)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row_direction x column_direction``."""
        n = np.cross(self.row_direction, self.column_direction)
        return n / np.linalg.norm(n)

    @property
    def image_orientation(self) -> list[float]:
        """ImageOrientationPatient (6 values) of every slice."""
        return [float(v) for v in np.concatenate([self.row_direction, self.column_direction])]

    def slice_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient (LPS mm, shape (3,)) of slice ``k``."""
        return self.affine[:3, 3] + k * self.affine[:3, 2]

    def index_to_lps(self, points: np.ndarray) -> np.ndarray:
        """Voxel indices to patient LPS coordinates.

        Parameters
        ----------
        points
            ``(N, 3)`` or ``(3,)`` array of (i, j, k) = (column, row, slice) indices; fractional
            indices are allowed (0 = centre of the first voxel).

        Returns
        -------
        numpy.ndarray
            Same leading shape, ``(..., 3)`` LPS mm (float64).
        """
        p = np.asarray(points, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Patient LPS coordinates to fractional voxel indices (i, j, k) = (column, row, slice).

        Parameters
        ----------
        points
            ``(N, 3)`` or ``(3,)`` LPS mm.

        Returns
        -------
        numpy.ndarray
            ``(..., 3)`` float64 (i, j, k); round to get the nearest voxel, and index the array
            as ``array[k, j, i]``.
        """
        p = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def same_grid(self, other: Volume, tol_voxels: float = 0.01) -> bool:
        """True when ``other`` has the same shape and its voxel centres coincide with ours.

        The test compares the patient positions of the 8 corner voxels; the largest displacement
        must be below ``tol_voxels`` of our smallest spacing (rounded header values such as a
        6-decimal ImageOrientationPatient still count as the same grid).
        """
        if self.shape != other.shape:
            return False
        z, y, x = self.shape
        corners = np.array([[i, j, k] for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)], dtype=np.float64)
        d = np.linalg.norm(self.index_to_lps(corners) - other.index_to_lps(corners), axis=1).max()
        return bool(d <= tol_voxels * min(self.spacing))

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid with other voxels (e.g. a predicted mask).

        ``array`` must be ``(Z, Y, X)`` = ``self.shape``; geometry, UIDs, per-slice references
        and notes are shared (copied lists), so the result can be encoded against the same
        source frames.
        """
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.shape}")
        return Volume(
            array=array,
            affine=self.affine.copy(),
            spacing=self.spacing,
            series_uid=self.series_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            sop_uids=list(self.sop_uids),
            frame_numbers=list(self.frame_numbers),
            paths=list(self.paths),
            warnings=list(self.warnings),
            slice_thickness=self.slice_thickness,
            sop_class_uid=self.sop_class_uid,
        )

    def geometry_summary(self) -> dict:
        """JSON-ready description of the grid (no UIDs, no patient data) for run records/logs."""
        return {
            "shape_zyx": list(self.shape),
            "spacing_zyx_mm": [round(s, 6) for s in self.spacing],
            "image_orientation": [round(v, 8) for v in self.image_orientation],
            "origin_lps_mm": [round(float(v), 4) for v in self.affine[:3, 3]],
            "slice_step_mm": [round(float(v), 6) for v in self.affine[:3, 2]],
            "notes": [n.code for n in self.warnings],
        }

    def __repr__(self) -> str:  # arrays are large: keep repr short
        return (
            f"Volume(shape={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"series_uid={self.series_uid!r}, warnings={[n.code for n in self.warnings]})"
        )


def affine_from_dicom(
    image_orientation: np.ndarray | list[float],
    first_position: np.ndarray | list[float],
    pixel_spacing: tuple[float, float] | list[float],
    slice_step: np.ndarray | list[float],
) -> np.ndarray:
    """Build the 4 x 4 voxel-to-LPS affine from DICOM plane attributes.

    Parameters
    ----------
    image_orientation
        ImageOrientationPatient, 6 values: row direction (increasing column index) then column
        direction (increasing row index); normalised here.
    first_position
        ImagePositionPatient of slice 0 (3 values, mm).
    pixel_spacing
        PixelSpacing = (spacing between rows, spacing between columns) mm (PS3.3 10.7.1.3).
    slice_step
        Vector (3,) from slice k to slice k+1 in mm.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64.
    """
    iop = np.asarray(image_orientation, dtype=np.float64)
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    a = np.eye(4)
    a[:3, 0] = row * float(pixel_spacing[1])
    a[:3, 1] = col * float(pixel_spacing[0])
    a[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    a[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return a
