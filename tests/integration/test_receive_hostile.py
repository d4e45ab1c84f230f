"""Hostile data sets (issue 14): UID policy, re-send policy, deflate bombs, bounded parsing.

Each case goes over a real association on localhost (a byte-level client, so a data set can carry
what pydicom would not write) into the in-process listener.
"""

from __future__ import annotations

import zlib

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select

from pgsam_node.config import load_settings
from pgsam_node.db.models import AuditLog, Instance, Study
from pgsam_node.ingest.dicomnet import dimse
from tests.factories import mr_instance
from tests.helpers import free_port

from .ingest_fixtures import running_listener
from .test_acceptor import RawClient, _ctx, _encode_dataset

DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.fixture
def settings(tmp_path):
    return load_settings(None, dicom={"port": free_port(), "refuse_below_free_bytes": 0},
                         storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0})


def _store_raw(port: int, items, calling: str = "RAWSCU", ts: str = ExplicitVRLittleEndian) -> list[int]:
    """C-STORE each (request SOP UID, data set bytes) on one association; the statuses."""
    c = RawClient(port)
    kind, _ = c.associate([_ctx(1, MRImageStorage, ts)], calling=calling)
    assert kind == 2
    out = []
    for k, (sop_uid, data) in enumerate(items):
        cmd = {dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: k + 1,
               dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage, dimse.AFFECTED_SOP_INSTANCE_UID: sop_uid,
               dimse.PRIORITY: 0}
        out.append(c.message(1, cmd, data)[dimse.STATUS])
    c.release()
    c.close()
    return out


def _ds_bytes(ds) -> bytes:
    return _encode_dataset(ds)


def _rows(db):
    with db.session() as s:
        return {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}


def test_long_uids_are_refused_never_truncated(settings):
    """A 67-character SOP Instance UID whose first 64 characters are a stored instance's UID, and
    two 65-character Study UIDs with a common 64-character prefix: refused, nothing replaced."""
    study, series = generate_uid(), generate_uid()
    legit_uid = ("1.2.826.0.1.3680043.8.498." + "1" * 64)[:64]
    legit = mr_instance(study, series, 0, sop_uid=legit_uid)
    long_uid = legit_uid + ".77"
    hostile = mr_instance(study, series, 1, seed=5, sop_uid=long_uid)
    prefix = ("1.2.826.0.1.3680043.8.498." + "2" * 64)[:64]
    a = mr_instance(prefix + "1", generate_uid(), 0)
    b = mr_instance(prefix + "2", generate_uid(), 1)
    with running_listener(settings) as (lst, db):
        assert _store_raw(lst.port, [(legit_uid, _ds_bytes(legit))]) == [0]
        before = (settings.storage_root / _rows(db)[legit_uid]).read_bytes()
        statuses = _store_raw(lst.port, [(long_uid, _ds_bytes(hostile)), (a.SOPInstanceUID, _ds_bytes(a)),
                                         (b.SOPInstanceUID, _ds_bytes(b))])
        assert statuses == [0xC210, 0xC210, 0xC210]
        assert _rows(db) == {legit_uid: _rows(db)[legit_uid]}
        assert (settings.storage_root / _rows(db)[legit_uid]).read_bytes() == before
        with db.session() as s:
            assert [x.study_uid for x in s.scalars(select(Study))] == [study]


@pytest.mark.parametrize("bad", ["1.2.3.\u00e94", "1.2.3.abc", "1.2..3"])
def test_invalid_request_uid_gets_c210_not_a700(settings, bad):
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    data = _ds_bytes(ds)
    with running_listener(settings) as (lst, db):
        # The request's UID as raw bytes (UTF-8 for the non-ASCII one).
        c = RawClient(lst.port)
        c.associate([_ctx(1, MRImageStorage)])
        cmd = dimse.encode_command({dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: 1,
                                    dimse.AFFECTED_SOP_CLASS_UID: MRImageStorage, dimse.PRIORITY: 0,
                                    dimse.COMMAND_DATA_SET_TYPE: 1})
        raw = bad.encode("utf-8")
        raw += b"\x00" * (len(raw) % 2)
        el = (0x0000).to_bytes(2, "little") + (0x1000).to_bytes(2, "little") + len(raw).to_bytes(4, "little") + raw
        body = cmd[12:] + el
        cmd = cmd[:8] + len(body).to_bytes(4, "little") + body
        from pgsam_node.ingest.dicomnet import pdu

        for p in pdu.encode_p_data(1, True, cmd, 16384):
            c.send(p)
        for p in pdu.encode_p_data(1, False, data, 16384):
            c.send(p)
        kind, rsp = c.read_pdu()
        parts = [bytes(d) for _, _, d in pdu.iter_pdvs(memoryview(rsp))]
        assert dimse.decode_command(b"".join(parts))[dimse.STATUS] == 0xC210
        c.release()
        c.close()
        assert _rows(db) == {}


def test_repeated_sop_instance_uid_element_is_read_as_pydicom_reads_it(settings):
    """A second (0008,0018) after (0020,0013): pydicom reads the second value, so does the node."""
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    first, second = ds.SOPInstanceUID, generate_uid()
    data = _ds_bytes(ds)
    inst_number = data.index(b"\x20\x00\x13\x00")  # (0020,0013) in explicit VR LE
    vlen = int.from_bytes(data[inst_number + 6:inst_number + 8], "little")
    cut = inst_number + 8 + vlen
    raw = second.encode() + b"\x00" * (len(second) % 2)
    dup = b"\x08\x00\x18\x00UI" + len(raw).to_bytes(2, "little") + raw
    data = data[:cut] + dup + data[cut:]
    with running_listener(settings) as (lst, db):
        assert _store_raw(lst.port, [(first, data)]) == [0xA900]
        assert _rows(db) == {}
        assert _store_raw(lst.port, [(second, data)]) == [0]
        assert list(_rows(db)) == [second]


