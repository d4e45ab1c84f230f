"""Streaming writes into the spool (IncomingFile) and temporary files made ahead (TempFiles)."""

from __future__ import annotations

import os

import pydicom
import pytest
from pydicom.uid import generate_uid

from pgsam_node.ingest import spool
from pgsam_node.errors import ReceiveError, StorageFullError
from tests.helpers import wait_for

from ..factories import mr_instance
from .test_spool_assemble import _encode


def _meta(ds):
    return spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "PACS")


def test_streamed_fragments_commit_to_a_readable_part10_file(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    data = _encode(ds)
    f = spool.IncomingFile(settings, _meta(ds))
    for i in range(0, len(data), 1000):  # many small fragments, as PDVs arrive
        f.write(memoryview(data)[i:i + 1000])
    rel = spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = f.commit(rel)
    assert stored.size == stored.path.stat().st_size == len(_meta(ds)) + len(data)
    assert stored.path.read_bytes().endswith(data)
    back = pydicom.dcmread(stored.path)
    assert (back.pixel_array == ds.pixel_array).all()
    # The node's own implementation, not pynetdicom's (which no longer receives).
    assert back.file_meta.ImplementationClassUID == spool.IMPLEMENTATION_CLASS_UID
    assert back.file_meta.ImplementationClassUID.is_valid and "3811" not in spool.IMPLEMENTATION_CLASS_UID
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_commit_without_replace_never_overwrites(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    rel = spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    first = spool.IncomingFile(settings, _meta(ds))
    first.write(b"first")
    stored = first.commit(rel, replace=False)
    second = spool.IncomingFile(settings, _meta(ds))
    second.write(b"other")
    with pytest.raises(spool.AlreadyStored):
        second.commit(rel, replace=False)
    assert stored.path.read_bytes().endswith(b"first")
    assert not second.same_data_set_as(str(stored.path))
    second.replace_existing(rel)
    assert stored.path.read_bytes().endswith(b"other")
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_reserve_is_checked_while_streaming(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    f = spool.IncomingFile(settings, _meta(ds))
    free = spool.free_bytes(settings.storage_root)
    # Leave room for the first step only: the reserve is crossed half-way through the data set.
    tight = settings.model_copy(update={"storage": settings.storage.model_copy(
        update={"min_free_bytes": free - (3 << 20)})})
    f.settings = tight
    with pytest.raises(StorageFullError):
        for _ in range(64):
            f.write(b"\0" * (256 << 10))
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_data_set_size_cap(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    f = spool.IncomingFile(settings, _meta(ds), max_bytes=2 << 20)
    with pytest.raises(ReceiveError, match="max_dataset_bytes"):
        for _ in range(64):
            f.write(b"\0" * (256 << 10))
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_discard_and_reserve_leave_nothing(settings):
    ds = mr_instance(generate_uid(), generate_uid())
    f = spool.IncomingFile(settings, _meta(ds))
    f.write(b"\0" * 1000)
    f.discard()
    assert not spool.leftover_tmp(settings.tmp_dir)
    huge = settings.model_copy(update={"storage": settings.storage.model_copy(update={"min_free_bytes": 1 << 62})})
    with pytest.raises(StorageFullError, match="min_free_bytes"):
        spool.IncomingFile(huge, _meta(ds))
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_temp_files_are_made_ahead_used_once_and_removed_on_close(settings):
    ahead = spool.TempFiles(settings, keep=2)
    try:
        wait_for(lambda: len(list(settings.tmp_dir.iterdir())) == 2, 10, 0.01, what="two files made ahead")
        assert not spool.leftover_tmp(settings.tmp_dir), "empty files made ahead are not leftovers"
        ds = mr_instance(generate_uid(), generate_uid())
        f = spool.IncomingFile(settings, _meta(ds), ahead)
        assert "-ahead-" in f.tmp
        f.write(_encode(ds))
        assert spool.leftover_tmp(settings.tmp_dir) == [settings.tmp_dir / os.path.basename(f.tmp)]
        stored = f.commit(spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        assert pydicom.dcmread(stored.path).SOPInstanceUID == ds.SOPInstanceUID
        wait_for(lambda: len(list(settings.tmp_dir.iterdir())) == 2, 10, 0.01, what="refilled")
        names = {p.name for p in settings.tmp_dir.iterdir()}
        assert os.path.basename(f.tmp) not in names  # a file is never handed out twice
    finally:
        ahead.close()
    assert not any(settings.tmp_dir.iterdir())


def test_clean_tmp_removes_files_made_ahead_after_a_crash(settings):
    ahead = spool.TempFiles(settings, keep=3)
    wait_for(lambda: len(list(settings.tmp_dir.iterdir())) == 3, 10, 0.01, what="files made ahead")
    ahead._closed = True  # as if the process died: the files stay behind
    ahead._wake.set()
    assert spool.clean_tmp(settings) == 3
    assert not any(settings.tmp_dir.iterdir())
