"""Durability the hard way: a power loss simulated on a loop device.

The node's storage root is an ext4 file system on a loop device backed by an image file. After
the acknowledgements, ``serve`` is killed and the image is copied at once: the copy holds what had
reached the block device (every flushed write, and whatever writeback happened to send), and not
the file system's dirty page cache, exactly what a power cut leaves on a disk whose cache
honours flushes. The copy is mounted (ext4 replays its own journal) and ``serve`` starts on it:
every acknowledged instance must be back in the spool, byte for byte, with exactly one index row.
Both write protocols are checked; with ``storage.fsync: false`` the test fails (instances lost).

dm-flakey would drop writes at the block layer instead, but this container's kernel has no
device-mapper (``/dev/mapper/control`` is absent); loop devices and ext4 are enough for this.
Needs root (losetup, mount); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from ..factories import Geometry, mr_instance
from .test_serve import Node, _acked_sender


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)


class LoopFs:
    """An ext4 file system on a loop device over ``image``, mounted at ``mnt``; cleaned up by handle."""

    def __init__(self, image, mnt):
        self.image, self.mnt, self.dev = image, mnt, None

    def attach(self) -> LoopFs:
        r = _run("losetup", "-f", "--show", str(self.image))
        if r.returncode != 0:
            pytest.skip(f"no loop device here: {r.stderr.strip()}")
        self.dev = r.stdout.strip()
        r = _run("mount", "-t", "ext4", self.dev, str(self.mnt))
        if r.returncode != 0:
            self.detach()
            pytest.skip(f"cannot mount ext4 on a loop device: {r.stderr.strip()}")
        return self

    def detach(self) -> None:
        if self.dev is not None:
            _run("umount", str(self.mnt))
            _run("losetup", "-d", self.dev)
            self.dev = None


@pytest.fixture
def loop_image(tmp_path):
    if os.geteuid() != 0 or not (shutil.which("losetup") and shutil.which("mkfs.ext4")):
        pytest.skip("needs root with losetup and mkfs.ext4 (loop devices) to simulate a power loss")
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    r = _run("mkfs.ext4", "-q", "-F", str(image))
    if r.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {r.stderr.strip()}")
    return image


def _lost(root, dsets) -> list[str]:
    """SOP Instance UIDs whose spool file is missing or not the instance sent."""
    out = []
    for ds in dsets:
        f = next(iter((root / "spool").rglob(f"{ds.SOPInstanceUID}.dcm")), None)
        try:
            ok = f is not None and (pydicom.dcmread(f).pixel_array == ds.pixel_array).all()
        except Exception:  # noqa: BLE001 - a torn or empty file
            ok = False
        if not ok:
            out.append(ds.SOPInstanceUID)
    return out


@pytest.mark.parametrize("protocol", ["journal", "rename"])
def test_power_loss_after_acknowledgement_loses_no_instance(tmp_path, loop_image, protocol):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = LoopFs(loop_image, mnt).attach()
    snapshot = tmp_path / "after-power-loss.img"
    # No checkpoint during the test: the spool files stay unflushed, only the journal is flushed.
    node = Node(tmp_path, storage={"root": str(mnt / "storage"), "min_free_bytes": 0, "write_protocol": protocol,
                                   "journal_checkpoint_seconds": 3600})
    try:
        node.start()
        # The last flush before the instances: the node's start-up state is on the disk.
        assert _run("sync", "-f", str(mnt)).returncode == 0
        study, series = generate_uid(), generate_uid()
        dsets = [mr_instance(study, series, i, geometry=Geometry(rows=128, columns=128)) for i in range(60)]
        acked, errors = [], []
        _acked_sender(node.port, dsets, acked, errors)
        assert len(acked) == len(dsets) and not errors
        node.proc.kill()  # the process ends with its writes in the page cache ...
        node.proc.wait(30)
        shutil.copyfile(loop_image, snapshot)  # ... and the disk holds only what reached it
    finally:
        node.stop()
        fs.detach()
    fs = LoopFs(snapshot, mnt).attach()
    try:
        root = mnt / "storage"
        lost = _lost(root, dsets)
        if protocol == "journal":
            # The unflushed spool writes did vanish: without the journal these would be lost.
            assert lost, "every spool file reached the disk without a flush: this run proves nothing"
        else:
            assert not lost, "the rename protocol flushes each file before its acknowledgement"
        node._logf.close()
        node.start()  # recovery: journal replay, then the re-index
        assert _lost(root, dsets) == [], "an acknowledged instance is missing after the power loss"
        assert node.stop() == 0
        engine = create_engine(f"sqlite:///{root / 'node.sqlite3'}")
        with engine.connect() as c:
            rows = [r[0] for r in c.execute(text("SELECT sop_instance_uid FROM instances"))]
            count = c.execute(text("SELECT instance_count FROM series")).scalar_one()
        engine.dispose()
        assert sorted(rows) == sorted(acked), "each acknowledged instance indexed exactly once"
        assert count == len(acked)
        print(f"power loss: {len(lost)} of {len(acked)} acknowledged spool files lost, all written back")
    finally:
        if node.proc and node.proc.poll() is None:
            node.stop()
        fs.detach()
