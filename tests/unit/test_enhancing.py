"""The zero-shot mask of an enhancing lesion trimmed to its enhancing tissue (inference/enhancing.py).

The phantom: a brain-like T1 (two tissues plus noise), a T1C that is a different gain and offset of
the same anatomy, and a ring-enhancing lesion: a rim bright on T1C only around a necrotic centre
dark on both. The decoder's mask is the filled disc plus a margin of normal tissue, as a box prompt
gives on real tumours.
"""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.inference.enhancing import enhancement_z, enhancing_tissue, shell_around

Z, N = 6, 96
AFFINE = np.diag([1.0, 1.0, 5.0, 1.0])


def phantom(gain: float = 1.3, offset: float = 40.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    r = np.hypot(yy - 48, xx - 48)
    head = np.hypot((yy - 48) / 44, (xx - 48) / 40) < 1
    grey = np.hypot((yy - 48) / 44, (xx - 48) / 40) > 0.8
    t1 = np.where(head, np.where(grey, 300.0, 500.0), 0.0)
    rim2d, centre2d = (r >= 9) & (r < 13), r < 9
    t1 = np.where(centre2d, 150.0, t1)  # necrosis: dark on T1 ...
    t1 = np.where(rim2d, 420.0, t1)
    t1v = np.stack([t1 + rng.normal(0, 8, t1.shape) * head for _ in range(Z)])
    t1c = gain * t1v + offset * head + rng.normal(0, 8, t1v.shape) * head  # ... and on T1C
    rim = np.zeros((Z, N, N), bool)
    for k in range(1, Z - 1):
        t1c[k][rim2d] += 250.0 * gain  # the rim enhances
        rim[k] = rim2d
    decoded = np.zeros((Z, N, N), bool)
    decoded[1 : Z - 1] = r < 17  # the disc plus 4 mm of normal tissue
    return {"T1": t1v.astype(np.float32), "T1C": t1c.astype(np.float32)}, rim, decoded


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_a_box_mask_of_a_ring_enhancing_lesion_is_trimmed_to_its_rim():
    channels, rim, decoded = phantom()
    out, note = enhancing_tissue(decoded, channels, None, AFFINE, 2.0)
    assert dice(decoded, rim) < 0.5
    assert dice(out, rim) > 0.85, dice(out, rim)
    assert not out[:, 48, 48].any(), "the necrotic centre does not enhance"
    assert (out <= decoded).all(), "trimming never adds voxels"
    assert note.startswith("enhancing tissue: kept")


@pytest.mark.parametrize("gain,offset", [(0.5, 0.0), (3.0, 500.0)])
def test_the_trim_does_not_depend_on_the_post_contrast_scale(gain, offset):
    base, _, decoded = phantom()
    other, _, _ = phantom(gain=gain, offset=offset)
    a, _ = enhancing_tissue(decoded, base, None, AFFINE, 2.0)
    b, _ = enhancing_tissue(decoded, other, None, AFFINE, 2.0)
    assert dice(a, b) > 0.95


def test_the_fit_excludes_enhancing_outliers_in_the_shell():
    channels, rim, decoded = phantom()
    # A bright vessel crossing the shell must not bend the T1 -> T1C line.
    channels["T1C"][:, 20:24, 30:66] += 2000.0
    shell = shell_around(decoded, (1.0, 1.0), 20.0)
    z = enhancement_z(channels["T1C"], channels["T1"], shell & (channels["T1"] > 0))
    assert np.median(z[rim]) > 10 and abs(float(np.median(z[shell & ~rim & (channels["T1"] > 0)]))) < 1


def test_nothing_is_trimmed_when_it_cannot_be_done_safely():
    channels, _, decoded = phantom()
    # No T1: no prediction of the unenhanced T1C.
    out, note = enhancing_tissue(decoded, {"T1C": channels["T1C"]}, None, AFFINE, 2.0)
    assert (out == decoded).all() and "needs T1 and T1C" in note
    # A lesion that does not enhance at all: fewer than 10 % of the voxels enhance.
    flat = {"T1": channels["T1"], "T1C": 1.3 * channels["T1"] + 40.0}
    out, note = enhancing_tissue(decoded, flat, None, AFFINE, 2.0)
    assert (out == decoded).all() and "mask kept as decoded" in note
    # Constant images: no fit.
    const = {"T1": np.full_like(channels["T1"], 7.0), "T1C": np.full_like(channels["T1"], 9.0)}
    out, note = enhancing_tissue(decoded, const, None, AFFINE, 2.0)
    assert (out == decoded).all() and "no T1-to-T1C fit" in note
    # An empty mask stays empty, silently.
    empty = np.zeros_like(decoded)
    out, note = enhancing_tissue(empty, channels, None, AFFINE, 2.0)
    assert not out.any() and note == ""


def test_the_brain_model_trims_and_the_parotid_fallback_does_not():
    from pgsam_node.inference.router import BUNDLED_MODELS
    from pgsam_node.model.checkpoint import read_config

    assert read_config(BUNDLED_MODELS / "brain-lesion-litemedsam").enhancing_tissue_z == 2.0
    assert read_config(BUNDLED_MODELS / "parotid-litemedsam").enhancing_tissue_z == 0.0


def test_invalid_and_non_finite_voxels_are_never_kept():
    channels, rim, decoded = phantom()
    channels["T1C"][2, 30:48, :] = np.nan  # a corrupt band across the lesion
    valid = {"T1": np.ones(decoded.shape, bool), "T1C": np.ones(decoded.shape, bool)}
    valid["T1C"][3] = False  # a slice the T1C does not cover
    out, note = enhancing_tissue(decoded, channels, valid, AFFINE, 2.0)
    assert note.startswith("enhancing tissue: kept")
    assert not out[2, 30:48].any() and not out[3].any()
    assert dice(out[4], rim[4]) > 0.85
