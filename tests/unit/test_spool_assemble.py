"""Spool file format and safety, stability and role selection (no sockets)."""

from __future__ import annotations

import datetime as dt
from io import BytesIO
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import generate_uid

from pgsam_node.ingest import spool
from pgsam_node.assemble.stability import select_roles
from pgsam_node.flow.advance import mark_stable
from pgsam_node.db import Database, Series, Study, utcnow
from pgsam_node.errors import StorageFullError, UnparseableDatasetError
from pgsam_node.ingest.index import index_instance, parse_header

from ..factories import mr_instance


def _encode(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    meta_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_len:]  # the data set alone, as it arrives in a C-STORE


def test_part10_written_from_raw_bytes_reads_back_identical(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    data = _encode(ds)
    meta = spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "PACS")
    rel = spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = spool.write_instance(settings, rel, (meta, data))
    assert stored.path.read_bytes()[-len(data):] == data  # bytes kept as received
    back = pydicom.dcmread(stored.path)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert back.file_meta.SourceApplicationEntityTitle == "PACS"
    assert (back.pixel_array == ds.pixel_array).all()
    assert not any(settings.tmp_dir.iterdir())


def test_hostile_uid_cannot_escape_the_spool():
    rel = spool.spool_relpath("../../etc", "1.2.3", "a/b")
    assert ".." not in rel and rel.count("/") == 3 and rel.startswith("spool/x")
    assert spool.path_component("1.2.840.10008") == "1.2.840.10008"


def test_reserve_refuses_and_leaves_nothing(settings):
    settings.storage.min_free_bytes = 1 << 62
    with pytest.raises(StorageFullError):
        spool.write_instance(settings, "spool/1/2/3.dcm", (b"x" * 10,))
    assert not (settings.storage_root / "spool/1/2/3.dcm").exists()


def test_clean_tmp_removes_only_partial_files(settings):
    settings.tmp_dir.mkdir(parents=True)
    (settings.tmp_dir / "1-2-x.dcm.part").write_bytes(b"half")
    (settings.tmp_dir / "keep.txt").write_text("other")
    assert spool.clean_tmp(settings) == 1
    assert [p.name for p in settings.tmp_dir.iterdir()] == ["keep.txt"]


def test_parse_header_rejects_garbage():
    with pytest.raises(UnparseableDatasetError):
        parse_header(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x10\x00\x00\x00" + b"\xff" * 40)


def _series(uid, role, n, sn):
    return SimpleNamespace(series_uid=uid, role=role, instance_count=n, series_number=sn)


def test_select_roles_tie_break_is_deterministic():
    cands = [_series("1.9", "T1C", 30, 5), _series("1.2", "T1C", 30, 9), _series("1.3", "T1C", 12, 20),
             _series("1.4", "T2", 25, None), _series("1.5", "T2", 25, 4), _series("1.6", "OTHER", 99, 1),
             _series("1.8", "T1", 20, 3), _series("1.7", "T1", 20, 3)]
    for order in (cands, list(reversed(cands))):
        ch = select_roles(order)
        assert ch["T1C"].series_uid == "1.2" and "later series number" in ch["T1C"].reason
        assert ch["T2"].series_uid == "1.5"
        assert ch["T1"].series_uid == "1.7" and "lowest SeriesInstanceUID" in ch["T1"].reason
        assert "OTHER" not in ch
    assert "most instances" in select_roles([_series("a", "T2", 3, 1), _series("b", "T2", 9, 1)])["T2"].reason


def test_mark_stable_is_time_based_and_selects_roles(settings):
    db = Database(settings.database_url)
    try:
        study = generate_uid()
        t0 = utcnow()
        for k, (role, agent) in enumerate((("T1", None), ("T1C", "Gadovist"), ("T2", None))):
            series = generate_uid()
            for i in range(3 + k):
                ds = mr_instance(study, series, i, role=role, agent=agent, series_number=k + 1)
                h = parse_header(spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1") + _encode(ds))
                index_instance(db, settings, h, "spool/x", 1, "1.2.840.10008.1.2.1", now=t0)
        stable = settings.assembly.stable_seconds
        assert mark_stable(db, settings, now=t0 + dt.timedelta(seconds=stable - 1)) == []
        assert mark_stable(db, settings, now=t0 + dt.timedelta(seconds=stable + 1)) == [study]
        assert mark_stable(db, settings, now=t0 + dt.timedelta(seconds=stable + 9)) == []
        with db.session() as s:
            st = s.query(Study).one()
            assert st.state == "STABLE" and "T1=yes, T2=yes, T1C=yes" in st.state_reason
            roles = {x.role: x for x in s.query(Series)}
            assert set(roles) == {"T1", "T1C", "T2"} and all(x.role_selected for x in roles.values())
            assert "selected for T1C" in roles["T1C"].role_reason
    finally:
        db.dispose()


def test_reindex_spool_indexes_files_without_rows(settings):
    from pgsam_node.ingest.index import reindex_spool

    ds = mr_instance(generate_uid(), generate_uid(), role="T1")
    rel = spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write_instance(settings, rel, (spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1"),
                                         _encode(ds)))
    bad = settings.spool_dir / "1.2" / "3.4" / "5.6.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not dicom")
    db = Database(settings.database_url)
    try:
        assert reindex_spool(db, settings) == 1
        assert reindex_spool(db, settings) == 0  # idempotent
        with db.session() as s:
            ser = s.query(Series).one()
            # classified by assembly when the study becomes STABLE; the evidence is kept for it
            assert ser.instance_count == 1 and ser.role is None and ser.headers["SeriesDescription"] == "t1_se_tra"
            from pgsam_node.db import Instance

            inst = s.query(Instance).one()
            assert inst.path == rel and inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert bad.exists()  # never acknowledged, left for an operator, not deleted
    finally:
        db.dispose()


def _fit(uid, role, n, sn, *, rows=256, px=0.9, iop=(1, 0, 0, 0, 1, 0), step=5.0, it=("ORIGINAL", "PRIMARY", "M"),
         desc="t1_se_tra", gr=False, tr=550, te=10):
    headers = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "SeriesDescription": desc, "ProtocolName": desc,
               "ImageType": list(it), "Rows": rows, "Columns": rows, "PixelSpacing": [px, px],
               "ImageOrientationPatient": list(iop), "SliceThickness": step, "ScanningSequence": ["GR" if gr else "SE"],
               "RepetitionTime": tr, "EchoTime": te}
    return SimpleNamespace(series_uid=uid, role=role, instance_count=n, series_number=sn, headers=headers,
                           role_reason=None, role_selected=False)


