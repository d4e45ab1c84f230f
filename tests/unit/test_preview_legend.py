"""overlay.png and the dashboard preview carry a legend, the slice number and patient-side markers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from pgsam_node.encode.preview import PRED_COLOUR, TRUTH_COLOUR, side_letters, write_overlay_png
from pgsam_node.web.preview import COLOUR, compose

from ..factories import Geometry, mr_instance


def test_side_letters_follow_the_row_direction():
    assert side_letters([1, 0, 0, 0, 1, 0]) == ("R", "L")  # axial, radiological view
    assert side_letters([-1, 0, 0, 0, 1, 0]) == ("L", "R")  # flipped: the markers flip too
    assert side_letters([0, 1, 0, 0, 0, -1]) == ("A", "P")  # sagittal
    assert side_letters(None) is None


def _has(img: Image.Image, colour, box) -> bool:
    a = np.asarray(img.crop(box)).astype(int)
    if colour == (255, 255, 0):  # anti-aliased text: strongly yellow pixels
        return bool(((a[..., 0] > 150) & (a[..., 1] > 150) & (a[..., 2] < 90)).any())
    if colour == (255, 255, 255):  # anti-aliased white text on its black box
        return bool(((a > 150).all(axis=-1)).any() and ((a < 30).all(axis=-1)).any())
    return bool((np.abs(a - np.array(colour)).sum(axis=-1) < 10).any())


def test_overlay_png_has_legend_slice_and_markers(tmp_path):
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.dcm"
        mr_instance(study, series, i, geometry=Geometry(rows=64, columns=64)).save_as(p, enforce_file_format=True)
        paths.append(p)
    pred = np.zeros((3, 64, 64), np.uint8)
    pred[1, 40:50, 40:50] = 1
    truth = np.zeros_like(pred)
    truth[1, 38:52, 38:52] = 1
    out = write_overlay_png(paths, truth, pred, tmp_path / "overlay.png")
    img = Image.open(out).convert("RGB")
    assert max(img.size) >= 500  # enlarged so the text is legible
    h = img.height
    assert _has(img, PRED_COLOUR, (0, h - 40, 20, h)) and _has(img, TRUTH_COLOUR, (0, h - 40, 20, h))  # legend swatches
    assert _has(img, (255, 255, 0), (0, h // 2 - 4, 16, h // 2 + 14))  # left marker
    assert _has(img, (255, 255, 0), (img.width - 16, h // 2 - 4, img.width, h // 2 + 14))  # right marker
    assert _has(img, (255, 255, 255), (0, 0, 80, 18))  # slice number text


def test_dashboard_preview_has_legend_and_markers():
    image = np.random.default_rng(0).integers(0, 1000, (64, 64)).astype(np.uint16)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 20:30] = True
    img = Image.open(io.BytesIO(compose(image, mask, slice_text="slice (instance) 7", sides=("R", "L")))).convert("RGB")
    h = img.height
    assert _has(img, COLOUR, (0, h - 24, 20, h))
    assert _has(img, (255, 255, 0), (img.width - 16, h // 2 - 4, img.width, h // 2 + 14))
