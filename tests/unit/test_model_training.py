"""Training: the loss goes down on a fixed batch; a short run writes a model folder and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgsam_node.geometry.normalize import NormParams
from pgsam_node.model.checkpoint import load_model_dir
from pgsam_node.model.pgsam import build_model
from pgsam_node.training.sources import synthetic_study
from pgsam_node.training.train import SliceSampler, TrainOptions, build_train_set, dice_bce_loss, forward_batch, train

from .test_model_arch import SMALL, small_cfg


@pytest.fixture(scope="module")
def ts():
    studies = [synthetic_study(s, size=64, n_slices=8) for s in range(2)]
    return build_train_set(studies, ["T1", "T2", "T1C"], 64, NormParams())


def test_slice_sampler_batches(tmp_path, ts):
    opts = TrainOptions(out=tmp_path, context_slices=3)
    emb = np.random.default_rng(0).standard_normal((len(ts.case_ids), 384)).astype(np.float32)
    s = SliceSampler(ts, opts, 64, emb, np.random.default_rng(0))
    b = s.batch(6)
    assert b["images"].shape == (6, 3, 3, 64, 64) and b["mask"].shape == (6, 1, 64, 64)
    assert b["coords"].shape == (6, 2, 64, 64) and b["findings"].shape[0] == 6
    assert b["images"].min() >= 0 and b["images"].max() <= 1
    assert len(s.pos) > 0 and len(s.neg) > 0
    # Same seed, same batch (determinism).
    b2 = SliceSampler(ts, opts, 64, emb, np.random.default_rng(0)).batch(6)
    assert torch.equal(b["images"], b2["images"]) and torch.equal(b["mask"], b2["mask"])


def test_sequence_dropout_removes_up_to_seq_drop_max_sequences_never_all(tmp_path, ts):
    emb = np.zeros((len(ts.case_ids), 384), np.float32)

    def present(**kw):
        opts = TrainOptions(out=tmp_path, context_slices=1, p_seq_drop=1.0, p_augment=0.0, **kw)
        b = SliceSampler(ts, opts, 64, emb, np.random.default_rng(3)).batch(40)
        return b["valid"].sum(1).tolist()

    assert set(present()) == {2}  # the default: exactly one of three dropped
    two = present(seq_drop_max=2)
    assert set(two) == {1, 2}
    assert set(present(seq_drop_max=5)) <= {1, 2}  # never all three


def test_few_steps_reduce_loss_on_fixed_batch(tmp_path, ts):
    torch.manual_seed(0)
    opts = TrainOptions(out=tmp_path, lesion_fraction=1.0)
    emb = np.random.default_rng(0).standard_normal((len(ts.case_ids), 384)).astype(np.float32)
    batch = SliceSampler(ts, opts, 64, emb, np.random.default_rng(1)).batch(4)
    model = build_model(small_cfg()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    dev = torch.device("cpu")
    first = None
    for _ in range(12):
        loss, _ = dice_bce_loss(forward_batch(model, batch, dev), batch["mask"])
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(dice_bce_loss(forward_batch(model, batch, dev), batch["mask"])[0])
    assert last < first * 0.9, (first, last)


def test_short_run_writes_model_and_resumes(tmp_path, monkeypatch, ts):
    import pgsam_node.training.train as tr

    monkeypatch.setattr(tr, "get_preset", lambda name: __import__("pgsam_node.model.presets", fromlist=["x"]).get_preset(name, **SMALL))
    out = tmp_path / "run"
    opts = TrainOptions(out=out, steps=3, batch_size=2, checkpoint_every=2, use_text=False, progress=False, command="pgsam-node train --test")
    cfg = train(opts, ts)
    assert (out / "weights.safetensors").is_file() and (out / "train_state.pt").is_file()
    data = json.loads((out / "config.json").read_text())
    assert data["use_text"] is False and data["training"]["steps_done"] == 3
    assert data["training"]["command"] == "pgsam-node train --test"
    model, cfg2 = load_model_dir(out)
    assert cfg2.version == cfg.version
    opts2 = TrainOptions(out=out, steps=5, batch_size=2, checkpoint_every=2, use_text=False, progress=False, resume=True)
    steps = []
    train(opts2, ts, on_step=lambda s, _: steps.append(s))
    assert steps == [3, 4]


def test_a_fine_tune_keeps_the_field_of_view_of_the_weights_it_starts_from(tmp_path, monkeypatch, ts):
    """--init carries input_fov_mm over: the weights were tuned to that view (inference/field_of_view.py)."""
    import pgsam_node.training.train as tr

    monkeypatch.setattr(tr, "get_preset", lambda name: __import__("pgsam_node.model.presets", fromlist=["x"]).get_preset(name, **SMALL))
    first = tmp_path / "first"
    train(TrainOptions(out=first, steps=1, batch_size=2, use_text=False, progress=False), ts)
    assert json.loads((first / "config.json").read_text())["input_fov_mm"] == 0.0
    data = json.loads((first / "config.json").read_text())
    data["input_fov_mm"] = 185.0
    (first / "config.json").write_text(json.dumps(data))
    second = tmp_path / "second"
    cfg = train(TrainOptions(out=second, steps=1, batch_size=2, use_text=False, progress=False, init=first), ts)
    assert cfg.input_fov_mm == 185.0
    assert json.loads((second / "config.json").read_text())["input_fov_mm"] == 185.0


@pytest.mark.parametrize("args,message", [(["--seq-drop", "1.5"], "--seq-drop must"), (["--seq-drop", "-0.1"], "--seq-drop must"),
                                          (["--seq-drop-max", "0"], "--seq-drop must"), (["--fat-sat-off", "1.5"], "--fat-sat-off must"),
                                          (["--fat-sat-off", "-1"], "--fat-sat-off must"),
                                          (["--third-generator", "-1"], "--third-generator must"),
                                          (["--input-fov-mm", "-5"], "--input-fov-mm must")])
def test_train_refuses_invalid_sequence_dropout(tmp_path, monkeypatch, args, message):
    from pgsam_node.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(["train", "--out", str(tmp_path / "m"), "--steps", "1", "--no-progress", *args])
    assert not (tmp_path / "m").exists()


def _with_air(st, px: int):
    """``st`` with ``px`` pixels of air on every side: the same anatomy on a larger field of view."""
    import dataclasses

    from .test_field_of_view import _padded

    vols, valid, a = _padded(st, px)
    return dataclasses.replace(st, volumes=vols, valid=valid, mask=np.pad(st.mask, ((0, 0), (px, px), (px, px))), affine=a)


def test_a_windowed_training_set_does_not_depend_on_the_acquired_field_of_view():
    """build_train_set(fov_mm=...) cuts each study as the predictor will (inference/field_of_view.py):
    the same anatomy acquired with more air around it gives the same training slices; without the
    window the larger view shrinks the anatomy."""
    st = synthetic_study(3, size=64, n_slices=8)
    wide = _with_air(st, 12)
    seq = ["T1", "T2", "T1C"]
    a = build_train_set([st], seq, 64, NormParams(), fov_mm=150.0)
    b = build_train_set([wide], seq, 64, NormParams(), fov_mm=150.0)
    assert np.array_equal(a.images[0], b.images[0]) and np.array_equal(a.masks[0], b.masks[0])
    assert a.masks[0].any()
    np.testing.assert_allclose(a.affines[0], b.affines[0])
    whole_a = build_train_set([st], seq, 64, NormParams())
    whole_b = build_train_set([wide], seq, 64, NormParams())
    assert not np.array_equal(whole_a.masks[0], whole_b.masks[0])


def test_train_cuts_its_studies_to_the_field_of_view_of_init_or_of_the_flag(tmp_path):
    import argparse

    from pgsam_node.commands.train_cmd import _training_fov_mm

    folder = tmp_path / "init"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**json.loads(
        (__import__("pgsam_node.inference.router", fromlist=["x"]).BUNDLED_MODELS / "parotid-tiny" / "config.json").read_text()),
        "input_fov_mm": 190.0}))
    assert _training_fov_mm(argparse.Namespace(input_fov_mm=None, init=folder)) == 190.0
    assert _training_fov_mm(argparse.Namespace(input_fov_mm=0.0, init=folder)) == 0.0
    assert _training_fov_mm(argparse.Namespace(input_fov_mm=None, init=None)) == 0.0
    with pytest.raises(SystemExit, match="--init"):
        _training_fov_mm(argparse.Namespace(input_fov_mm=None, init=tmp_path / "nowhere"))


def test_an_explicit_field_of_view_is_written_into_the_model(tmp_path, monkeypatch, ts):
    import pgsam_node.training.train as tr

    monkeypatch.setattr(tr, "get_preset", lambda name: __import__("pgsam_node.model.presets", fromlist=["x"]).get_preset(name, **SMALL))
    cfg = train(TrainOptions(out=tmp_path / "m", steps=1, batch_size=2, use_text=False, progress=False, input_fov_mm=200.0), ts)
    assert cfg.input_fov_mm == 200.0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["input_fov_mm"] == 200.0
