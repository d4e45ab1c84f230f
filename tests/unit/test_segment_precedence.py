"""One precedence for the segment label and codes: explicit node config > model folder > built-in defaults."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from pgsam_node.config import load_settings
from pgsam_node.encode.common import algorithm_info, segment_codes_for, segment_label_for, with_segment_label
from pgsam_node.encode.seg import segment_description
from pgsam_node.flow.pipeline import model_segment_codes

MODELS = Path(__file__).resolve().parents[2] / "pgsam_node" / "resources" / "models"


def _model(name):
    cfg = json.loads((MODELS / name / "config.json").read_text())
    return model_segment_codes(SimpleNamespace(labels=cfg["labels"]))


def test_model_folder_wins_over_defaults():
    s = load_settings(None)
    brain = _model("brain-tumour-tiny")
    assert segment_label_for(s, brain) == "Tumour"  # was "Lesion": seg.segment_label's default won
    assert segment_codes_for(s, brain).anatomy.meaning == "Brain"
    parotid = _model("parotid-tiny")
    assert segment_codes_for(s, parotid).type.meaning == "Mass"  # what the demo SEG sends
    desc = segment_description(with_segment_label(s, segment_label_for(s, brain)), segment_codes_for(s, brain),
                               algorithm_info(None), None)
    assert desc.SegmentLabel == "Tumour"


def test_explicit_node_config_wins_over_the_model_folder():
    s = load_settings(None, seg={"segment_label": "GTV", "segment_codes": {"type": {"value": "108369006", "meaning": "Neoplasm"}}})
    brain = _model("brain-tumour-tiny")
    assert segment_label_for(s, brain) == "GTV"
    assert segment_codes_for(s, brain).type.meaning == "Neoplasm" and segment_codes_for(s, brain).anatomy.meaning == "Parotid gland"
    assert segment_label_for(load_settings(None), None) == "Lesion"  # no model labels: built-in default
