"""The write-ahead journal (storage.write_protocol: journal): records made durable by one flush,
replayed at start-up into the spool (idempotently), torn records ignored, checkpoints honoured."""

from __future__ import annotations

import os

import threading

import pydicom
from pydicom.uid import generate_uid

from pgsam_node.ingest import journal as jn
from pgsam_node.ingest import spool

from tests.helpers import wait_for

from ..factories import Geometry, mr_instance
from .test_spool_assemble import _encode


def _put(settings, journal, ds) -> spool.StoredFile:
    """Receive ``ds`` the way the listener does with the journal protocol: stream, place, journal."""
    meta = spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "PACS")
    f = spool.IncomingFile(settings, meta, journal=journal)
    f.write(_encode(ds))
    stored = f.commit(spool.spool_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
                      replace=False)
    f.make_durable()
    return stored


def _crashy_journal(settings):
    settings.storage.journal_checkpoint_seconds = 3600  # no checkpoint during the test
    return jn.Journal(settings).open()


def test_lost_spool_files_come_back_from_the_journal_once(settings):
    j = _crashy_journal(settings)
    study, series = generate_uid(), generate_uid()
    dsets = [mr_instance(study, series, i, geometry=Geometry(rows=64, columns=64)) for i in range(5)]
    stored = [_put(settings, j, ds) for ds in dsets]
    assert j.stats["records"] == 5 and j.stats["flushes"] >= 1
    j.close(checkpoint=False)  # what kill -9 or a power loss leaves
    originals = [s.path.read_bytes() for s in stored]
    stored[0].path.unlink()  # never reached the disk
    stored[1].path.write_bytes(b"")  # rename survived, data did not (delayed allocation)
    stored[2].path.write_bytes(originals[2][:1000])  # torn
    assert jn.recover(settings) == 3
    for s, data, ds in zip(stored, originals, dsets):
        assert s.path.read_bytes() == data
        assert (pydicom.dcmread(s.path).pixel_array == ds.pixel_array).all()
    assert jn.recover(settings) == 0  # idempotent: replaying again changes nothing
    assert not spool.leftover_tmp(settings.tmp_dir)


