"""The prebuilt OHIF viewer (npm ``@ohif/app``, installed by ``deploy/install-ohif.sh``) served on
loopback in front of a real Orthanc, for the viewer test.

:class:`ViewerServer` serves the static build, an ``app-config.js`` written for the test (one
DICOMweb data source) and, on the same origin, a reverse proxy of ``/dicom-web/`` to Orthanc's
DICOMweb plugin, so the browser never makes a cross-origin request. Started and stopped by handle::

    with ViewerServer(dist, orthanc.url) as viewer:
        driver.get(viewer.viewer_url(study_uid))
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import mimetypes
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from .helpers import PROJECT_ROOT, free_port, wait_for
from .overlay_check import ScreenMapping

INSTALL_SCRIPT = PROJECT_ROOT / "deploy" / "install-ohif.sh"
#: The pinned version, read from the install script (one place to change it).
OHIF_VERSION = re.search(r"^VERSION=(\S+)$", INSTALL_SCRIPT.read_text(), re.M).group(1)  # type: ignore[union-attr]
OHIF_DIR = PROJECT_ROOT / ".work" / "ohif" / OHIF_VERSION

#: Headers passed from the browser to Orthanc and back (hop-by-hop headers are not).
_FORWARD_REQ = ("accept", "range", "if-none-match", "if-modified-since")
_FORWARD_RESP = ("content-type", "etag", "last-modified", "content-range")


def install_ohif(timeout: float = 300.0) -> Path:
    """Run ``deploy/install-ohif.sh`` (a no-op when installed); the ``dist`` folder.

    Raises
    ------
    RuntimeError
        When the script fails (no npm, no registry, digest mismatch), with its output.
    """
    if shutil.which("npm") is None:
        raise RuntimeError("npm not found (node >= 20 and npm are needed to install @ohif/app)")
    p = subprocess.run([str(INSTALL_SCRIPT), str(OHIF_DIR)], capture_output=True, text=True, timeout=timeout)
    dist = OHIF_DIR / "dist"
    if p.returncode != 0 or not (dist / "index.html").exists():
        raise RuntimeError(f"{INSTALL_SCRIPT.name} failed ({p.returncode}): {(p.stdout + p.stderr)[-800:]}")
    return dist


def app_config(origin: str) -> str:
    """``window.config`` for OHIF: one DICOMweb data source at ``origin/dicom-web`` (Orthanc via
    the proxy), WADO-RS rendering, no study-list extras, no dialogs that would cover the viewport."""
    root = origin + "/dicom-web"
    cfg = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # No onboarding tour popping over the viewport.
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "Orthanc (test)",
                "name": "orthanc",
                "wadoUriRoot": root,
                "qidoRoot": root,
                "wadoRoot": root,
                "qidoSupportsIncludeField": False,
                "supportsReject": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "omitQuotationForMultipartRequest": True,
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            },
        }],
    }
    return "window.config = " + json.dumps(cfg, indent=1) + ";\n"


class ViewerServer:
    """Static OHIF build + ``/app-config.js`` + same-origin proxy of ``/dicom-web/`` to Orthanc.

    Parameters
    ----------
    dist
        The ``dist`` folder of ``@ohif/app``.
    orthanc_url
        Orthanc's REST root (``http://127.0.0.1:PORT``), whose DICOMweb plugin answers under
        ``/dicom-web/``.
    """

    def __init__(self, dist: Path, orthanc_url: str):
        self.dist = Path(dist).resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, int]] = []  # (path, status) of every request, for diagnosis
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=60.0)

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> ViewerServer:
        server = self
        config_js = app_config(self.url).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet; statuses are kept in .requests
                pass

            def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None,
                      cache: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                # The build's files are immutable (hashed names): cached between page loads.
                self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                server.requests.append((self.path, status))

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                if path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(200, config_js, "application/javascript")
                target = (server.dist / path.lstrip("/")).resolve()
                if server.dist not in target.parents or not target.is_file():
                    # The single-page app's routes (/viewer, /) are index.html; a missing asset is 404.
                    if "." in path.rsplit("/", 1)[-1]:
                        return self._send(404, b"not found", "text/plain")
                    target = server.dist / "index.html"
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix == ".wasm":
                    ctype = "application/wasm"
                self._send(200, target.read_bytes(), ctype, cache=target.name != "index.html")

            def _proxy(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARD_REQ}
                try:
                    r = server._client.get(server.orthanc_url + self.path, headers=headers)
                except httpx.HTTPError as exc:
                    return self._send(502, f"proxy: {exc!r}".encode(), "text/plain")
                extra = {k: v for k, v in r.headers.items() if k.lower() in _FORWARD_RESP and k.lower() != "content-type"}
                self._send(r.status_code, r.content, r.headers.get("content-type", "application/octet-stream"), extra)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-static", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._client.close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chromium_driver(user_data_dir: Path, width: int = 1024, height: int = 720):
    """Selenium on Debian's /usr/bin/chromium + chromedriver (never a downloaded browser), headless,
    with a fresh profile; ``None`` when either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--force-device-scale-factor=1",
              f"--window-size={width},{height}", f"--user-data-dir={user_data_dir}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


