"""model.by_region: the report's region picks the model (pgsam_node.inference.router)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pgsam_node.config import ConfigError, load_settings
from pgsam_node.findings import Findings
from pgsam_node.inference.router import BUNDLED_MODELS, ModelRouter, resolve_model


def _router(by_region, fallback=None):
    settings = load_settings(None, model={"by_region": by_region, "fallback": fallback, "non_fat_sat": None})
    loads = []

    def loader(path):
        loads.append(path)
        return SimpleNamespace(model_version=f"routed:{path.name}", path=path)

    default = SimpleNamespace(model_version="default-model", cfg="default-cfg")
    return ModelRouter(settings.model, default, loader=loader), default, loads


def test_default_configuration_routes_brain_reports_to_the_bundled_zero_shot_model():
    assert load_settings(None).model.by_region == {"brain": "brain-lesion-litemedsam"}
    router, default, loads = _router({"brain": "brain-lesion-litemedsam"})
    assert router.for_findings(Findings(gland="parotid")) is default
    assert router.for_findings(None) is default and router.for_findings(Findings()) is default
    brain = router.for_findings(Findings(gland="brain", side="left"))
    assert brain.model_version == "routed:brain-lesion-litemedsam"
    assert loads == [BUNDLED_MODELS / "brain-lesion-litemedsam"]
    # Loaded once, then kept.
    assert router.for_findings(Findings(gland="brain")) is brain and len(loads) == 1
    # Code that does not route sees the default model.
    assert router.model_version == "default-model" and router.cfg == "default-cfg"


def test_empty_mapping_sends_everything_to_model_path():
    router, default, loads = _router({})
    assert router.for_findings(Findings(gland="brain")) is default and loads == []


def test_folder_paths_and_bundled_names(tmp_path):
    assert resolve_model("brain-lesion-litemedsam") == BUNDLED_MODELS / "brain-lesion-litemedsam"
    assert (BUNDLED_MODELS / "brain-lesion-litemedsam" / "config.json").is_file()
    assert resolve_model(str(tmp_path)) == tmp_path
    assert resolve_model("no-such-bundled-model") .name == "no-such-bundled-model"  # a relative folder, checked at load


@pytest.mark.parametrize("bad", [{"liver": "x"}, {"brain": " "}])
def test_invalid_routes_are_refused_with_a_clear_error(bad):
    with pytest.raises(ConfigError) as err:
        load_settings(None, model={"by_region": bad})
    assert "by_region" in str(err.value)


def test_a_routed_folder_that_does_not_load_fails_that_study_not_the_default(tmp_path):
    from pgsam_node.errors import ModelError

    settings = load_settings(None, model={"by_region": {"brain": str(tmp_path / "missing")}, "non_fat_sat": None})
    router = ModelRouter(settings.model, SimpleNamespace(model_version="default"))
    with pytest.raises(ModelError):
        router.for_findings(Findings(gland="brain"))
    assert router.for_findings(Findings(gland="parotid")).model_version == "default"


class _Fixed:
    """A predictor seam returning a fixed mask (the fallback logic is what is tested)."""

    def __init__(self, version, found):
        self.model_version, self.found, self.calls, self.cfg = version, found, 0, f"cfg:{version}"

    def predict(self, channels, valid, findings, report_text, affine, postprocess=True):
        import numpy as np

        from pgsam_node.inference.predictor import InferenceResult

        self.calls += 1
        mask = np.zeros((2, 4, 4), np.uint8)
        mask[0, 1, 1] = self.found
        return InferenceResult(mask=mask, prob=mask.astype("float32"), notes=[f"{self.model_version} ran"])


def test_fallback_segments_when_the_default_finds_nothing_but_the_report_states_a_lesion():
    assert load_settings(None).model.fallback == "parotid-litemedsam"
    assert (BUNDLED_MODELS / "parotid-litemedsam" / "config.json").is_file()
    settings = load_settings(None, model={"fallback": "parotid-litemedsam", "non_fat_sat": None})
    second = _Fixed("zero-shot", 1)
    loads = []
    router = ModelRouter(settings.model, _Fixed("tiny", 0), loader=lambda p: loads.append(p) or second)
    lesion = Findings(gland="parotid", present=True, side="left")
    pred = router.for_findings(lesion)
    assert pred.model_version == "tiny+parotid-litemedsam" and loads == []  # nothing loaded before it is needed
    res = pred.predict(None, None, lesion, None, None)
    assert res.mask.any() and pred.cfg == "cfg:zero-shot" and loads == [BUNDLED_MODELS / "parotid-litemedsam"]
    assert any("fallback" in n for n in res.notes)
    # The default found something: its result stands, the fallback does not run.
    router2 = ModelRouter(settings.model, _Fixed("tiny", 1), loader=lambda p: second)
    calls = second.calls
    res2 = router2.for_findings(lesion).predict(None, None, lesion, None, None)
    assert res2.notes == ["tiny ran"] and second.calls == calls
    # No stated lesion (or no report), or the fallback switched off: the default alone.
    assert router.for_findings(Findings(gland="parotid")) is router.default
    assert router.for_findings(None) is router.default
    off, default, _ = _router({}, fallback=None)
    assert off.for_findings(lesion) is default


class _Mask:
    """A predictor seam returning a given (Z, Y, X) mask."""

    def __init__(self, version, mask):
        self.model_version, self.mask, self.calls, self.cfg = version, mask, 0, f"cfg:{version}"

    def predict(self, channels, valid, findings, report_text, affine, postprocess=True):
        import numpy as np

        from pgsam_node.inference.predictor import InferenceResult

        self.calls += 1
        return InferenceResult(mask=self.mask.copy(), prob=self.mask.astype(np.float32), notes=[f"{self.model_version} ran"])


def _blob(shape, centre, half):
    import numpy as np

    m = np.zeros(shape, np.uint8)
    z, y, x = centre
    m[z - half[0] : z + half[0] + 1, y - half[1] : y + half[1] + 1, x - half[2] : x + half[2] + 1] = 1
    return m


def _scatter(shape, n):
    import numpy as np

    m = np.zeros(shape, np.uint8)
    for i in range(n):  # n separate 2x2x2 specks, 4 voxels apart
        z, y, x = 2 + 4 * (i % 4), 2 + 4 * ((i // 4) % 4), 2 + 4 * (i // 16)
        m[z : z + 2, y : y + 2, x : x + 2] = 1
    return m


def test_fallback_replaces_a_result_the_report_contradicts():
    import numpy as np

    settings = load_settings(None)
    assert settings.model.fallback_components_per_lesion == 5 and settings.model.fallback_size_ratio == 3.0
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 1 mm columns and rows, 2 mm slices
    shape = (20, 40, 40)
    one_lesion = Findings(gland="parotid", present=True, side="left", size_mm=20.0)
    good = _blob(shape, (10, 20, 20), (4, 9, 9))  # 9 slices x 2 mm = 18 mm, 19 x 19 mm in-plane: agrees
    scatter = _scatter(shape, 12)  # 12 regions for one stated lesion
    speck = _blob(shape, (10, 20, 20), (0, 1, 1))  # one 3 mm region for a 20 mm lesion

    def run(primary_mask, second_mask, findings=one_lesion, **model):
        s = load_settings(None, model=model).model
        first, second = _Mask("tiny", primary_mask), _Mask("zero-shot", second_mask)
        pred = ModelRouter(s, first, loader=lambda p: second).for_findings(findings)
        res = pred.predict(None, None, findings, None, affine)
        return res, pred, second.calls

    # The default's result agrees with the report: it stands, the fallback does not run.
    res, pred, calls = run(good, scatter)
    assert calls == 0 and pred.cfg == "cfg:tiny" and np.array_equal(res.mask, good)
    # Twelve regions for one lesion: the fallback's agreeing result replaces it.
    res, pred, calls = run(scatter, good)
    assert calls == 1 and pred.cfg == "cfg:zero-shot" and np.array_equal(res.mask, good)
    assert any("12 separate regions" in n and "contradicts the report" in n for n in res.notes)
    # Twelve specks around one region of the stated size: that region is kept, no fallback runs;
    # with fallback_keep_stated_regions off the fallback segments the study as before.
    lesion_and_specks = np.maximum(good, _scatter(shape, 12))
    res, pred, calls = run(lesion_and_specks, scatter)
    assert calls == 0 and pred.cfg == "cfg:tiny" and np.array_equal(res.mask, good)
    assert any("largest region(s)" in n and "were kept" in n for n in res.notes)
    res, pred, calls = run(lesion_and_specks, good, fallback_keep_stated_regions=False)
    assert calls == 1 and pred.cfg == "cfg:zero-shot"
    # ... but not the largest piece of a scatter: a 9 mm region (it agrees with the stated 20 mm
    # within the ratio 3) holding less than half of what the model marked goes to the fallback;
    # with fallback_keep_min_share 0 it is kept.
    assert settings.model.fallback_keep_min_share == 0.5
    small = _blob(shape, (10, 20, 20), (0, 4, 4))  # 81 voxels, 9 x 9 mm on one slice
    small_and_specks = np.maximum(small, _scatter(shape, 12))  # + 12 specks of 8 voxels
    res, pred, calls = run(small_and_specks, good)
    assert calls == 1 and pred.cfg == "cfg:zero-shot" and np.array_equal(res.mask, good)
    assert any("largest region(s) hold only 46% of it" in n for n in res.notes), res.notes
    res, pred, calls = run(small_and_specks, good, fallback_keep_min_share=0)
    assert calls == 0 and np.array_equal(res.mask, small)
    for bad in (-0.1, 1.5, "most"):
        with pytest.raises(ConfigError, match="fallback_keep_min_share"):
            load_settings(None, model={"fallback_keep_min_share": bad})
    # ... but a report without a size cannot vouch for the region kept: the fallback runs.
    res, pred, calls = run(lesion_and_specks, good, findings=Findings(gland="parotid", present=True, side="left"))
    assert calls == 1 and np.array_equal(res.mask, good)
    # A 3 mm region for a stated 20 mm lesion: the size check.
    res, pred, calls = run(speck, good)
    assert calls == 1 and np.array_equal(res.mask, good) and any("largest region 3 mm" in n for n in res.notes)
    # Twelve regions for four stated lesions (5 per lesion allowed): no doubt.
    four = Findings(gland="parotid", present=True, count=4)
    res, pred, calls = run(scatter, good, findings=four)
    assert calls == 0 and np.array_equal(res.mask, scatter)
    # The fallback is no better (empty, or doubted too): the default's result stands, both said.
    for second in (np.zeros(shape, np.uint8), speck):
        res, pred, calls = run(scatter, second)
        assert calls == 1 and pred.cfg == "cfg:tiny" and np.array_equal(res.mask, scatter)
        assert any("was no better" in n for n in res.notes)
    # Checks switched off by their config keys: only an empty result calls the fallback.
    no_size = Findings(gland="parotid", present=True, side="left")
    res, pred, calls = run(scatter, good, findings=no_size, fallback_components_per_lesion=0)
    assert calls == 0
    res, pred, calls = run(scatter, good, findings=no_size)  # the count check alone calls it
    assert calls == 1
    res, pred, calls = run(speck, good, fallback_size_ratio=0)
    assert calls == 0


def test_doubt_measures_the_extent_in_millimetres_along_the_affine():
    import numpy as np

    from pgsam_node.inference.plausibility import doubt

    mask = _blob((20, 40, 40), (10, 20, 20), (2, 2, 2))  # 5 voxels along each axis
    lesion = Findings(present=True, size_mm=30.0)
    # 5 slices of 6 mm = 30 mm: agrees; with 1 mm slices the largest extent is 5 mm (< 30 / 3).
    assert doubt(mask, np.diag([1.0, 1.0, 6.0, 1.0]), lesion) is None
    assert "largest region 5 mm" in doubt(mask, np.diag([1.0, 1.0, 1.0, 1.0]), lesion)
    # Nothing to check: no report, no mask, no size (one region), no affine.
    assert doubt(mask, None, None) is None
    assert doubt(np.zeros_like(mask), np.eye(4), lesion) is None
    assert doubt(mask, np.eye(4), Findings(present=True)) is None
    assert doubt(mask, None, lesion) is None


@pytest.mark.parametrize("bad", [{"fallback_components_per_lesion": -1}, {"fallback_size_ratio": -0.5}])
def test_invalid_fallback_limits_are_refused(bad):
    with pytest.raises(ConfigError) as err:
        load_settings(None, model=bad)
    assert next(iter(bad)) in str(err.value)