COR = (1, 0, 0, 0, 0, -1)


def test_fitness_beats_instance_count():
    t2 = _fit("2.1", "T2", 24, 2, desc="t2_tse_tra")
    cands = [
        t2,
        _fit("1.1", "T1C", 160, 9, it=("DERIVED", "SECONDARY", "MPR")),  # reformat with more images
        _fit("1.2", "T1C", 24, 8),  # the acquired axial
        _fit("3.1", "T1", 40, 4, iop=COR),  # coronal, more images
        _fit("3.2", "T1", 24, 3),  # axial like the reference
        _fit("4.1", "T1", 24, 5, px=1.8),  # coarse in-plane
    ]
    ch = select_roles(cands)
    assert ch["T1C"].series_uid == "1.2" and "ORIGINAL over DERIVED" in ch["T1C"].reason
    assert ch["T1"].series_uid == "3.2" and "plane matches the reference" in ch["T1"].reason
    assert len(ch["T1"].ranking) == 3 and "coronal" in ch["T1"].ranking[-2]
    short = select_roles([t2, _fit("5.1", "T1", 30, 1, step=1.0), _fit("5.2", "T1", 22, 2, step=5.0)])
    assert short["T1"].series_uid == "5.2" and "coverage" in short["T1"].reason


def test_calibration_never_selected_and_ranking_noted(settings):
    """Siemens prostate: the 64x64 TurboFLASH calibration has more images than the real T1."""
    from pgsam_node.assemble.stability import apply_roles

    series = [
        _fit("6.1", None, 72, 2, rows=64, px=5.0, gr=True, desc="tfl_2D_36slc_res64_iPAT", tr=3.9, te=1.9),
        _fit("6.2", None, 20, 5, rows=320, px=0.6, desc="t1_tse_tra", tr=650, te=12),
        _fit("6.3", None, 24, 6, rows=320, px=0.6, desc="t1_tse_cor", tr=650, te=12, iop=COR),
        _fit("6.4", None, 22, 4, rows=384, px=0.5, desc="t2_tse_tra", tr=4000, te=100),
    ]
    study = SimpleNamespace(series=series, notes=[])
    choices = apply_roles(study, settings)
    assert series[0].role == "OTHER" and "low_resolution_calibration" in series[0].role_reason
    assert choices["T1"].series_uid == "6.2" and not series[0].role_selected  # axial like the T2 reference
    ranking = [n for n in study.notes if n["code"] == "series_ranking"]
    assert len(ranking) == 1 and ranking[0]["role"] == "T1" and ">" in ranking[0]["message"]
    apply_roles(study, settings)  # re-assembly replaces the ranking note, never duplicates it
    assert len([n for n in study.notes if n["code"] == "series_ranking"]) == 1


