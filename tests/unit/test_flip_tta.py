"""model.flip_tta: each slice is also segmented mirrored left-right in the image, coordinates
mirrored with it, and the two logit maps averaged (:mod:`pgsam_node.inference.flip`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgsam_node.errors import ConfigError
from pgsam_node.inference.flip import flip_averaged
from pgsam_node.inference.predictor import Predictor
from pgsam_node.inference.preprocessing import flip_affine
from pgsam_node.training.sources import synthetic_study



class _ColumnRamp(torch.nn.Module):
    """Logits = first image channel + the column index: not mirror-symmetric, so a pass on the
    flipped batch differs from the pass as shown. Records what each call received."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def forward(self, imgs, valid, coords, text_emb, text_valid, fvec):
        self.calls.append((imgs, valid, coords, text_emb, text_valid, fvec))
        ramp = torch.arange(imgs.shape[-1], dtype=imgs.dtype)
        return imgs[:, 0, :1] + ramp


def test_flip_averaged_mirrors_images_and_coordinates_together_and_averages():
    torch.manual_seed(0)
    imgs, coords = torch.rand(2, 3, 1, 4, 5), torch.rand(2, 2, 4, 5)
    valid, temb, tval, fvec = torch.ones(2, 3, dtype=torch.bool), torch.rand(2, 8), torch.ones(2, dtype=torch.bool), torch.rand(2, 6)
    model = _ColumnRamp()
    out = model(imgs, valid, coords, temb, tval, fvec)
    avg = flip_averaged(model, out, imgs, valid, coords, temb, tval, fvec)
    seen = model.calls[1]
    assert torch.equal(seen[0], imgs.flip(-1)) and torch.equal(seen[2], coords.flip(-1))
    assert seen[1] is valid and seen[3] is temb and seen[4] is tval and seen[5] is fvec  # the patient's, unchanged
    # Image term: x and flip(flip(x)) agree; the column ramp is averaged with its mirror to (W - 1) / 2.
    assert torch.allclose(avg, imgs[:, 0, :1] + (imgs.shape[-1] - 1) / 2)
    assert not torch.allclose(avg, out)


def _mirrored_study(st):
    """The same patient stored with its columns reversed: every voxel keeps its LPS position."""
    vols = {r: np.ascontiguousarray(v[:, :, ::-1]) for r, v in st.volumes.items()}
    return vols, flip_affine(st.affine, "x", next(iter(vols.values())).shape[2])


def test_the_predictor_with_flip_tta_answers_the_same_for_a_study_stored_mirrored(model_dir):
    """With the flip, a study and the same study stored with its columns reversed (affine flipped
    with them, so the patient is unchanged) get mirrored probability maps: the two passes are the
    same pair of inputs in the other order. A randomly initialised model without the flip does not
    (it reads the image's columns, not the patient)."""
    st = synthetic_study(3, size=64, n_slices=6)
    vols_m, aff_m = _mirrored_study(st)
    probs = {}
    for tta in (False, True):
        p = Predictor.from_dir(model_dir, device="cpu", batch_size=4, flip_tta=tta)
        a = p.predict(st.volumes, None, st.findings, None, st.affine, postprocess=False).prob
        b = p.predict(vols_m, None, st.findings, None, aff_m, postprocess=False).prob
        probs[tta] = float(np.abs(a - b[:, :, ::-1]).max())
    assert probs[True] < 1e-4
    assert probs[False] > 1e-3


def test_flip_tta_doubles_the_forward_passes_and_changes_the_answer(model_dir):
    st = synthetic_study(4, size=64, n_slices=6)
    results, calls = {}, {}
    for tta in (False, True):
        p = Predictor.from_dir(model_dir, device="cpu", batch_size=4, flip_tta=tta)
        seen: list[int] = []
        p.model.register_forward_hook(lambda _m, _i, _o, seen=seen: seen.append(1))
        results[tta] = p.predict(st.volumes, None, st.findings, None, st.affine, postprocess=False).prob
        calls[tta] = len(seen)
    assert calls[True] == 2 * calls[False] == 4  # 6 slices in batches of 4, twice
    assert not np.allclose(results[True], results[False])


def test_flip_tta_is_a_config_key_read_by_the_one_loader(model_dir):
    from pgsam_node.config import ModelSettings, load_settings

    assert load_settings(None).model.flip_tta is False
    assert Predictor.from_settings(ModelSettings(path=model_dir, device="cpu", flip_tta=True)).flip_tta is True
    with pytest.raises(ConfigError, match="flip_tta"):
        load_settings(None, model={"flip_tta": "sometimes"})
