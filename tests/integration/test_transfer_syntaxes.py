"""Compressed transfer syntaxes are accepted and stored byte-exact (no decode, no re-encode)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from pgsam_node.db import Instance

from ..factories import mr_instance
from .ingest_fixtures import running_listener

# (name, encoder command before input/output, transfer syntax, storescu proposal option, 8-bit, lossless).
# storescu's -x? option proposes that syntax first with uncompressed ones as fallback in the same
# presentation context: the node must pick the peer's first choice and keep the bytes.
CODECS = [
    ("jpeg_baseline", ["dcmcjpeg", "+eb"], "1.2.840.10008.1.2.4.50", "-xy", True, False),
    ("jpeg_lossless_sv1", ["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70", "-xs", False, True),
    ("jpeg_ls_lossless", ["dcmcjpls"], "1.2.840.10008.1.2.4.80", "-xt", False, True),
    ("jpeg2000_lossless", ["gdcmconv", "--j2k"], "1.2.840.10008.1.2.4.90", "-xv", False, True),
    ("rle", ["dcmcrle"], "1.2.840.10008.1.2.5", "-xr", False, True),
    ("deflate", ["dcmconv", "+td"], "1.2.840.10008.1.2.1.99", "-xd", False, True),
]


@pytest.mark.parametrize("name,tool,ts,propose,eight_bit,lossless", CODECS, ids=[c[0] for c in CODECS])
def test_compressed_instance_stored_as_received(settings, tmp_path, name, tool, ts, propose, eight_bit, lossless):
    if not shutil.which(tool[0]) or not shutil.which("storescu"):
        pytest.skip(f"{tool[0]} / storescu not installed")
    src = mr_instance(generate_uid(), generate_uid(), 0, bits_allocated=8 if eight_bit else 16, seed=5)
    plain, packed = tmp_path / "plain.dcm", tmp_path / "packed.dcm"
    src.save_as(plain, enforce_file_format=True)
    subprocess.run(tool + [str(plain), str(packed)], check=True, capture_output=True, timeout=60)
    sent = pydicom.dcmread(packed)
    assert sent.file_meta.TransferSyntaxUID == ts, f"{tool} produced {sent.file_meta.TransferSyntaxUID}"
    with running_listener(settings) as (listener, db):
        r = subprocess.run(["storescu", propose, "-aec", "PGSAM", "127.0.0.1", str(listener.port), str(packed)],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, TCP_NODELAY="1"))
        assert r.returncode == 0, r.stderr
        with db.session() as s:
            inst = s.scalars(select(Instance)).one()
        assert inst.transfer_syntax_uid == ts
    stored = pydicom.dcmread(settings.storage_root / inst.path)
    assert stored.file_meta.TransferSyntaxUID == ts
    if ts != "1.2.840.10008.1.2.1.99":
        assert stored.PixelData == sent.PixelData  # compressed stream kept byte for byte
    assert np.array_equal(stored.pixel_array, sent.pixel_array)
    if lossless:
        assert np.array_equal(stored.pixel_array, src.pixel_array)
