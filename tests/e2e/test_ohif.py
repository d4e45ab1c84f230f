"""Our SEG drawn by a real viewer: the prebuilt OHIF viewer (npm ``@ohif/app``, pinned in
``deploy/install-ohif.sh``) in headless Chromium over Orthanc 1.10 + its DICOMweb plugin.

One Orthanc, one static server for OHIF (with a same-origin proxy to Orthanc's ``/dicom-web``)
and one Chromium serve the whole module, all on loopback, stopped by handle. For each SEG the
test opens the study, double-clicks the SEG in the study browser and accepts "open this
Segmentation?" (OHIF hydrates it onto the referenced series), then, slice by slice, takes a
screenshot of the viewport with the segment shown and one with it hidden and checks
(``tests/overlay_check.py``) that the segment's colour appears where the mask is, projected
through cornerstone's ``worldToCanvas`` of the source file's own geometry, and nowhere else.

- the synthetic demo study goes Orthanc -> node (C-STORE) -> SEG back to Orthanc (the node's
  model, default BINARY encoding);
- the TCIA study PGBM-001 (T1post, a 260-column grid) with a SEG built by the node's encoder from
  the expert MaskTumor, where ``../shared/data/tcia-pgbm`` exists;
- the check itself fails on SEGs with broken geometry: frames that reference the slice three
  further, or pixel data mirrored left-right.

Screenshots and verdicts go to the test's tmp dir and ``.work/artefacts/ohif/<test>/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from pgsam_node.commands.ris_cmd import import_csv
from pgsam_node.commands.synth_cmd import report_row, write_reports_csv
from pgsam_node.config import load_settings
from pgsam_node.encode import algorithm_info, build_seg
from pgsam_node.encode.read import read_seg_mask
from pgsam_node.geometry import load_series
from pgsam_node.node import Node
from pgsam_node.synth.dicom_writer import write_study

from ..helpers import PROJECT_ROOT, free_port
from ..integration.test_dicomweb_stow import DICOMWEB, PLUGIN
from ..ohif_viewer import OhifPage, ViewerServer, chromium_driver, install_ohif
from ..orthanc import OrthancServer, require_orthanc
from ..overlay_check import OverlayVerdict, check_overlay, project_mask
from .pacs_flow import fetch_from_orthanc, push_and_wait

pytestmark = pytest.mark.orthanc

ARTEFACTS = PROJECT_ROOT / ".work" / "artefacts" / "ohif"
NODE_AET = "PGSAM"
DEMO_SEED = 7  # pgsam-node demo's default study


class ViewerEnv:
    """The module's Orthanc (DICOMweb on, the node as modality ``pgsam``), OHIF server and page."""

    def __init__(self, orthanc: OrthancServer, viewer: ViewerServer, page: OhifPage, node_port: int):
        self.orthanc, self.viewer, self.page, self.node_port = orthanc, viewer, page, node_port
        self.timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def viewer_env(tmp_path_factory):
    require_orthanc()
    if not PLUGIN.exists():
        pytest.skip("Debian package orthanc-dicomweb not installed (deploy/install-system-deps.sh)")
    t0 = time.monotonic()
    try:
        dist = install_ohif()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"the OHIF viewer could not be installed from the npm registry (deploy/install-ohif.sh): {exc}")
    t_install = time.monotonic() - t0
    work = tmp_path_factory.mktemp("ohif-env")
    node_port = free_port()
    # Orthanc 1.10 has no bind address (HttpBindAddresses came in 1.12.x): its REST API refuses
    # remote clients (RemoteAccessAllowed false) and its DICOM port only takes the node's AE.
    orthanc = OrthancServer(work / "orthanc", modalities={"pgsam": (NODE_AET, "127.0.0.1", node_port)}, extra=DICOMWEB,
                            always_allow_store=False)
    viewer = driver = None
    try:
        orthanc.start()
        viewer = ViewerServer(dist, orthanc.url).start()
        driver = chromium_driver(work / "chrome-profile")
        if driver is None:
            pytest.skip("chromium/chromedriver not installed (Debian packages chromium, chromium-driver)")
        env = ViewerEnv(orthanc, viewer, OhifPage(driver, viewer), node_port)
        env.timings["install_viewer_s"] = t_install
        env.timings["start_orthanc_viewer_browser_s"] = time.monotonic() - t0 - t_install
        yield env
    finally:
        if driver is not None:
            driver.quit()
        if viewer is not None:
            viewer.stop()
        orthanc.stop()


