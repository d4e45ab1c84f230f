"""The viewer test's pixel check (tests/overlay_check.py) on drawn images: it passes a correct
overlay and fails a shifted, missing or spilled one; the voxel-to-screen projection."""

from __future__ import annotations

import numpy as np

from ..overlay_check import ScreenMapping, check_overlay, project_mask

COLOUR = (255, 64, 0)


def _mask() -> np.ndarray:
    m = np.zeros((20, 30), np.uint8)
    m[5:12, 4:14] = 1
    return m


def _mapping(flip_x: bool = False) -> ScreenMapping:
    # 3 screen pixels per voxel, image drawn at (10, 20) in a 120 x 100 viewport box at (0, 0).
    if flip_x:
        return ScreenMapping(origin=(98.5, 21.5), d_col=(-3.0, 0.0), d_row=(0.0, 3.0), viewport=(0, 0, 120, 100))
    return ScreenMapping(origin=(11.5, 21.5), d_col=(3.0, 0.0), d_row=(0.0, 3.0), viewport=(0, 0, 120, 100))


def _draw(region: np.ndarray, outline: bool = True) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.full(region.shape + (3,), 120, np.uint8)
    shown = hidden.copy()
    shown[region] = (0.5 * hidden[region] + 0.5 * np.array(COLOUR)).astype(np.uint8)
    if outline:
        edge = region & ~np.pad(region[1:-1, 1:-1] & region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:], 1)
        shown[edge] = COLOUR
    return shown, hidden


def test_projection_places_voxels_on_screen_pixels():
    exp = project_mask(_mask(), _mapping())
    assert exp.shape == (100, 120)
    ys, xs = np.nonzero(exp)
    # voxel columns 4..13 -> pixels 10 + 3*4 .. 10 + 3*14 - 1; rows 5..11 -> 20 + 15 .. 20 + 36 - 1
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (22, 51, 35, 55)
    assert exp.sum() == 10 * 7 * 9
    flipped = project_mask(_mask(), _mapping(flip_x=True))
    # the image spans screen x 10..99 either way; mirrored columns land mirrored
    assert np.array_equal(flipped[:, 10:100], exp[:, 10:100][:, ::-1]) and not flipped[:, :10].any()


def test_correct_overlay_passes():
    exp = project_mask(_mask(), _mapping())
    shown, hidden = _draw(exp)
    v = check_overlay(shown, hidden, exp, COLOUR)
    assert v.ok, str(v)
    assert v.covered == 1.0 and v.stray_px == 0 and v.exact_colour_px > 0


def test_shifted_missing_and_spilled_overlays_fail():
    exp = project_mask(_mask(), _mapping())
    shifted, hidden = _draw(np.roll(exp, 12, axis=1))
    v = check_overlay(shifted, hidden, exp, COLOUR)
    assert not v.ok and v.stray_px > v.stray_limit and v.covered < 0.95, str(v)
    v = check_overlay(hidden.copy(), hidden, exp, COLOUR)
    assert not v.ok and v.covered == 0.0, str(v)
    spill = exp.copy()
    spill[80:95, 90:110] = True  # a second blob where there is no mask
    shown, hidden = _draw(spill)
    v = check_overlay(shown, hidden, exp, COLOUR)
    assert not v.ok and v.covered == 1.0 and v.stray_px >= 15 * 20 - 10, str(v)


def test_other_colour_is_not_the_overlay():
    exp = project_mask(_mask(), _mapping())
    hidden = np.full(exp.shape + (3,), 120, np.uint8)
    shown = hidden.copy()
    shown[exp] = (60, 60, 230)  # something blue drawn on the mask: changed, but not towards orange
    v = check_overlay(shown, hidden, exp, COLOUR)
    assert not v.ok and v.covered == 0.0 and v.changed_px == exp.sum(), str(v)


def test_empty_slice_passes_only_when_nothing_is_drawn():
    empty = np.zeros((100, 120), bool)
    hidden = np.full((100, 120, 3), 120, np.uint8)
    assert check_overlay(hidden.copy(), hidden, empty, COLOUR).ok
    shown, _ = _draw(project_mask(_mask(), _mapping()))
    assert not check_overlay(shown, hidden, empty, COLOUR).ok