def _resend_case(settings, policy, other_series: bool, calling2: str):
    settings.dicom.resend_policy = policy
    study, series = generate_uid(), generate_uid()
    first = mr_instance(study, series, 0)
    again = mr_instance(study if not other_series else generate_uid(), generate_uid() if other_series else series, 0,
                    seed=42, sop_uid=first.SOPInstanceUID)
    lst_ctx = running_listener(settings)
    lst, db = lst_ctx.__enter__()
    try:
        assert _store_raw(lst.port, [(first.SOPInstanceUID, _ds_bytes(first))], calling="PACSA") == [0]
        path = _rows(db)[first.SOPInstanceUID]
        original = (settings.storage_root / path).read_bytes()
        status = _store_raw(lst.port, [(first.SOPInstanceUID, _ds_bytes(again))], calling=calling2)[0]
        rows = _rows(db)
        with db.session() as s:
            audit = [(a.action, a.detail) for a in s.scalars(select(AuditLog))]
        quarantined = sorted((settings.storage_root / "quarantine").rglob("*.dcm"))
        spool_files = sorted(settings.spool_dir.rglob("*.dcm"))
        return status, path, original, rows, audit, quarantined, spool_files, _ds_bytes(again)
    finally:
        lst_ctx.__exit__(None, None, None)


@pytest.mark.parametrize("other_series, calling2", [(True, "PACSA"), (True, "PACSB"), (False, "PACSB")])
def test_conflicting_resend_keeps_the_first_and_quarantines_the_copy(settings, other_series, calling2):
    status, path, original, rows, audit, quarantined, spool_files, again = _resend_case(
        settings, "keep_and_flag", other_series, calling2)
    assert status == 0xB000
    assert list(rows.values()) == [path]
    assert (settings.storage_root / path).read_bytes() == original  # the first copy untouched
    assert [f.relative_to(settings.storage_root).as_posix() for f in spool_files] == [path]
    assert len(quarantined) == 1 and quarantined[0].read_bytes().endswith(again)
    assert [a for a, _ in audit] == ["resend_conflict"]
    assert audit[0][1]["kept_path"] == path


@pytest.mark.parametrize("other_series, calling2", [(True, "PACSA"), (False, "PACSB")])
def test_conflicting_resend_is_refused_under_reject(settings, other_series, calling2):
    status, path, original, rows, audit, quarantined, spool_files, _ = _resend_case(
        settings, "reject", other_series, calling2)
    assert status == 0x0111
    assert list(rows.values()) == [path]
    assert (settings.storage_root / path).read_bytes() == original
    assert len(spool_files) == 1 and not quarantined and not audit
    assert not list(settings.tmp_dir.glob("*[0-9].part"))


def test_overwrite_same_source_still_protects_against_other_sources(settings):
    status, path, original, rows, _, quarantined, _, _ = _resend_case(
        settings, "overwrite_same_source", True, "PACSB")
    assert status == 0xB000
    assert (settings.storage_root / path).read_bytes() == original and len(quarantined) == 1


def test_identical_resend_from_another_ae_is_idempotent(settings):
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    with running_listener(settings) as (lst, db):
        assert _store_raw(lst.port, [(ds.SOPInstanceUID, _ds_bytes(ds))], calling="PACSA") == [0]
        assert _store_raw(lst.port, [(ds.SOPInstanceUID, _ds_bytes(ds))], calling="PACSB") == [0]
        assert len(_rows(db)) == 1
    assert not (settings.storage_root / "quarantine").exists()


def _deflate(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


def test_deflate_bomb_is_refused_and_normal_deflate_is_stored(settings):
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    data = _ds_bytes(ds)
    # A legitimate deflated data set, then one whose tail inflates to 256 MB of zeros.
    good = _deflate(data)
    bomb_ds = mr_instance(generate_uid(), generate_uid(), 1)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = z.compress(_ds_bytes(bomb_ds))
    chunk = b"\x00" * (1 << 20)
    for _ in range(256):
        bomb += z.compress(chunk)
    bomb += z.flush()
    with running_listener(settings) as (lst, db):
        statuses = _store_raw(lst.port, [(ds.SOPInstanceUID, good), (bomb_ds.SOPInstanceUID, bomb)], ts=DEFLATED)
        assert statuses == [0x0000, 0xC210]
        assert list(_rows(db)) == [ds.SOPInstanceUID]
        stored = (settings.storage_root / _rows(db)[ds.SOPInstanceUID]).read_bytes()
        assert stored.endswith(good)  # kept as received, deflated


def test_unscannable_header_parse_is_bounded(settings, monkeypatch):
    """The first instance of a series is read by pydicom (classification evidence); with 40 MB of
    private data before the pixel data it is given at most dicom.max_header_parse_bytes (a spy
    on the seam), and the identity and evidence before the private block still count."""
    import pgsam_node.ingest.listener as listener_mod

    seen = []
    real = listener_mod.parse_header

    def spy(stream, *a, **kw):
        seen.append(len(stream.getbuffer()) if hasattr(stream, "getbuffer") else -1)
        return real(stream, *a, **kw)

    monkeypatch.setattr(listener_mod, "parse_header", spy)
    settings.dicom.max_header_parse_bytes = 1 << 20
    ds = mr_instance(generate_uid(), generate_uid(), 0)
    ds.add_new(0x00291010, "OB", b"\x00" * (40 << 20))
    data = _ds_bytes(ds)
    with running_listener(settings) as (lst, db):
        status = _store_raw(lst.port, [(ds.SOPInstanceUID, data)])[0]
    assert status == 0x0000
    assert seen and max(seen) <= (1 << 20) + 1024
