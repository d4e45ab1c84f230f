"""The second, independent phantom generator (pgsam_node.synth.second): the studies it writes are
read by the node's own classifier and geometry stage, and its training cases feed the trainer."""

from __future__ import annotations

import numpy as np
import pydicom

from pgsam_node.assemble.classify import classify_series, shared_exam_values
from pgsam_node.ingest.evidence import classification_headers
from pgsam_node.reports.parse import parse_report
from pgsam_node.synth.second import training_case, write_foreign_study


def test_a_written_study_is_classified_by_its_headers_and_its_report_names_the_lesion(tmp_path):
    fs = write_foreign_study(3, tmp_path / "study")
    headers = {}
    for sub in sorted(p for p in fs.folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.dcm"))
        assert files
        headers[sub.name] = classification_headers(pydicom.dcmread(files[0], stop_before_pixels=True))
    shared = shared_exam_values(list(headers.values()))
    roles = {name: classify_series(h, shared=shared)[0] for name, h in headers.items()}
    assert sorted(roles.values()) == ["T1", "T1C", "T2"]
    f = parse_report(fs.report)
    assert f.present and f.side == fs.side and f.gland == "parotid"
    assert fs.truth.any() and fs.truth.ndim == 3


def test_training_cases_are_deterministic_and_the_mask_lies_on_the_stated_side():
    a, b = training_case(500_000), training_case(500_000)
    assert all(np.array_equal(a.volumes[r], b.volumes[r]) for r in ("T1", "T2", "T1C"))
    assert a.report == b.report
    for seed in range(500_000, 500_004):
        c = training_case(seed)
        assert {v.shape for v in c.volumes.values()} == {c.mask.shape}
        assert c.mask.any()
        # patient left is +x in LPS: the lesion's centre lies on the side the report names
        z, y, x = np.nonzero(c.mask)
        lps_x = (c.affine @ np.array([x.mean(), y.mean(), z.mean(), 1.0]))[0]
        assert (lps_x > 0) == (c.side == "left")
        assert parse_report(c.report).side == c.side


def test_the_trainer_takes_second_generator_studies(tmp_path):
    from pgsam_node.geometry.normalize import NormParams
    from pgsam_node.training.train import synthetic_train_set

    base = synthetic_train_set([0], ["T1", "T2", "T1C"], 128, NormParams(), None)
    mixed = synthetic_train_set([0], ["T1", "T2", "T1C"], 128, NormParams(), tmp_path, second_generator=2)
    assert len(mixed.case_ids) == len(base.case_ids) + 2
    assert [c for c in mixed.case_ids if c.startswith("second-")] == ["second-500000", "second-500001"]
    assert list(tmp_path.glob("synthetic-*.npz"))  # cached under its own key
