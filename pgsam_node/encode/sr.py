"""TID 1500 Measurement Report (Comprehensive 3D SR) with the lesion's volume and largest diameter,
referencing segment 1 of the SEG (PS3.16 TID 1500 / TID 1411)."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from pgsam_node.config import SegmentCodes, Settings
from pgsam_node.errors import EncodeError
from pgsam_node.findings import Findings
from pgsam_node.encode.common import (
    LATERALITY_CODES,
    SERIES_OFFSETS,
    AlgorithmInfo,
    SourceSet,
    log_built,
    output_uids,
    quiet_highdicom,
    to_code,
)
from pgsam_node.encode.validate import _source_frame_geometry

UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UNIT_MM = Code("mm", "UCUM", "millimeter")
VOLUME = Code("118565006", "SCT", "Volume")
DIAMETER = Code("81827009", "SCT", "Diameter")
MAXIMUM = Code("56851009", "SCT", "Maximum")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")


@dataclass(frozen=True)
class LesionMeasurements:
    """Volume in mm³ (``volume_ml`` = /1000) and largest 3-D diameter in mm (voxel centres)."""

    voxels: int
    volume_mm3: float
    largest_diameter_mm: float

    @property
    def volume_ml(self) -> float:
        return self.volume_mm3 / 1000.0


def lesion_measurements(mask: np.ndarray, sources: SourceSet) -> LesionMeasurements:
    """Measure a (Z, Y, X) mask on the source grid.

    Volume = voxel count × pixel area × slice spacing (spacing from consecutive slice positions,
    or SliceThickness for a single slice). Largest diameter = the longest distance between two
    foreground voxel centres in patient coordinates (over the convex hull when large).
    """
    geo = _source_frame_geometry(sources)
    pos = np.stack([g[2] for g in geo])  # (Z, 3) mm
    orient = geo[0][3]
    dr, dc = geo[0][4]  # PixelSpacing: row spacing (between rows), column spacing
    row_dir, col_dir = orient[:3], orient[3:]
    if len(pos) > 1:
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        slice_mm = float(np.median(steps))
    else:
        slice_mm = float(sources.datasets[0].get("SliceThickness", 1.0) or 1.0)
    idx = np.argwhere(np.asarray(mask) > 0)  # (N, 3) z, y, x
    n = len(idx)
    if n == 0:
        return LesionMeasurements(0, 0.0, 0.0)
    # PS3.3 C.7.6.2.1.1: P = S + row_dir * dc * column_index + col_dir * dr * row_index
    pts = pos[idx[:, 0]] + np.outer(idx[:, 2] * dc, row_dir) + np.outer(idx[:, 1] * dr, col_dir)
    if n > 3000:
        try:
            pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]
        except QhullError:
            pts = pts[:: max(1, n // 3000)]
    diameter = float(pdist(pts).max()) if len(pts) > 1 else 0.0
    return LesionMeasurements(int(n), float(n * dr * dc * slice_mm), diameter)


def build_sr(
    seg: Dataset,
    mask: np.ndarray,
    sources: SourceSet,
    findings: Findings | None,
    settings: Settings,
    algorithm: AlgorithmInfo,
    run_version: int,
    codes: SegmentCodes | None = None,
) -> Dataset:
    """Comprehensive 3D SR (TID 1500) with lesion volume (mm³) and largest diameter (mm).

    Parameters
    ----------
    seg
        The BINARY SEG the measurements refer to (segment 1).
    mask
        (Z, Y, X) 0/1 mask encoded in ``seg``.
    """
    codes = codes or settings.seg.segment_codes
    m = lesion_measurements(mask, sources)
    series_uid, sop_uid = output_uids(sources.study_uid, run_version, algorithm.version, "sr")
    side = findings.side if findings is not None else None
    try:
        with quiet_highdicom():
            alg = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
            device = hd.sr.ObserverContext(
                observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=output_uids(sources.study_uid, 0, algorithm.version, "device")[0],
                    name=algorithm.name, manufacturer_name=settings.seg.manufacturer,
                    model_name=algorithm.name, serial_number=algorithm.version[:64],
                ),
            )
            site = hd.sr.FindingSite(
                anatomic_location=to_code(codes.anatomy),
                laterality=LATERALITY_CODES.get(side) if side else None,
            )
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=output_uids(sources.study_uid, run_version, algorithm.version, "tracking")[0],
                    identifier=settings.seg.segment_label,
                ),
                # Built by hand: highdicom's from_segmentation looks for per-frame segment
                # identification, which a one-segment SEG keeps in the shared groups.
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=1,
                    source_series=hd.sr.SourceSeriesForSegmentation(sources.series_uid),
                ),
                finding_type=to_code(codes.type),
                finding_category=to_code(codes.category),
                algorithm_id=alg,
                finding_sites=[site],
                measurements=[
                    hd.sr.Measurement(name=VOLUME, value=round(m.volume_mm3, 3), unit=UNIT_MM3, algorithm_id=alg),
                    hd.sr.Measurement(name=DIAMETER, value=round(m.largest_diameter_mm, 3), unit=UNIT_MM,
                                      qualifier=MAXIMUM, algorithm_id=alg),
                ],
            )
            report = hd.sr.MeasurementReport(
                observation_context=hd.sr.ObservationContext(observer_device_context=device),
                procedure_reported=IMAGING_PROCEDURE,
                imaging_measurements=[group],
            )
            sr = hd.sr.Comprehensive3DSR(
                evidence=[seg, *sources.datasets],
                content=report,
                series_instance_uid=series_uid,
                series_number=settings.seg.series_number_base + SERIES_OFFSETS["sr"] + int(run_version),
                sop_instance_uid=sop_uid,
                instance_number=1,
                manufacturer=settings.seg.manufacturer,
                is_complete=True,
                series_description=(settings.seg.series_description + " measurements")[:64],
            )
    except Exception as exc:
        raise EncodeError(f"cannot build the measurement SR: {exc}") from exc
    log_built("sr", sr)
    return sr
