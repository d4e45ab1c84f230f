"""Inference: the one predictor loaded from a model folder, its preprocessing and post-processing.

:class:`StudyPredictor` is what the pipeline needs of a loaded model: :class:`.predictor.Predictor`,
:class:`.router.ModelRouter` and a test's stand-in all provide it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pgsam_node.findings import Findings


class StudyPredictor(Protocol):
    """A loaded model as the pipeline uses it.

    ``for_findings`` returns the predictor that segments a study whose report gave ``findings``
    (itself for a single model; the region's model, or the default with its fallback, for a
    router). ``predict`` returns an object with ``mask`` (Z, Y, X) and ``prob`` (or None); a
    ``cfg`` attribute (segment codes, weights hash), where present, describes the model that
    produced the mask.
    """

    @property
    def model_version(self) -> str: ...

    def for_findings(self, findings: Findings | None) -> StudyPredictor: ...

    def predict(self, channels: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None, findings: Findings | None,
                report_text: str | None, affine: np.ndarray) -> Any: ...
