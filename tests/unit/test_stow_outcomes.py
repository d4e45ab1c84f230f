"""STOW-RS response → per-instance outcomes (PS3.18 Table 10.5.3-1) and dicomweb destination
config validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from pgsam_node.config import Destination
from pgsam_node.deliver.stow import outcomes_from_response


def _ref(uid: str, **kw) -> Dataset:
    it = Dataset()
    it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", uid
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def test_per_instance_outcomes():
    resp = Dataset()
    resp.ReferencedSOPSequence = [_ref("1.1"), _ref("1.2", WarningReason=0xB000)]
    resp.FailedSOPSequence = [_ref("1.3", FailureReason=0xC000), _ref("1.4", FailureReason=0xA700)]
    a, b, c, d, e = outcomes_from_response(resp, ["1.1", "1.2", "1.3", "1.4", "1.5"], 409)
    assert a.ok and a.warning is None
    assert b.ok and "0xB000" in b.warning
    assert not c.ok and c.permanent and "FailedSOPSequence" in c.error and "0xC000" in c.error
    assert not d.ok and not d.permanent and "0xA700" in d.error  # out of resources: retry
    assert not e.ok and not e.permanent and "not acknowledged" in e.error


def test_dicomweb_destination_validation(tmp_path):
    Destination(name="w", type="dicomweb", url="https://pacs.example/dicom-web")
    with pytest.raises(ValidationError, match="needs url"):
        Destination(name="w", type="dicomweb")
    with pytest.raises(ValidationError, match="token_file"):
        Destination(name="w", type="dicomweb", url="https://x/dw", auth="bearer")
    with pytest.raises(ValidationError, match="client_cert_file"):
        Destination(name="w", type="dicomweb", url="https://x/dw", auth="mtls")
    with pytest.raises(ValidationError, match="ae_title, host, port"):
        Destination(name="d")
    assert Destination(name="d", ae_title="A", host="h", port=104).type == "dimse"