# ---- the check, slice by slice -----------------------------------------------------------------------


def _z_ordered(paths: list[Path]) -> tuple[list[Path], list[Dataset]]:
    """Single-frame source files sorted along the slice normal (the mask's Z order)."""
    dss = [dcmread(p, stop_before_pixels=True) for p in paths]
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in dss])
    return [paths[i] for i in order], [dss[i] for i in order]


def slices_to_check(mask: np.ndarray, full: bool = True) -> list[int]:
    """The largest mask slice, the first and last with mask, and the empty slice beyond each end
    (``full``); else the largest, the first, and the empty slice beyond the last."""
    area = mask.reshape(mask.shape[0], -1).sum(axis=1)
    nz = np.nonzero(area)[0]
    assert nz.size, "the mask is empty: nothing for the viewer to draw"
    first, last = int(nz[0]), int(nz[-1])
    picks = [int(np.argmax(area)), first, last, first - 1, last + 1] if full else [int(np.argmax(area)), first, last + 1]
    return list(dict.fromkeys(z for z in picks if 0 <= z < mask.shape[0]))


def _boundary(m: np.ndarray) -> np.ndarray:
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def _save(out: Path, name: str, shown: np.ndarray, hidden: np.ndarray, expected: np.ndarray) -> None:
    """shown / hidden crops, and the shown crop with the expected mask's outline in green."""
    Image.fromarray(shown).save(out / f"{name}-shown.png", compress_level=1)
    Image.fromarray(hidden).save(out / f"{name}-hidden.png", compress_level=1)
    marked = shown.copy()
    marked[_boundary(expected)] = (0, 255, 0)
    Image.fromarray(marked).save(out / f"{name}-expected-outline.png", compress_level=1)


def view_and_check(env: ViewerEnv, out: Path, *, study_uid: str, seg: Dataset, ref_dss: list[Dataset],
                   expected_mask: np.ndarray, colour: tuple[int, int, int], label: str,
                   full: bool = True) -> dict[int, OverlayVerdict]:
    """Open the study in OHIF, hydrate ``seg``, and check the overlay on :func:`slices_to_check`
    (``full`` or not) of ``expected_mask`` (Z order of ``ref_dss``). Screenshots, verdicts and
    timings go to ``out``, copied (also when something fails) to ``.work/artefacts/ohif/<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    page = env.page
    page.debug_dir = out
    verdicts: dict[int, OverlayVerdict] = {}
    try:
        t = time.monotonic()
        page.open_study(study_uid)
        env.timings[f"{label}_open_study_s"] = time.monotonic() - t
        t = time.monotonic()
        page.load_seg(str(seg.SeriesDescription), str(seg.SeriesInstanceUID), str(ref_dss[0].SeriesInstanceUID))
        env.timings[f"{label}_load_seg_s"] = time.monotonic() - t
        t, n0, c0 = time.monotonic(), page.captures, page.capture_s
        for z in slices_to_check(expected_mask, full):
            ds = ref_dss[z]
            # OHIF may still move the viewport after our navigation resolved (the SEG's hydration
            # jumps to its first segment asynchronously; seen once in a loaded full run): navigate
            # again until the slice stays, and fail only if it never does.
            for _ in range(5):
                page.show_slice(str(ds.SOPInstanceUID))
                time.sleep(0.3)
                mapping, current = page.mapping(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing,
                                                int(ds.Rows), int(ds.Columns))
                if f"/instances/{ds.SOPInstanceUID}/" in current:
                    break
            assert f"/instances/{ds.SOPInstanceUID}/" in current, f"the viewport shows {current}, not slice {z}"
            # The source image may still be refining (progressive loading) when a screenshot is
            # stable for a moment: accept a shown capture only between two equal hidden ones.
            for _ in range(6):
                page.set_segment_visible(False)
                hidden = page.stable_screenshot(mapping.viewport)
                page.set_segment_visible(True)
                shown = page.stable_screenshot(mapping.viewport)
                page.set_segment_visible(False)
                if np.array_equal(page.stable_screenshot(mapping.viewport), hidden):
                    break
            expected = project_mask(expected_mask[z], mapping)
            verdicts[z] = check_overlay(shown, hidden, expected, colour)
            _save(out, f"{label}-z{z:03d}", shown, hidden, expected)
        env.timings[f"{label}_check_{len(verdicts)}_slices_s"] = time.monotonic() - t
        env.timings[f"{label}_screenshots"] = page.captures - n0
        env.timings[f"{label}_screenshots_s"] = page.capture_s - c0
    finally:
        (out / f"{label}-verdicts.json").write_text(json.dumps(
            {str(z): {**asdict(v), "ok": v.ok} for z, v in verdicts.items()}, indent=1))
        (out / "timings.json").write_text(json.dumps({k: round(v, 2) for k, v in env.timings.items()}, indent=1))
        keep = ARTEFACTS / out.name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(out, keep)
        print(f"\nOHIF screenshots and verdicts: {keep}")
        for z, v in verdicts.items():
            print(f"  {label} slice {z}: {'ok' if v.ok else 'FAIL'}: {v}")
    return verdicts


def _out(tmp_path: Path, request) -> Path:
    """The test's artefact folder: ``<tmp_path>/<test name>``."""
    return tmp_path / request.node.name.replace("[", "-").replace("]", "")


