"""Encode/validate/send timings for one SEG, printed as ratios against an anchor measured in the
same run (reading the source series with pydicom). Run from the project root:

    python benchmarks/bench_seg.py [--slices 25 --rows 320 --cols 260]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgsam_node.config import load_settings  # noqa: E402
from pgsam_node.db import open_database  # noqa: E402
from pgsam_node.encode import algorithm_info, build_seg, load_sources, validate_seg  # noqa: E402
from pgsam_node.deliver.outbox import process_due, queue_outputs  # noqa: E402
from tests.dicom_tools import blob_mask  # noqa: E402
from tests.factories import Geometry, MRSeries  # noqa: E402
from tests.helpers import free_port  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=25)
    ap.add_argument("--rows", type=int, default=320)
    ap.add_argument("--cols", type=int, default=260)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = MRSeries(n_slices=a.slices, geometry=Geometry(rows=a.rows, columns=a.cols), instance_numbers="shuffled")
        paths = source.write(tmp / "mr")
        mask = blob_mask((a.slices, a.rows, a.cols))
        port = free_port()
        settings = load_settings(None, storage={"root": str(tmp / "node"), "fsync": False},
                                 destinations=[{"name": "b", "ae_title": "BENCH", "host": "127.0.0.1", "port": port}])
        anchor, _ = timed(lambda: [pydicom.dcmread(p) for p in paths])
        alg = algorithm_info("0" * 64)
        t_build, seg = timed(lambda: build_seg(mask, paths, None, settings, alg, 1))
        src = load_sources(paths)
        t_val, _ = timed(lambda: validate_seg(seg, mask, src))
        ae = AE(ae_title="BENCH")
        ae.add_supported_context(seg.SOPClassUID, ExplicitVRLittleEndian)
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
        db = open_database(settings)

        def send():
            with db.transaction() as s:
                from pgsam_node.deliver.outbox import requeue

                items = queue_outputs(s, settings, None, seg.StudyInstanceUID, None, [seg])
                requeue(s, item_id=items[0].id, now=dt.datetime(2000, 1, 1))
            return process_due(db, settings)

        t_send, summary = timed(send)
        server.shutdown()
        assert summary["sent"] == 1
        print(f"grid {a.slices}x{a.rows}x{a.cols}, SEG frames {seg.NumberOfFrames}")
        print(f"anchor read source series   {anchor * 1e3:8.1f} ms  (1.00)")
        for name, t in (("build_seg", t_build), ("validate_seg", t_val), ("outbox send (1 SEG)", t_send)):
            print(f"{name:27s} {t * 1e3:8.1f} ms  ({t / anchor:.2f} x anchor)")


if __name__ == "__main__":
    main()
