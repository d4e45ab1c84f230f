"""No patient data and no forged lines in log records (logsetup.install_redaction), and AE titles
compared without stripping control characters."""

from __future__ import annotations

import logging
import warnings
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pgsam_node.ingest.dicomnet.pdu import safe_ae
from pgsam_node.ingest.listener import calling_ae_allowed
from pgsam_node.logsetup import install_redaction


def test_pydicom_warnings_about_malformed_elements_carry_no_values(caplog):
    install_redaction()
    ds = Dataset()
    ds.PatientName = "MARKER^PATIENT"
    ds.PatientID = "MARKERID123"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = bytearray(buf.getvalue())
    raw[4:6] = b"XX"  # an invalid VR on the first element: pydicom warns, quoting the bytes
    from pydicom.filereader import read_dataset

    with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.getLogger("pydicom").warning("Invalid value for VR PN: %r", "MARKER^PATIENT")
        logging.getLogger("py.warnings").warning("x.py:1: UserWarning: value b'MARKERID123' bad")
        try:
            read_dataset(BytesIO(bytes(raw)), False, True)
        except Exception:  # noqa: BLE001 - whether it raises is pydicom's business
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines, "nothing was logged"
    assert not [line for line in lines if "MARKER" in line]


def test_control_characters_never_forge_a_line(caplog):
    install_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("pgsam_node.test").warning("association from %s", "EVIL\n2026-01-01 INFO forged")
    assert "\n" not in caplog.records[-1].getMessage()
    assert safe_ae("A\nB\t") == "A\\x0aB\\x09"


def test_allow_list_does_not_strip_tabs():
    assert calling_ae_allowed(["FUZZ"], "FUZZ", "127.0.0.1")
    assert calling_ae_allowed(["FUZZ"], "FUZZ  ", "127.0.0.1")  # trailing spaces are padding (PS3.5 6.2)
    assert not calling_ae_allowed(["FUZZ"], "FUZZ\t", "127.0.0.1")
    assert not calling_ae_allowed(["FUZZ"], "\tFUZZ", "127.0.0.1")
    assert not calling_ae_allowed(["FUZZ"], "FUZZ\n", "127.0.0.1")