def _failures(verdicts: dict[int, OverlayVerdict]) -> str:
    return "; ".join(f"slice {z}: {v}" for z, v in verdicts.items() if not v.ok)


# ---- the tests ----------------------------------------------------------------------------------


def test_ohif_draws_the_node_seg_on_the_demo_study(viewer_env, node_settings, tmp_path, request):
    """Demo study: Orthanc pushes it to the node, the node's SEG comes back to Orthanc, OHIF draws
    it where highdicom (independently of OHIF) reads its voxels, on the source slices."""
    t = time.monotonic()
    study = write_study(DEMO_SEED, tmp_path / "study", report_language="en")
    # A long worker lease: on a loaded 2-core machine a 6 s lease can lapse mid-inference.
    settings = node_settings(dicom={"port": viewer_env.node_port, "allowed_calling_aets": ["ORTHANC"]},
                             worker={"lease_seconds": 60.0})
    settings.destinations = [{"name": "orthanc", "ae_title": viewer_env.orthanc.aet, "host": "127.0.0.1",
                              "port": viewer_env.orthanc.dicom_port}]
    csv_path = tmp_path / "reports.csv"
    write_reports_csv(csv_path, [report_row(study, DEMO_SEED)])
    with Node(settings, web=False) as node:
        assert import_csv(csv_path, settings, node.db).inserted == 1
        files = [p for paths in study.paths_by_role.values() for p in paths]
        out_uids, _ = push_and_wait(viewer_env.orthanc, node, files, study.study_uid, timeout=300.0)
    viewer_env.timings["demo_node_round_trip_s"] = time.monotonic() - t
    seg_path = fetch_from_orthanc(viewer_env.orthanc, out_uids[0], tmp_path)
    seg = dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    ref_paths, ref_dss = _z_ordered(list(study.paths_by_role["T1C"]))
    mask, _ = read_seg_mask(seg_path, ref_paths)
    verdicts = view_and_check(viewer_env, _out(tmp_path, request), study_uid=study.study_uid, seg=seg, ref_dss=ref_dss,
                              expected_mask=mask, colour=tuple(settings.seg.display_color), label="demo")
    assert all(v.ok for v in verdicts.values()), _failures(verdicts)
    drawn = [v for v in verdicts.values() if v.expected_px]
    assert drawn and all(v.exact_colour_px > 0 for v in drawn), "the SEG's display colour itself (outline) is missing"


def _tcia_t1post_and_mask(study_dir: Path) -> tuple[list[Path], list[Dataset], np.ndarray]:
    ref_paths, ref_dss = _z_ordered(sorted((study_dir / "T1post").glob("*.dcm")))
    masks = load_series(sorted((study_dir / "MaskTumor").glob("*.dcm")))
    # MaskTumor shares the T1post grid in this collection: same positions, slice for slice.
    pos = np.array([np.asarray(d.ImagePositionPatient, float) for d in ref_dss])
    mpos = np.array([masks.affine[:3] @ np.array([0.0, 0.0, z, 1.0]) for z in range(masks.array.shape[0])])
    assert masks.array.shape == (len(ref_dss), int(ref_dss[0].Rows), int(ref_dss[0].Columns))
    assert np.abs(pos - mpos).max() < 0.01, "MaskTumor is not on the T1post grid"
    return ref_paths, ref_dss, (masks.array > 0).astype(np.uint8)


