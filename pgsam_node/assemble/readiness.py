"""Readiness: which series fill the model's roles of a study (chosen when the study became STABLE)."""

from __future__ import annotations

import logging

from pgsam_node.db import SequenceRole, Series, Study

log = logging.getLogger(__name__)
MODEL_ROLES = (SequenceRole.T1.value, SequenceRole.T2.value, SequenceRole.T1C.value)


def selected_series(study: Study) -> dict[str, Series]:
    """The series chosen for each model role (``role_selected``), keyed by role."""
    out: dict[str, Series] = {}
    for se in study.series:
        if se.role in MODEL_ROLES and se.role_selected:
            out[se.role] = se
    return out
