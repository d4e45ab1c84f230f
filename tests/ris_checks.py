"""Matching checks shared by the SQLite, embedded and PostgreSQL RIS tests."""

from __future__ import annotations

import pytest

from pgsam_node.reports.ris import AmbiguousReportError, StudyKey, find_report, lookup_report


def check_matching(settings, db) -> None:
    def find(acc, suid, pid, day="20261120"):
        return find_report(StudyKey(acc, suid, pid, day), settings.ris, db)

    m = find("A1", "1.2.840.1.1", "P1")
    assert (m.matched_by, m.status, m.version, m.status_class) == ("accession_number", "C", 3, "amended")
    assert m.text.startswith("Amended")
    assert len(m.hash) == 64

    # Preliminary only: none, with a note; with use_preliminary: the preliminary one.
    m, note = lookup_report(StudyKey("A2", None, "P2", "20261120"), settings.ris, db)
    assert m is None and "preliminary" in note
    settings.ris.use_preliminary = True
    try:
        m = find("A2", None, "P2")
        assert m.status == "P" and m.status_class == "preliminary"
        # A final report still beats a newer preliminary one when both exist.
        assert find("A1", None, "P1").status == "C"
    finally:
        settings.ris.use_preliminary = False

    assert find("A3", None, "P3").text == "Final v2 re-signed."
    # Unknown accession on the study side, found by UID.
    m = find("NOPE", "1.2.840.1.4", "P4")
    assert m.matched_by == "study_instance_uid" and m.text == "Report by UID."
    # No accession, no UID: PatientID within the date window (study one day later).
    m = find(None, None, "P5", "20261121")
    assert m.matched_by == "patient_id" and m.text == "Report by patient."
    # Outside the window: nothing.
    assert find(None, None, "P7", "20261120") is None
    # The study has its own accession: a patient report under another accession is another exam.
    m, note = lookup_report(StudyKey("A5-OTHER", None, "P5", "20261120"), settings.ris, db)
    assert m is None and "another accession" in note
    # Two exams of the patient in the window: ambiguous, never guessed.
    with pytest.raises(AmbiguousReportError) as ei:
        find(None, None, "P6", "20261120")
    assert ei.value.candidates == 2 and "ambiguous" in ei.value.note
    # Accession collision with another patient: ignored and noted.
    m, note = lookup_report(StudyKey("A8", None, "P8", "20261120"), settings.ris, db)
    assert m is None and "another patient" in note
    # Unknown status: not a report of record.
    assert find("A9", None, "P9") is None
    # Amendment detection relies on the hash changing with the version.
    assert find("A1", None, "P1").hash != find("A3", None, "P3").hash