def test_ohif_draws_our_seg_on_a_tcia_study(viewer_env, shared_data, tmp_path, request):
    """Real MR (TCIA PGBM-001 T1post, 260 columns): a BINARY SEG from the node's encoder on the
    expert mask; OHIF fetches it as one instance (not /frames, which Orthanc 1.10 refuses for a
    BINARY SEG of this width, docs/seg.md) and draws it on the right pixels."""
    study_dir = sorted(shared_data.glob("PGBM-001*"))[0]
    ref_paths, ref_dss, mask = _tcia_t1post_and_mask(study_dir)
    settings = load_settings(None, storage={"root": str(tmp_path / "node")})
    seg = build_seg(mask, ref_paths, None, settings, algorithm_info("a" * 64), 1)
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    t = time.monotonic()
    for p in ref_paths + [seg_path]:
        viewer_env.orthanc.upload(p)
    viewer_env.timings["tcia_upload_s"] = time.monotonic() - t
    n_before = len(viewer_env.viewer.requests)
    verdicts = view_and_check(viewer_env, _out(tmp_path, request), study_uid=str(seg.StudyInstanceUID), seg=seg, ref_dss=ref_dss,
                              expected_mask=mask, colour=tuple(settings.seg.display_color), label="tcia", full=False)
    assert all(v.ok for v in verdicts.values()), _failures(verdicts)
    seg_requests = [(p, code) for p, code in viewer_env.viewer.requests[n_before:] if str(seg.SOPInstanceUID) in p]
    print("OHIF's requests for the SEG:", seg_requests)
    assert seg_requests and all(code == 200 for _, code in seg_requests), seg_requests
    assert not any("/frames" in p for p, _ in seg_requests), f"OHIF fetched the SEG frame by frame: {seg_requests}"


def _refer_to_slice_further(seg: Dataset, ref_dss: list[Dataset], shift: int) -> Dataset:
    """Break the SEG's geometry: every frame names, and sits at, the source slice ``shift``
    further along Z than the one its pixels belong to."""
    by_uid = {str(d.SOPInstanceUID): z for z, d in enumerate(ref_dss)}
    for fg in seg.PerFrameFunctionalGroupsSequence:
        src = fg.DerivationImageSequence[0].SourceImageSequence[0]
        target = ref_dss[by_uid[str(src.ReferencedSOPInstanceUID)] + shift]
        src.ReferencedSOPInstanceUID = target.SOPInstanceUID
        fg.PlanePositionSequence[0].ImagePositionPatient = list(target.ImagePositionPatient)
    return seg


@pytest.mark.parametrize("break_kind", ["frames-three-slices-further", "mirrored-left-right"])
def test_ohif_check_fails_on_a_misplaced_seg(viewer_env, tmp_path, request, break_kind):
    """The check can fail: a SEG with broken geometry is drawn by OHIF (its colour appears), but
    not where the mask is, and the check says so on several slices."""
    study = write_study(DEMO_SEED + 1, tmp_path / "study", report_language="en")
    ref_paths, ref_dss = _z_ordered(list(study.paths_by_role["T1C"]))
    mask = np.asarray(study.mask, dtype=np.uint8)
    assert ref_paths == list(study.paths_by_role["T1C"]), "the truth mask's Z order differs from the files'"
    assert np.nonzero(mask.any(axis=(1, 2)))[0][-1] + 3 < mask.shape[0], "the lesion must end 3 slices before the top"
    settings = load_settings(None, storage={"root": str(tmp_path / "node")},
                             seg={"series_description": f"BROKEN {break_kind}"})
    if break_kind == "mirrored-left-right":
        seg = build_seg(np.ascontiguousarray(mask[:, :, ::-1]), ref_paths, None, settings, algorithm_info("b" * 64), 1)
    else:
        seg = _refer_to_slice_further(build_seg(mask, ref_paths, None, settings, algorithm_info("c" * 64), 1), ref_dss, 3)
    seg.SeriesInstanceUID, seg.SOPInstanceUID = generate_uid(), generate_uid()
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    seg_path = tmp_path / "broken-seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    for p in ref_paths + [seg_path]:
        viewer_env.orthanc.upload(p)
    verdicts = view_and_check(viewer_env, _out(tmp_path, request), study_uid=study.study_uid, seg=seg, ref_dss=ref_dss,
                              expected_mask=mask, colour=tuple(settings.seg.display_color), label=f"broken-{break_kind}",
                              full=False)
    failed = [z for z, v in verdicts.items() if not v.ok]
    assert sum(v.overlay_px for v in verdicts.values()) > 0, "OHIF drew nothing: this test is about misplacement"
    assert len(failed) >= 2, f"the check passed a misplaced overlay on {len(verdicts) - len(failed)} of {len(verdicts)} slices"