_READY_JS = """
const S = window.services, cs = window.cornerstone;
if (!S || !cs) return null;
const vpId = S.viewportGridService.getActiveViewportId();
const vp = vpId && cs.getEnabledElements().map(e => e.viewport).find(v => v.id === vpId);
if (!vp || !vp.getImageIds || !vp.getImageIds().length || !vp.getCurrentImageId()) return null;
const segs = S.segmentationService.getSegmentationRepresentations(vpId) || [];
const vpState = S.viewportGridService.getState().viewports.get(vpId);
return {viewportId: vpId, viewportDisplaySets: vpState ? vpState.displaySetInstanceUIDs : null,
        imageIds: vp.getImageIds().length, current: vp.getCurrentImageId(),
        segmentations: segs.map(r => r.segmentationId),
        displaySets: S.displaySetService.getActiveDisplaySets().map(d => ({uid: d.displaySetInstanceUID,
            series: d.SeriesInstanceUID, modality: d.Modality}))};
"""

_SHOW_SLICE_JS = """
const [sop, done] = arguments;
const S = window.services, cs = window.cornerstone;
const vpId = S.viewportGridService.getActiveViewportId();
const vp = cs.getEnabledElements().map(e => e.viewport).find(v => v.id === vpId);
const k = vp.getImageIds().findIndex(id => id.includes('/instances/' + sop + '/'));
if (k < 0) { done({error: 'instance ' + sop + ' is not in the viewport stack'}); return; }
Promise.resolve(vp.setImageIdIndex(k)).then(() => { vp.render(); done({index: k}); },
                                            e => done({error: String(e)}));
"""

_VISIBLE_JS = """
const [segmentationId, visible] = arguments;
const S = window.services;
const vpId = S.viewportGridService.getActiveViewportId();
S.segmentationService.setSegmentVisibility(vpId, segmentationId, 1, visible);
const vp = window.cornerstone.getEnabledElements().map(e => e.viewport).find(v => v.id === vpId);
vp.render();
return true;
"""

_GEOMETRY_JS = """
const [points] = arguments;
const S = window.services, cs = window.cornerstone;
const vpId = S.viewportGridService.getActiveViewportId();
const vp = cs.getEnabledElements().map(e => e.viewport).find(v => v.id === vpId);
const r = vp.canvas.getBoundingClientRect();
return {rect: [r.left, r.top, r.width, r.height], dpr: window.devicePixelRatio, current: vp.getCurrentImageId(),
        canvas: points.map(p => vp.worldToCanvas(p))};
"""


