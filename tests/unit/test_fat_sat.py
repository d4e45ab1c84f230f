"""Fat saturation read from the images, and the companion model it selects (inference.fat_sat)."""

from __future__ import annotations

import numpy as np
import pytest

from pgsam_node.config import ConfigError, load_settings
from pgsam_node.findings import Findings
from pgsam_node.inference.fat_sat import FatSatSwitch, fat_rank, not_fat_saturated
from pgsam_node.inference.router import BUNDLED_MODELS, ModelRouter
from pgsam_node.synth.phantom import generate_case


@pytest.fixture(scope="module")
def pair():
    """One phantom rendered fat-saturated and without fat saturation (same anatomy, same noise)."""
    seed = 4_242
    return generate_case(seed, fat_sat_off=0.0).volumes, generate_case(seed, fat_sat_off=1.0).volumes


def test_fat_is_dark_when_saturated_and_bright_when_not(pair):
    sat, unsat = pair
    for role in ("T2", "T1C"):
        assert fat_rank(sat, None, role) < 0.4
        assert fat_rank(unsat, None, role) > 0.6
    assert not_fat_saturated(sat, None) == {}
    assert set(not_fat_saturated(unsat, None)) == {"T2", "T1C"}
    # Only T2 changed: only T2 is named.
    mixed = {**sat, "T2": unsat["T2"]}
    assert set(not_fat_saturated(mixed, None)) == {"T2"}


def test_the_score_ignores_scanner_scaling(pair):
    """Any increasing mapping of the scored sequence, and gain and offset of the T1."""
    _, unsat = pair
    base = fat_rank(unsat, None, "T2")
    increasing = (lambda v: 37.0 * v + 1200.0, lambda v: np.sqrt(np.maximum(v, 0)) * 900,
                  lambda v: np.exp(3 * v / float(np.max(v))), lambda v: np.log1p(np.maximum(v, 0)))
    for f in increasing:
        for g in (lambda v: v, lambda v: 4095.0 * v + 17.0):
            mapped = {**unsat, "T2": f(unsat["T2"]).astype(np.float32), "T1": g(unsat["T1"]).astype(np.float32)}
            assert fat_rank(mapped, None, "T2") == pytest.approx(base, abs=1e-3)


