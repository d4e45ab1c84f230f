"""Zero-shot asymmetry proposals (pgsam_node.inference.proposals) and the predictor path that decodes them.

The phantom is a head-like ellipse with two mirror-image "glands" (its mid-line tilted and off the
image centre), a lesion in one gland (bright on T2 and on T1C, dark on T1) and, in the other gland,
a distractor; a long vessel-like tube runs through the slices on the lesion's side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from pgsam_node.findings import Findings
from pgsam_node.inference.predictor import Predictor
from pgsam_node.inference.proposals import lateral_map, mirror_map, propose, proposal_images, signal_weights, symmetry_plane
from pgsam_node.model.pgsam import build_model
from pgsam_node.model.presets import ModelConfig, get_preset

SEQ = ["T1", "T2", "T1C"]
Z, N = 10, 96
#: 1 mm pixels, 4 mm slices; columns run towards the patient's left (+x LPS).
AFFINE = np.array([[1.0, 0, 0, -48], [0, 1.0, 0, -48], [0, 0, 4.0, 0], [0, 0, 0, 1]])


def phantom(lesion_col: int = 30, distractor: bool = True, tube: bool = True, angle: float = 6.0, shift: int = 5):
    """(volumes role -> (Z, N, N), lesion mask) with the lesion at column ``lesion_col`` before tilting."""
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    c = (N - 1) / 2
    head = (((xx - c) / 40) ** 2 + ((yy - c) / 44) ** 2) < 1
    glands = [(((xx - (c + dx)) / 10) ** 2 + ((yy - 50) / 14) ** 2) < 1 for dx in (-22, 22)]
    lesion2d = (((xx - lesion_col) / 5) ** 2 + ((yy - 50) / 5) ** 2) < 1
    mirror_col = 2 * c - lesion_col
    other2d = (((xx - mirror_col) / 3) ** 2 + ((yy - 62) / 3) ** 2) < 1
    tube2d = (((xx - (lesion_col + 4)) / 3) ** 2 + ((yy - 30) / 3) ** 2) < 1
    base = {"T1": 0.5, "T2": 0.35, "T1C": 0.5}
    gland = {"T1": 0.3, "T2": 0.5, "T1C": 0.35}
    les = {"T1": 0.2, "T2": 0.9, "T1C": 0.85}
    rng = np.random.default_rng(0)
    vols = {}
    mask = np.zeros((Z, N, N), np.uint8)
    for r in SEQ:
        v = np.zeros((Z, N, N), np.float32)
        for k in range(Z):
            img = head * base[r]
            for g in glands:
                img = np.where(g, gland[r], img)
            if 3 <= k <= 6:
                img = np.where(lesion2d, les[r], img)
                if distractor and k in (4, 5):
                    img = np.where(other2d, les[r], img)  # smaller look-alike on the other side
            if tube:
                img = np.where(tube2d, 1.6, img)  # brightest on every sequence, every slice
            img = img + rng.normal(0, 0.01, img.shape)
            v[k] = ndi.shift(ndi.rotate(img, angle, reshape=False, order=1), (0, shift), order=1)
        vols[r] = v * 1000
    for k in range(3, 7):
        mask[k] = ndi.shift(ndi.rotate(lesion2d.astype(float), angle, reshape=False, order=1), (0, shift), order=1) > 0.5
    return vols, mask


class Prepared:
    def __init__(self, vols):
        self.images = proposal_images(vols, None, SEQ, N)
        self.seq_valid = np.ones((Z, len(SEQ)), bool)
        self.shape_yx = (N, N)


def prepared(vols):
    return Prepared(vols)


def dice(a, b) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def test_symmetry_plane_recovers_tilt_and_offset():
    vols, _ = phantom(distractor=False, tube=False, angle=-8.0, shift=7)
    img = vols["T1"].mean(0)
    angle, axis, fit = symmetry_plane(img)
    m = mirror_map(img.shape, angle, axis)
    mirrored = ndi.map_coordinates(img, [m[0], m[1]], order=1)
    assert abs(angle - 8.0) <= 1.5 and fit > 0.7
    # Mirrored onto itself, far better than a plain left-right flip of the image.
    assert np.abs(mirrored - img).mean() < 0.25 * np.abs(img[:, ::-1] - img).mean()
    lat = lateral_map(img.shape, angle, axis)
    assert lat[48, 90] > 0 > lat[48, 5]


def test_signal_weights_follow_the_report():
    enh = Findings(signal={"T2": "hyper", "enhancement": "avid"})
    region, core, key = signal_weights(enh, SEQ)
    assert key == "T1C" and core == {"T1C": 1.0, "T1": -1.0} and region["T2"] > 0
    t2 = Findings(signal={"T2": "hyper", "T1": "hypo"})
    region, core, key = signal_weights(t2, SEQ)
    assert key == "T2" and core["T1"] < 0 and "T1C" not in core
    # Nothing stated on a post-contrast study (no report, or a report naming no signal): scored by
    # its enhancement; the rule before 2026-12-05 (assume_enhancement=False) and a study without a
    # T1C: T2-bright, T1-dark assumed; no T2 either: the first present sequence.
    for undescribed in (None, Findings(side="left", size_mm=20.0)):
        region, core, key = signal_weights(undescribed, SEQ)
        assert key == "T1C" and core == {"T1C": 1.0, "T1": -1.0} and region["T2"] > 0
        assert signal_weights(undescribed, SEQ, assume_enhancement=False)[2] == "T2"
    assert signal_weights(None, ["T1", "T2"])[2] == "T2"
    assert signal_weights(None, ["T1", "T1C"])[2] == "T1C"
    # A report that describes only T2 signal keeps the T2 score even with a T1C present.
    assert signal_weights(Findings(signal={"T2": "hyper"}), SEQ)[2] == "T2"


def test_without_a_report_a_post_contrast_study_finds_the_enhancing_lesion_not_the_larger_oedema():
    # The enhancing lesion (right, columns ~30) against a larger region on the other side that is
    # bright on T2 and dark on T1 but does not enhance, like oedema or a non-enhancing cyst.
    vols, mask = phantom(distractor=False, tube=False, angle=0.0, shift=0)
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    oedema = (((xx - 66) / 9) ** 2 + ((yy - 50) / 12) ** 2) < 1
    for k in range(2, 8):
        vols["T2"][k][oedema] = 950.0
        vols["T1"][k][oedema] = 200.0
        vols["T1C"][k][oedema] = 200.0
    from pgsam_node.inference.proposals import ProposalParams

    prep = prepared(vols)
    got = propose(prep.images, prep.seq_valid, SEQ, AFFINE, prep.shape_yx, None)
    assert got.key_role == "T1C"
    assert (got.region & mask.astype(bool)).sum() > 0.5 * mask.sum()
    assert not (got.region[:, :, 56:]).any()
    # The old rule takes the larger T2-bright region.
    old = propose(prep.images, prep.seq_valid, SEQ, AFFINE, prep.shape_yx, None, ProposalParams(assume_enhancement=False))
    assert old.key_role == "T2" and old.region[:, :, 56:].sum() > (old.region & mask.astype(bool)).sum()


@pytest.mark.parametrize("side", ["left", "right"])
def test_report_side_picks_the_lesion_not_its_mirror_distractor(side):
    # Columns grow towards patient left: a lesion at a low column is on the patient's right.
    col = 30 if side == "right" else 66
    vols, mask = phantom(lesion_col=col)
    prep = prepared(vols)
    f = Findings(side=side, size_mm=10.0, signal={"T2": "hyper", "T1": "hypo", "enhancement": "avid"})
    pr = propose(prep.images, prep.seq_valid, SEQ, AFFINE, prep.shape_yx, f)
    assert pr.key_role == "T1C"
    assert sorted(pr.boxes) == [3, 4, 5, 6]
    assert dice(pr.region, mask.astype(bool)) > 0.6
    for k, bs in pr.boxes.items():
        ys, xs = np.nonzero(mask[k])
        x0, y0, x1, y1 = bs[0]
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
    # The same images read with the columns running to the patient's right: the side flips.
    flipped = AFFINE.copy()
    flipped[0, 0] = -1.0
    other = propose(prep.images, prep.seq_valid, SEQ, flipped, prep.shape_yx, f)
    assert other.region is None or dice(other.region, mask.astype(bool)) < 0.2


def test_stated_size_prefers_the_lesion_over_a_long_tube():
    vols, mask = phantom(distractor=False)
    prep = prepared(vols)
    # T1 is left out of the score (only T2 stated): the tube, bright on every sequence, is then
    # asymmetric on T2 too, and is longer and larger than the 10 mm lesion.
    f = Findings(side="right", signal={"T2": "hyper", "T1": "iso"})
    unsized = propose(prep.images, prep.seq_valid, SEQ, AFFINE, prep.shape_yx, f)
    assert len(unsized.candidates) >= 2
    assert dice(unsized.region, mask.astype(bool)) < 0.2  # the tube has more summed signal
    f.size_mm = 10.0
    sized = propose(prep.images, prep.seq_valid, SEQ, AFFINE, prep.shape_yx, f)
    assert dice(sized.region, mask.astype(bool)) > 0.5


def test_no_in_plane_left_right_axis_gives_no_proposal():
    vols, _ = phantom()
    prep = prepared(vols)
    sagittal = np.array([[0, 0, 4.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    pr = propose(prep.images, prep.seq_valid, SEQ, sagittal, prep.shape_yx, Findings(side="right"))
    assert not pr.boxes and "not in the slice plane" in pr.notes[0]


def test_predictor_decodes_only_inside_the_proposed_boxes():
    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0)
    model = build_model(cfg).eval()
    pred = Predictor(model, cfg, torch.device("cpu"), batch_size=3, threshold=1e-4)  # every decoded pixel counts (logits -20 elsewhere)
    assert pred.proposals
    vols, mask = phantom(lesion_col=30)
    f = Findings(side="right", size_mm=10.0, signal={"T2": "hyper", "enhancement": "avid"})
    res = pred.predict(vols, None, f, None, AFFINE, postprocess=False)
    assert any("decoded" in n for n in res.notes)
    hit = np.flatnonzero(res.mask.reshape(Z, -1).any(1))
    assert set(hit) <= {3, 4, 5, 6} and len(hit) > 0
    # Nothing on the other side of the mid-line.
    assert not res.mask[:, :, 60:].any()


def test_the_zero_shot_path_does_not_grow_its_mask_towards_the_stated_size():
    """model.size_growth_floor is for trained models: the proposals' boxes already follow the
    report's size, and growing the decoder's masks cost Dice on phantoms (docs/model.md)."""
    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0)
    vols, _ = phantom(lesion_col=30)
    f = Findings(side="right", size_mm=60.0, signal={"T2": "hyper", "enhancement": "avid"})
    low, high = (Predictor(build_model(cfg).eval(), cfg, torch.device("cpu"), batch_size=3, threshold=thr).predict(vols, None, f, None, AFFINE)
                 for thr in (1e-4, 0.5))
    # What a grown mask could take (decoded, below the threshold) exists, and is not taken.
    assert high.mask.any() and (low.mask > high.mask).any()
    assert np.array_equal(high.mask.astype(bool), high.prob >= 0.5)
    assert not any(n.startswith("grew") for n in high.notes)


def test_predictor_drops_box_masks_the_decoder_is_unsure_of():
    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0)
    model = build_model(cfg).eval()
    vols, _ = phantom(lesion_col=30)
    f = Findings(side="right", size_mm=10.0, signal={"T2": "hyper", "enhancement": "avid"})
    pred = Predictor(model, cfg, torch.device("cpu"), batch_size=2, threshold=1e-4)
    before = pred.predict(vols, None, f, None, AFFINE, postprocess=False)
    assert set(np.flatnonzero(before.mask.reshape(Z, -1).any(1))) == {3, 4, 5, 6}
    # The decoder's own predicted IoU decides: the box masks of slices 3 and 6 get 0.3, the rest 0.9.
    real = model.forward_parts
    calls = []

    def forward_parts(images, valid, coords, *args, **kw):
        out = real(images, valid, coords, *args, **kw)
        calls.append(len(out["iou"]))
        start = sum(calls[:-1])
        ks = [k for k, bs in sorted(pred_boxes.items()) for _ in bs][start : start + len(out["iou"])]
        out["iou"] = torch.tensor([0.3 if k in (3, 6) else 0.9 for k in ks])
        return out

    from pgsam_node.inference.proposals import proposal_images

    pr = propose(proposal_images(vols, None, SEQ, N), np.ones((Z, 3), bool), SEQ, AFFINE, (N, N), f)
    pred_boxes = pr.boxes
    model.forward_parts = forward_parts
    after = pred.predict(vols, None, f, None, AFFINE, postprocess=False)
    assert set(np.flatnonzero(after.mask.reshape(Z, -1).any(1))) == {4, 5}
    assert any("predicted IoU below 0.70" in n for n in after.notes)


def test_a_slice_with_several_boxes_is_encoded_once_and_each_box_decoded(monkeypatch):
    """Boxes on one slice share one encoder pass (on every device, cache or not), and the slice's
    mask is the union of what each box alone gives."""
    from pgsam_node.inference import proposals as proposals_mod
    from pgsam_node.inference.proposals import Proposal, ProposalParams

    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0)
    model = build_model(cfg).eval()
    vols, _ = phantom(lesion_col=30)
    box_a, box_b, box_c = (np.array(b, np.float32) for b in ([20, 40, 40, 60], [50, 30, 70, 50], [22, 42, 38, 58]))

    def fake(boxes):
        def propose(*_a, **_k):
            return Proposal(boxes=boxes, key_role="T1C", params=ProposalParams(iou_margin=10.0))
        return propose

    encoded = []
    real = model.encode_slices
    monkeypatch.setattr(model, "encode_slices", lambda x: (encoded.append(len(x)), real(x))[1])

    def run(boxes):
        monkeypatch.setattr(proposals_mod, "propose", fake(boxes))
        pred = Predictor(model, cfg, torch.device("cpu"), batch_size=8, threshold=1e-4, embedding_cache_slices=0)
        encoded.clear()
        return pred.predict(vols, None, None, None, AFFINE, postprocess=False).mask.astype(bool)

    both = run({4: [box_a, box_b], 5: [box_c]})
    assert sum(encoded) == 2  # slices 4 and 5, the key sequence only; not once per box
    only_a = run({4: [box_a]})
    only_b = run({4: [box_b]})
    assert both[4].any() and np.array_equal(both[4], only_a[4] | only_b[4])
    assert not both[[k for k in range(Z) if k not in (4, 5)]].any()


def test_a_model_with_enhancing_tissue_z_trims_an_enhancing_lesions_mask_to_what_enhances():
    """``enhancing_tissue_z`` (inference/enhancing.py): the box-filled mask keeps the voxels that
    enhance; a lesion scored by T2 is not trimmed; 0 (the default) leaves the mask as decoded."""
    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    vols, mask = phantom(lesion_col=30)
    truth = mask.astype(bool)
    enhancing = Findings(side="right", size_mm=10.0, signal={"T2": "hyper", "enhancement": "avid"})
    results = {}
    for z in (0.0, 2.0):
        cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0,
                          enhancing_tissue_z=z)
        pred = Predictor(build_model(cfg).eval(), cfg, torch.device("cpu"), batch_size=3, threshold=1e-4)
        results[z] = pred.predict(vols, None, enhancing, None, AFFINE)
        if z:
            t2_only = pred.predict(vols, None, Findings(side="right", size_mm=10.0, signal={"T2": "hyper"}), None, AFFINE)
            assert not any(n.startswith("enhancing tissue") for n in t2_only.notes)
    plain, trimmed = results[0.0].mask.astype(bool), results[2.0].mask.astype(bool)
    assert not any(n.startswith("enhancing tissue") for n in results[0.0].notes)
    assert any(n.startswith("enhancing tissue: kept") for n in results[2.0].notes), results[2.0].notes
    assert (trimmed <= plain).all() and trimmed.sum() < plain.sum()
    # The lesion stays; the unenhanced tissue in its box (T1C equal to T1: the phantom's base) goes.
    # (The phantom's glands enhance mildly, T1C 0.35 against T1 0.30, and may stay.)
    assert (trimmed & truth).sum() >= 0.95 * truth.sum()
    unenhanced = (np.abs(vols["T1C"] - vols["T1"]) < 30) & (vols["T1"] > 400) & (vols["T1"] < 600)
    # (Partial-volume voxels at the lesion's edge enhance a little and may stay.)
    assert (plain & unenhanced).sum() > 0.1 * plain.sum()
    assert (trimmed & unenhanced).sum() < 0.2 * (plain & unenhanced).sum()


def test_model_assume_enhancement_setting_reaches_the_proposals_of_every_zero_shot_model():
    """``model.assume_enhancement`` (config): a site can have unreported post-contrast studies
    sought as T2-bright / T1-dark (the oedema-like region of the phantom) instead of by enhancement."""
    from pgsam_node.config import load_settings

    torch.manual_seed(0)
    arch = get_preset("tiny", localiser="asymmetry", img_size=96, patch_size=8, depth=1)
    cfg = ModelConfig(arch=arch, sequences=SEQ, use_text=False, context_slices=1, threshold=0.5, min_component_mm3=0.0)
    model = build_model(cfg).eval()
    vols, mask = phantom(distractor=False, tube=False, angle=0.0, shift=0)
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    oedema = (((xx - 66) / 9) ** 2 + ((yy - 50) / 12) ** 2) < 1
    for k in range(2, 8):
        vols["T2"][k][oedema], vols["T1"][k][oedema], vols["T1C"][k][oedema] = 950.0, 200.0, 200.0
    masks = {}
    for assume in (True, False):
        m = load_settings(None, model={"assume_enhancement": assume}).model
        assert m.assume_enhancement is assume
        pred = Predictor(model, cfg, torch.device("cpu"), batch_size=3, threshold=1e-4, assume_enhancement=m.assume_enhancement)
        assert pred.proposal_params.assume_enhancement is assume
        res = pred.predict(vols, None, None, None, AFFINE, postprocess=False)
        assert any(f"decoder sees {'T1C' if assume else 'T2'}" in n for n in res.notes), res.notes
        masks[assume] = res.mask.astype(bool)
    assert masks[True].any() and not masks[True][:, :, 56:].any()
    assert masks[False][:, :, 56:].any()


def test_the_router_loads_zero_shot_models_with_the_sites_assume_enhancement():
    from pgsam_node.config import load_settings
    from pgsam_node.inference.router import ModelRouter

    router = ModelRouter.from_settings(load_settings(None, model={"assume_enhancement": False, "device": "cpu"}).model)
    brain = router.for_findings(Findings(gland="brain"))
    assert brain.proposals and brain.proposal_params.assume_enhancement is False