def _with_plane(uid, role, n, sn, iop, pixel=0.6):
    s = _series(uid, role, n, sn)
    s.headers = {"ImageType": ["ORIGINAL", "PRIMARY"], "ImageOrientationPatient": iop, "PixelSpacing": [pixel, pixel],
                 "SliceThickness": 3.0}
    return s


def test_reference_prefers_the_axial_acquisition():
    """A protocol with an axial and a coronal post-contrast T1 (parotid protocols often have both):
    the axial one is the reference even when the coronal one is finer, later and longer; the other
    roles are then ranked against it as before."""
    axial, coronal = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]
    cands = [_with_plane("1.1", "T1C", 24, 5, axial, 0.7), _with_plane("1.2", "T1C", 40, 9, coronal, 0.5),
             _with_plane("1.3", "T2", 24, 3, coronal), _with_plane("1.4", "T2", 20, 2, axial)]
    ch = select_roles(cands)
    assert ch["T1C"].series_uid == "1.1" and "for the reference: axial" in ch["T1C"].reason
    assert ch["T2"].series_uid == "1.4" and "plane matches the reference" in ch["T2"].reason
    # With only a coronal T1C it is still the reference (and the geometry stage gives it an axial working grid).
    assert select_roles([_with_plane("1.2", "T1C", 40, 9, coronal)])["T1C"].series_uid == "1.2"


def test_stir_stands_in_for_a_missing_t2(settings):
    """A head-and-neck protocol with STIR instead of a T2 series: the axial STIR becomes the study's
    T2 (recorded as standing in); so does a brain protocol's FLAIR; with a T2 series in the study,
    STIR stays OTHER."""
    from pgsam_node.assemble.stability import apply_roles

    def study(*extra):
        return SimpleNamespace(notes=[], series=[
            _fit("7.1", None, 24, 3, desc="t1_tse_tra", tr=600, te=10),
            _fit("7.2", None, 24, 6, desc="t1_tse_tra_fs_post", tr=600, te=10),
            _fit("7.3", None, 24, 4, desc="COR STIR", tr=4000, te=60, iop=COR),
            _fit("7.4", None, 24, 5, desc="AX STIR", tr=4000, te=60),
            *extra])

    st = study()
    choices = apply_roles(st, settings)
    assert set(choices) == {"T1", "T2", "T1C"}
    assert choices["T2"].series_uid == "7.4" and "no T2 series: stands in for T2" in choices["T2"].reason
    assert "plane matches the reference" in choices["T2"].reason  # the axial STIR, like the T1C
    stir = {s.series_uid: s for s in st.series}
    assert stir["7.4"].role == "T2" and stir["7.4"].role_selected and stir["7.4"].role_reason.startswith("T2 (stands in): OTHER: rule stir")
    assert stir["7.3"].role == "OTHER" and not stir["7.3"].role_selected
    # A brain protocol without T2: its FLAIR is the T2.
    brain = SimpleNamespace(notes=[], series=[_fit("8.1", None, 24, 3, desc="AX T1 pre", tr=600, te=10),
                                              _fit("8.2", None, 24, 6, desc="AX T1 POST GAD", tr=600, te=10),
                                              _fit("8.3", None, 24, 4, desc="AX T2 FLAIR", tr=9000, te=120)])
    assert apply_roles(brain, settings)["T2"].series_uid == "8.3" and brain.series[2].role == "T2"
    st = study(_fit("7.5", None, 24, 7, desc="t2_tse_tra", tr=4000, te=100))
    choices = apply_roles(st, settings)
    assert choices["T2"].series_uid == "7.5" and all(s.role == "OTHER" for s in st.series if s.series_uid in ("7.3", "7.4"))


def test_stands_in_for_is_validated():
    from pgsam_node.assemble.classify import parse_rules
    from pgsam_node.errors import ClassifyError

    rule = {"id": "x", "role": "T1", "when": {"names": ["x"]}, "stands_in_for": "T2"}
    with pytest.raises(ClassifyError, match="stands_in_for"):
        parse_rules({"rules": [rule]})
    with pytest.raises(ClassifyError, match="stands_in_for"):
        parse_rules({"rules": [dict(rule, role="OTHER", stands_in_for="T1C")]})