class OhifPage:
    """The OHIF viewer page in a Selenium driver: open a study, hydrate a SEG from the study
    browser as a user does (double-click, "Yes"), show a slice, toggle the segment, read the
    viewport's world-to-canvas mapping, take screenshots."""

    def __init__(self, driver, viewer: ViewerServer):
        self.driver = driver
        self.viewer = viewer
        self.segmentation_id: str | None = None
        self.debug_dir: Path | None = None  # where load_seg saves the page when it times out
        self.captures = 0          # screenshots taken, and the seconds they took (for the timings)
        self.capture_s = 0.0

    def state(self) -> dict | None:
        return self.driver.execute_script(_READY_JS)

    def open_study(self, study_uid: str, timeout: float = 90.0) -> dict:
        self.driver.get(self.viewer.viewer_url(study_uid))
        return wait_for(self.state, timeout, interval=0.25, what="OHIF viewport with an image")

    def load_seg(self, seg_description: str, seg_series_uid: str, ref_series_uid: str, timeout: float = 90.0) -> dict:
        """Double-click the SEG in the study browser, accept "Do you want to open this
        Segmentation?", wait until the segmentation is on the viewport showing ``ref_series_uid``.

        The double-click is repeated (at most 3 times) while the viewport has not taken the SEG:
        the study browser re-renders while the study's series arrive and can swallow a click.
        On a timeout the page is saved as ``load-seg-timeout.png`` in ``debug_dir``."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        def seg_in_viewport() -> bool:
            st = self.state() or {}
            uids = [d["uid"] for d in st.get("displaySets", []) if d["series"] == seg_series_uid]
            return bool(uids) and uids[0] in (st.get("viewportDisplaySets") or [])

        try:
            for attempt in range(3):
                item = wait_for(lambda: self.driver.find_element(
                    By.XPATH, f"//*[normalize-space(text())={_xpath_str(seg_description)}]"),
                    timeout, interval=0.25, what=f"study browser item {seg_description!r}")
                ActionChains(self.driver).double_click(item).perform()
                try:
                    wait_for(seg_in_viewport, 10.0, interval=0.25, what="the SEG in the viewport")
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            yes = wait_for(lambda: next((b for b in self.driver.find_elements(By.XPATH, "//button[normalize-space(.)='Yes']")
                                         if b.is_displayed()), None), timeout, interval=0.25,
                           what="the 'open this Segmentation?' prompt")
            yes.click()

            def hydrated() -> dict | None:
                st = self.state()
                if not st:
                    return None
                seg = [d for d in st["displaySets"] if d["series"] == seg_series_uid]
                if not seg or seg[0]["uid"] not in st["segmentations"]:
                    return None
                return st if f"/series/{ref_series_uid}/" in st["current"] else None

            st = wait_for(hydrated, timeout, interval=0.25, what="the SEG hydrated on the referenced series")
        except AssertionError as exc:
            if self.debug_dir is not None:
                self.debug_dir.mkdir(parents=True, exist_ok=True)
                self.driver.save_screenshot(str(self.debug_dir / "load-seg-timeout.png"))
            errors = [e["message"][:300] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"][-5:]
            raise AssertionError(f"{exc}; page state {self.state()}; browser errors {errors}") from exc
        self.segmentation_id = next(d["uid"] for d in st["displaySets"] if d["series"] == seg_series_uid)
        return st

    def show_slice(self, sop_uid: str) -> int:
        got = self.driver.execute_async_script(_SHOW_SLICE_JS, sop_uid)
        if "error" in got:
            raise AssertionError(got["error"])
        return int(got["index"])

    def set_segment_visible(self, visible: bool) -> None:
        self.driver.execute_script(_VISIBLE_JS, self.segmentation_id, visible)

    def mapping(self, ipp, iop, spacing, rows: int, cols: int) -> tuple[ScreenMapping, str]:
        """Voxel (col, row) of the displayed slice → screenshot pixel, from cornerstone's
        ``worldToCanvas`` of three voxel centres computed from the source file's own geometry
        (ImagePositionPatient, ImageOrientationPatient, PixelSpacing); and the displayed imageId."""
        ipp = np.asarray(ipp, float)
        iop = np.asarray(iop, float)
        dr, dc = float(spacing[0]), float(spacing[1])  # PixelSpacing = row spacing, column spacing
        c1, r1 = cols - 1, rows - 1
        pts = [ipp, ipp + iop[:3] * dc * c1, ipp + iop[3:] * dr * r1]
        g = self.driver.execute_script(_GEOMETRY_JS, [p.tolist() for p in pts])
        s = float(g["dpr"])
        if s != 1.0:
            raise AssertionError(f"devicePixelRatio {s}: the screenshots assume 1 (--force-device-scale-factor=1)")
        left, top, w, h = (float(v) for v in g["rect"])
        o, pc, pr = ([(left + p[0]) * s, (top + p[1]) * s] for p in g["canvas"])
        m = ScreenMapping(origin=(o[0], o[1]), d_col=((pc[0] - o[0]) / c1, (pc[1] - o[1]) / c1),
                          d_row=((pr[0] - o[0]) / r1, (pr[1] - o[1]) / r1),
                          viewport=(int(np.ceil(left * s)), int(np.ceil(top * s)), int((left + w) * s), int((top + h) * s)))
        return m, g["current"]

    def screenshot(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The page, or the (x0, y0, x1, y1) box of it, as an (H, W, 3) uint8 RGB array (CDP
        ``Page.captureScreenshot``; the device scale factor is forced to 1)."""
        from PIL import Image

        params: dict = {"format": "png"}
        if box is not None:
            x0, y0, x1, y1 = box
            params["clip"] = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "scale": 1}
        t = time.monotonic()
        data = base64.b64decode(self.driver.execute_cdp_cmd("Page.captureScreenshot", params)["data"])
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        self.captures += 1
        self.capture_s += time.monotonic() - t
        return img

    def stable_screenshot(self, box: tuple[int, int, int, int] | None = None, timeout: float = 30.0) -> np.ndarray:
        """A screenshot equal to the one before it (rendering finished), polled with a deadline."""
        last = [self.screenshot(box)]

        def same() -> tuple[np.ndarray] | None:
            now = self.screenshot(box)
            prev, last[0] = last[0], now
            return (now,) if np.array_equal(prev, now) else None

        return wait_for(same, timeout, interval=0.05, what="a stable viewer screenshot")[0]


def _xpath_str(s: str) -> str:
    return f"'{s}'" if "'" not in s else f'"{s}"'
