"""model.by_region: the report's region picks the model (pgsam_node.inference.router)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pgsam_node.config import ConfigError, load_settings
from pgsam_node.findings import Findings
from pgsam_node.inference.router import BUNDLED_MODELS, ModelRouter, resolve_model


def _router(by_region, fallback=None):
    settings = load_settings(None, model={"by_region": by_region, "fallback": fallback})
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

    settings = load_settings(None, model={"by_region": {"brain": str(tmp_path / "missing")}})
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
    settings = load_settings(None, model={"fallback": "parotid-litemedsam"})
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
