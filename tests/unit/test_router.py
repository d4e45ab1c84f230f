"""model.by_region: the report's region picks the model (pgsam_node.inference.router)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pgsam_node.config import ConfigError, load_settings
from pgsam_node.findings import Findings
from pgsam_node.inference.router import BUNDLED_MODELS, ModelRouter, resolve_model


def _router(by_region):
    settings = load_settings(None, model={"by_region": by_region})
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
