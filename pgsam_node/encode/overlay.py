"""Burned-in overlay series for PACS viewers that cannot show SEG: one RGB Secondary Capture image
per source slice, the lesion outline drawn into the MR pixels, marked not for diagnosis
(BurnedInAnnotation YES, PS3.3 C.7.6.1.1.7; ImageComments and SeriesDescription say so)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from pgsam_node.config import Settings
from pgsam_node.errors import EncodeError
from pgsam_node.geometry.load import as_displayed
from pgsam_node.encode.preview import axis_letter as _letter
from pgsam_node.encode.preview import window
from pgsam_node.encode.common import SERIES_OFFSETS, AlgorithmInfo, SourceSet, log_built, output_uids, quiet_highdicom

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS - PG-SAM overlay"


def render_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """(Y, X) grey image + (Y, X) mask → (Y, X, 3) uint8 RGB with the mask outline and a 30 % tint."""
    grey = window(image)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    m = mask > 0
    if m.any():
        c = np.asarray(color, dtype=np.float32)
        rgb[m] = 0.7 * rgb[m] + 0.3 * c
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = c
    return rgb.astype(np.uint8)


def _patient_orientation(ref: Dataset) -> tuple[str, str]:
    iop = ref.get("ImageOrientationPatient")
    if iop is None and "SharedFunctionalGroupsSequence" in ref:
        iop = ref.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    if iop is None:
        return ("L", "P")
    v = np.asarray([float(x) for x in iop])
    return (_letter(v[:3]), _letter(v[3:]))


def build_overlay(
    mask: np.ndarray,
    sources: SourceSet,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
) -> list[Dataset]:
    """One Secondary Capture RGB image per slice (Z instances, one series).

    Parameters
    ----------
    mask
        (Z, Y, X) 0/1 mask on the reference grid.
    sources
        Reference series loaded *with pixels* (``load_sources(..., pixels=True)``).
    """
    if sources.multiframe:
        frames = as_displayed(sources.datasets[0].pixel_array, sources.datasets[0])
        planes = [frames[f - 1] for f in sources.frame_numbers or []]
        refs = [sources.datasets[0]] * len(planes)
    else:
        planes = [as_displayed(d.pixel_array, d) for d in sources.datasets]
        refs = sources.datasets
    series_uid, _ = output_uids(sources.study_uid, run_version, algorithm.version, "overlay")
    out = []
    try:
        with quiet_highdicom():
            for z, (ref, plane) in enumerate(zip(refs, planes, strict=True)):
                _, sop_uid = output_uids(sources.study_uid, run_version, algorithm.version, f"overlay/{z}")
                sc = hd.sc.SCImage.from_ref_dataset(
                    ref_dataset=ref,
                    pixel_array=render_overlay(plane, mask[z], settings.seg.display_color),
                    photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                    bits_allocated=8,
                    coordinate_system=hd.CoordinateSystemNames.PATIENT,
                    series_instance_uid=series_uid,
                    series_number=settings.seg.series_number_base + SERIES_OFFSETS["overlay"] + int(run_version),
                    sop_instance_uid=sop_uid,
                    instance_number=z + 1,
                    manufacturer=settings.seg.manufacturer,
                    pixel_spacing=tuple(float(v) for v in ref.PixelSpacing) if "PixelSpacing" in ref else None,
                    patient_orientation=_patient_orientation(ref),
                    series_description=(settings.seg.series_description + " overlay - NOT FOR DIAGNOSIS")[:64],
                )
                # PS3.3 C.7.3.1 Type 2C: present (empty = unknown) so validators need no paired-organ guess.
                sc.Laterality = None
                sc.BurnedInAnnotation = "YES"
                sc.ImageComments = NOT_FOR_DIAGNOSIS
                sc.ImageType = ["DERIVED", "SECONDARY"]
                sc.SoftwareVersions = algorithm.version
                out.append(sc)
    except Exception as exc:
        raise EncodeError(f"cannot build the overlay series: {exc}") from exc
    if out:
        log_built(f"overlay x{len(out)}", out[0])
    return out
