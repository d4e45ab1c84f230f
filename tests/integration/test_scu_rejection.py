"""An A-ASSOCIATE-RJ stays a rejection when pynetdicom loses the race between its two threads.

Under CPU load the peer can reject and close the connection before pynetdicom's requesting thread
looks at the socket; pynetdicom 3.0 then reports an abort, and the outbox would retry a refusal
that no retry can mend. The seam: ``ACSE.send_request`` is slowed so that the race always happens.
"""

from __future__ import annotations

import time

import pytest
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification

from pgsam_node.config import load_settings
from pgsam_node.deliver.check import echo
from pgsam_node.deliver.scu import client_ae, open_association
from pgsam_node.errors import SendError

from ..helpers import free_port


@pytest.fixture
def rejecting_peer():
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["SOMEONE_ELSE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    yield port
    server.shutdown()


@pytest.fixture
def slow_requestor(monkeypatch):
    real = ACSE.send_request

    def send_then_dawdle(self):
        real(self)
        time.sleep(0.5)  # the peer's A-ASSOCIATE-RJ and close arrive meanwhile

    monkeypatch.setattr(ACSE, "send_request", send_then_dawdle)


def _settings(tmp_path, port):
    return load_settings(
        None,
        storage={"root": str(tmp_path / "node"), "min_free_bytes": 0, "fsync": False},
        dicom={"ae_title": "PGSAM", "port": free_port()},
        destinations=[{"name": "pacs", "ae_title": "PICKY", "host": "127.0.0.1", "port": port}],
        send={"timeout_seconds": 5},
    )


def test_the_race_is_real_without_the_pdu_record(rejecting_peer, slow_requestor):
    # Guards the seam: pynetdicom alone reports no rejection here (if a later pynetdicom fixes the
    # race, this fails and the workaround in open_association can go).
    ae = AE(ae_title="PGSAM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", rejecting_peer, ae_title="PICKY")
    assert not assoc.is_established
    assert not assoc.is_rejected


def test_a_rejection_seen_late_is_still_permanent(tmp_path, rejecting_peer, slow_requestor):
    settings = _settings(tmp_path, rejecting_peer)
    ae = client_ae(settings)
    ae.add_requested_context(Verification)
    with pytest.raises(SendError) as err:
        open_association(settings, settings.destinations[0], ae)
    assert err.value.permanent
    assert "calling AE title is not recognised" in str(err.value)


def test_echo_reports_the_rejection_not_a_connection_failure(tmp_path, rejecting_peer, slow_requestor):
    settings = _settings(tmp_path, rejecting_peer)
    with pytest.raises(SendError, match="association rejected") as err:
        echo(settings, settings.destinations[0])
    assert err.value.permanent