def test_only_voxels_where_both_sequences_have_data_count(pair):
    sat, unsat = pair
    mixed = {**sat, "T2": unsat["T2"].copy()}
    valid = {"T1": np.ones(sat["T1"].shape, bool), "T2": np.zeros(sat["T1"].shape, bool)}
    valid["T2"][: sat["T1"].shape[0] // 2] = True
    mixed["T2"][sat["T1"].shape[0] // 2 :] = sat["T2"][sat["T1"].shape[0] // 2 :]  # garbage where T2 is invalid
    assert fat_rank(mixed, valid, "T2") > 0.6


def test_unknown_when_the_study_cannot_say(pair):
    sat, _ = pair
    assert fat_rank({"T2": sat["T2"], "T1C": sat["T1C"]}, None, "T2") is None  # no T1
    assert fat_rank({"T1": sat["T1"]}, None, "T2") is None
    assert fat_rank({"T1": sat["T1"], "T2": sat["T2"][:-1]}, None, "T2") is None  # other shape
    assert fat_rank({"T1": np.zeros_like(sat["T1"]), "T2": sat["T2"]}, None, "T2") is None  # constant
    assert fat_rank({**sat, "T2": np.full_like(sat["T2"], 7.0)}, None, "T2") is None
    nothing = {r: np.zeros(sat["T1"].shape, bool) for r in sat}
    assert fat_rank(sat, nothing, "T2") is None  # no voxel valid
    nan = {**sat, "T2": np.full_like(sat["T2"], np.nan)}
    assert fat_rank(nan, None, "T2") is None
    # Unknown counts as saturated: the default model keeps the study.
    assert not_fat_saturated({"T2": sat["T2"]}, None) == {} and not_fat_saturated({}, None) == {}
    assert not_fat_saturated(None, None) == {}


class _Seam:
    """A predictor seam that records its calls (which model runs is what is tested)."""

    def __init__(self, version):
        self.model_version, self.cfg, self.calls = version, f"cfg:{version}", 0

    def predict(self, channels, valid, findings, report_text, affine, postprocess=True):
        from pgsam_node.inference.predictor import InferenceResult

        self.calls += 1
        mask = np.zeros((2, 2, 2), np.uint8)
        return InferenceResult(mask=mask, prob=mask.astype(np.float32), notes=[f"{self.model_version} ran"])


def test_switch_sends_non_fat_saturated_studies_to_the_companion(pair):
    sat, unsat = pair
    default, companion = _Seam("tiny"), _Seam("nfs")
    loads = []
    switch = FatSatSwitch(default, "parotid-tiny-nfs", lambda: loads.append(1) or companion)
    assert switch.model_version == "tiny|parotid-tiny-nfs" and loads == []
    res = switch.predict(sat, None, None, None, None)
    assert res.notes == ["tiny ran"] and switch.cfg == "cfg:tiny" and loads == [] and default.calls == 1
    res = switch.predict(unsat, None, None, None, None)
    assert companion.calls == 1 and switch.cfg == "cfg:nfs" and loads == [1]
    assert "not fat-saturated" in res.notes[0] and "T2 (fat rank" in res.notes[0] and "T1C" in res.notes[0]
    # A threshold above every score keeps the default.
    strict = FatSatSwitch(default, "x", lambda: companion, threshold=0.99)
    strict.predict(unsat, None, None, None, None)
    assert strict.cfg == "cfg:tiny"


def test_router_uses_the_companion_only_for_the_bundled_default_unless_named(tmp_path):
    assert (BUNDLED_MODELS / "parotid-tiny-nfs" / "config.json").is_file()
    default = _Seam("tiny")
    plain = load_settings(None, model={"fallback": None}).model
    assert plain.non_fat_sat == "parotid-tiny-nfs" and plain.fat_sat_companion() == "parotid-tiny-nfs"
    pred = ModelRouter(plain, default, loader=lambda p: _Seam(p.name)).for_findings(Findings(gland="parotid"))
    assert isinstance(pred, FatSatSwitch) and pred.companion_name == "parotid-tiny-nfs"
    # Brain reports still go to their own model.
    routed = ModelRouter(plain, default, loader=lambda p: _Seam(p.name)).for_findings(Findings(gland="brain"))
    assert routed.model_version == "brain-lesion-litemedsam"
    # A site's own model.path: no companion unless it names one.
    own = load_settings(None, model={"path": str(tmp_path), "fallback": None}).model
    assert own.fat_sat_companion() is None
    assert ModelRouter(own, default).for_findings(Findings(gland="parotid")) is default
    named = load_settings(None, model={"path": str(tmp_path), "non_fat_sat": str(tmp_path / "c"), "fallback": None}).model
    assert named.fat_sat_companion() == str(tmp_path / "c")
    off = load_settings(None, model={"non_fat_sat": None, "fallback": None}).model
    assert ModelRouter(off, default).for_findings(Findings(gland="parotid")) is default
    # With the fallback on, the switch is the fallback's primary.
    both = load_settings(None).model
    pred = ModelRouter(both, default).for_findings(Findings(gland="parotid", present=True))
    assert pred.model_version == "tiny|parotid-tiny-nfs+parotid-litemedsam"


@pytest.mark.parametrize("bad", [0, 1, -0.2, 1.5, "high"])
def test_invalid_threshold_is_refused(bad):
    with pytest.raises(ConfigError) as err:
        load_settings(None, model={"fat_rank_threshold": bad})
    assert "fat_rank_threshold" in str(err.value)


def test_bundled_companion_segments_non_fat_saturated_studies_better_and_leaves_the_rest_alone():
    """The real bundled models on fast-path phantoms (seeds outside every training set)."""
    from pgsam_node.training.metrics import dice
    from pgsam_node.training.sources import synthetic_study

    settings = load_settings(None, model={"fallback": None}).model
    router = ModelRouter.from_settings(settings)
    default = router.default
    switched, alone = [], []
    for seed in range(3_000_000, 3_000_006):
        for off in (0.0, 1.0):
            st = synthetic_study(seed, fat_sat_off=off)
            pred = router.for_findings(st.findings)
            res = pred.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
            base = default.predict(st.volumes, st.valid, st.findings, st.report, st.affine)
            if off == 0.0:  # fat-saturated: the default model ran, mask unchanged
                assert pred.used is default and np.array_equal(res.mask, base.mask)
                continue
            assert pred.used.model_version.startswith("parotid-tiny-nfs-")
            assert any("not fat-saturated" in n for n in res.notes)
            switched.append(dice(res.mask.astype(bool), st.mask.astype(bool)))
            alone.append(dice(base.mask.astype(bool), st.mask.astype(bool)))
    assert np.mean(switched) > np.mean(alone) + 0.1, (switched, alone)


def test_fallback_after_the_companion_names_the_model_that_ran(pair):
    from pgsam_node.inference.choice import model_that_ran
    from pgsam_node.inference.router import WithFallback

    _, unsat = pair
    default, companion, second = _Seam("tiny"), _Seam("nfs"), _Seam("zero-shot")
    second.predict = lambda *a, **k: _found(second)
    pred = WithFallback(FatSatSwitch(default, "parotid-tiny-nfs", lambda: companion), "zero-shot", lambda: second, 5, 3.0)
    res = pred.predict(unsat, None, Findings(present=True), None, np.eye(4))
    assert model_that_ran(pred) == "zero-shot" and pred.cfg == "cfg:zero-shot"
    assert any(n.startswith("nfs found nothing; fallback zero-shot") for n in res.notes), res.notes
    assert model_that_ran(default) == "tiny"


def _found(seam):
    from pgsam_node.inference.predictor import InferenceResult

    mask = np.zeros((2, 2, 2), np.uint8)
    mask[0, 0, 0] = 1
    return InferenceResult(mask=mask, prob=mask.astype(np.float32), notes=[f"{seam.model_version} ran"])
