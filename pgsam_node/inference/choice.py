"""A predictor that chooses, per study, which of two models segments it (the shared mechanism of
:class:`.router.WithFallback` and :class:`.fat_sat.FatSatSwitch`).

Attribute access falls through to the first model, so code that knows nothing of the choice keeps
working. ``used`` is the model whose mask the last :meth:`predict` returned; ``cfg`` (segment
codes, weights hash for the SEG) is that model's. The model version, read before the images are,
names both.
"""

from __future__ import annotations

from typing import Any


class ChoosingPredictor:
    """Base of the per-study choosers: ``first``, a ``second`` named ``second_name`` and loaded on
    first need by ``load_second``, and the ``joiner`` their versions are written with."""

    joiner = "+"

    def __init__(self, first: Any, second_name: str, load_second) -> None:
        self.first = first
        self.second_name = second_name
        self._load_second = load_second
        self.used = first

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["first"], name)

    @property
    def model_version(self) -> str:
        return f"{self.first.model_version}{self.joiner}{self.second_name}"

    @property
    def cfg(self) -> Any:
        return getattr(self.used, "cfg", None)


def model_that_ran(predictor: Any) -> str:
    """The version of the model whose mask a (possibly wrapped) predictor returned last."""
    ran = predictor
    while isinstance(ran, ChoosingPredictor) and ran.used is not ran:
        ran = ran.used
    return str(getattr(ran, "model_version", ""))