def test_torn_tail_record_is_ignored_and_earlier_records_kept(settings):
    j = _crashy_journal(settings)
    study, series = generate_uid(), generate_uid()
    a, b = (_put(settings, j, mr_instance(study, series, i, geometry=Geometry(rows=64, columns=64))) for i in range(2))
    j.close(checkpoint=False)
    # The records sit in the first segment, in a preallocated one switched to, or one in each (the
    # switch can come between them, when the background thread readies a segment meanwhile).
    found = [(p, r) for g, p in jn._segments(jn.journal_dir(settings)) for r in jn.read_records(p, g)]
    assert [r[0] for _, r in found] == [a.rel_path, b.rel_path]
    # Flip one byte in the second record's data: a write the crash tore (never acknowledged).
    seg, (_, data_off, size, _) = found[1]
    with open(seg, "r+b") as fh:
        fh.seek(data_off + size // 2)
        byte = fh.read(1)
        fh.seek(data_off + size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    a_bytes = a.path.read_bytes()
    a.path.unlink()
    b.path.unlink()
    assert jn.recover(settings) == 1
    assert a.path.read_bytes() == a_bytes
    assert not b.path.exists()


def test_checkpointed_records_are_not_replayed(settings):
    """After a checkpoint the spool itself is durable: a file removed later (retention) stays removed."""
    j = _crashy_journal(settings)
    s = _put(settings, j, mr_instance(generate_uid(), generate_uid(), 0, geometry=Geometry(rows=64, columns=64)))
    j.close()  # checkpoint: syncfs, then the journal forgets the record
    s.path.unlink()
    assert jn.recover(settings) == 0
    assert not s.path.exists()


def test_concurrent_associations_share_flushes_and_all_records_replay(settings):
    j = _crashy_journal(settings)
    study = generate_uid()
    per_thread = [[mr_instance(study, series, i, geometry=Geometry(rows=32, columns=32)) for i in range(15)] for series in
                  (generate_uid() for _ in range(4))]
    stored: list = []
    lock = threading.Lock()

    def send(dsets):
        for ds in dsets:
            st = _put(settings, j, ds)
            with lock:
                stored.append(st)

    threads = [threading.Thread(target=send, args=(d,)) for d in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert j.stats["records"] == 60 and 1 <= j.stats["flushes"] <= 60
    j.close(checkpoint=False)
    originals = {s.path: s.path.read_bytes() for s in stored}
    for p in originals:
        p.unlink()
    assert jn.recover(settings) == 60
    assert all(p.read_bytes() == data for p, data in originals.items())


def test_a_record_naming_a_path_outside_the_spool_is_not_replayed(settings, tmp_path):
    j = _crashy_journal(settings)
    victim = settings.storage_root / "node.sqlite3.dcm"
    f = spool.IncomingFile(settings, b"x" * 300, journal=j)
    j.write(f.fd, f.size, f.crc, "../" + victim.name)  # a crafted path never becomes a file
    f.discard()
    j.close(checkpoint=False)
    assert jn.recover(settings) == 0
    assert not victim.exists() and not (settings.storage_root.parent / victim.name).exists()


def test_a_recycled_segment_never_replays_its_earlier_records(settings):
    """Segments are reused after a checkpoint; their old records carry an older generation."""
    settings.storage.journal_segment_bytes = 1 << 20
    j = _crashy_journal(settings)
    study, series = generate_uid(), generate_uid()
    first = [_put(settings, j, mr_instance(study, series, i, geometry=Geometry(rows=128, columns=128))) for i in range(20)]  # > 512 KiB
    j.close()  # checkpointed: the next open keeps the segment as a spare
    for s in first:
        s.path.unlink()  # e.g. retention removed the study afterwards
    [(old_gen, old_seg)] = [(g, p) for g, p in jn._segments(jn.journal_dir(settings)) if list(jn.read_records(p, g))]
    # Only that segment may be recycled (the preallocated one the first journal never used would be
    # an equally good spare, and which spare is taken first is not defined); padded to full size as a
    # preallocated segment is, so the next open keeps it as a spare whatever its fill.
    for p in jn.journal_dir(settings).glob(f"*{jn.SEGMENT_SUFFIX}"):
        if p != old_seg:
            p.unlink()
    os.truncate(old_seg, settings.storage.journal_segment_bytes)
    n_old = len(list(jn.read_records(old_seg, old_gen)))  # most of the 20 (the first may sit in the first segment)
    assert n_old >= 10
    j = jn.Journal(settings).open()
    wait_for(lambda: j._ready is not None, 30, what="a segment prepared from the spare")
    # The segment about to be written is the old one, renamed: its earlier records are still there.
    assert j._ready.gen > old_gen and len(list(jn.read_records(j._ready.path, old_gen))) == n_old
    later = [_put(settings, j, mr_instance(study, series, i, geometry=Geometry(rows=128, columns=128))) for i in range(20, 23)]
    j.close(checkpoint=False)
    for s in later:
        s.path.unlink()
    assert jn.recover(settings) == len(later)
    assert all(s.path.exists() for s in later) and not any(s.path.exists() for s in first)


def test_replay_keeps_the_latest_copy_of_a_resent_instance(settings):
    """A same-source re-send replaces the file (durably) and is journalled too; an instance moved to
    another series by a re-send does not come back at its old path."""
    j = _crashy_journal(settings)
    study = generate_uid()
    ds = mr_instance(study, generate_uid(), 0, geometry=Geometry(rows=64, columns=64))
    first = _put(settings, j, ds)
    first_bytes = first.path.read_bytes()
    ds.InstanceNumber = 99  # same SOP Instance UID, other content, same path: replaces the file
    meta = spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "PACS")
    f = spool.IncomingFile(settings, meta, journal=j)
    f.write(_encode(ds))
    f.commit(first.rel_path, replace=True)
    f.make_durable()
    second_bytes = first.path.read_bytes()
    assert second_bytes != first_bytes
    moved = mr_instance(study, generate_uid(), 1, geometry=Geometry(rows=64, columns=64))
    old = _put(settings, j, moved)
    moved.SeriesInstanceUID = generate_uid()  # re-sent into another series (overwrite_same_source)
    new = _put(settings, j, moved)
    old.path.unlink()  # the index removes the old file once the row points at the new one
    j.close(checkpoint=False)
    new.path.unlink()
    assert jn.recover(settings) == 1
    assert first.path.read_bytes() == second_bytes, "the older copy was replayed over the newer"
    assert new.path.exists() and not old.path.exists()


def _worker_journal(settings, n):
    settings.storage.journal_checkpoint_seconds = 3600
    return jn.Journal(settings, jn.acceptor_journal_dir(settings, n)).open()


def test_worker_journals_replay_in_append_order_across_directories(settings):
    """Acceptor worker processes (dicom.acceptor_processes > 1) each journal into their own
    directory; start-up recovery merges them by append time: a same-path re-send journalled by
    one worker after another's first copy wins, whichever directory sorts first."""
    j2, j1 = _worker_journal(settings, 2), _worker_journal(settings, 1)
    study = generate_uid()
    ds = mr_instance(study, generate_uid(), 0, geometry=Geometry(rows=64, columns=64))
    first = _put(settings, j2, ds)  # worker 2 first ...
    first_bytes = first.path.read_bytes()
    ds.InstanceNumber = 42  # ... then worker 1 replaces the same file
    meta = spool.file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "PACS")
    f = spool.IncomingFile(settings, meta, journal=j1)
    f.write(_encode(ds))
    f.commit(first.rel_path, replace=True)
    f.make_durable()
    newer = first.path.read_bytes()
    assert newer != first_bytes
    other = _put(settings, j2, mr_instance(study, generate_uid(), 1, geometry=Geometry(rows=64, columns=64)))
    j1.close(checkpoint=False)
    j2.close(checkpoint=False)
    first.path.unlink()
    other.path.unlink()
    assert jn.recover(settings) == 2
    assert first.path.read_bytes() == newer, "worker 2's older copy was replayed over worker 1's newer one"
    assert other.path.exists()
    assert jn.recover(settings) == 0  # every directory's checkpoint moved past its records


def test_a_dead_workers_journal_is_settled_not_replayed(settings):
    """A worker process died (the machine did not): its successor flushes what its journal names
    and forgets it, without writing an older copy back over what another worker stored since."""
    j1 = _worker_journal(settings, 1)
    ds = mr_instance(generate_uid(), generate_uid(), 0, geometry=Geometry(rows=64, columns=64))
    stored = _put(settings, j1, ds)
    j1.close(checkpoint=False)  # killed
    stored.path.write_bytes(b"a newer copy stored by another worker")
    j1 = _worker_journal(settings, 1)  # the replacement worker settles its directory on open
    j1.close()
    assert stored.path.read_bytes() == b"a newer copy stored by another worker"
    assert jn.recover(settings) == 0


def test_version_1_records_are_still_replayed(settings, monkeypatch):
    """Journals written before the append time was recorded (version 1) replay as before."""
    monkeypatch.setattr(jn, "VERSION", 1)
    j = _crashy_journal(settings)
    ds = mr_instance(generate_uid(), generate_uid(), 0, geometry=Geometry(rows=64, columns=64))
    stored = _put(settings, j, ds)
    data = stored.path.read_bytes()
    j.close(checkpoint=False)
    monkeypatch.undo()
    stored.path.unlink()
    assert jn.recover(settings) == 1 and stored.path.read_bytes() == data
