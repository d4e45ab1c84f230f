"""Operator "test destination": C-ECHO (PS3.4 A.4, Verification SOP Class) for a DIMSE
destination, a QIDO-RS capability check for a DICOMweb one — with the destination's own TLS and
authentication, as a send would use them."""

from __future__ import annotations

from pynetdicom.sop_class import Verification

from pgsam_node.config import Destination, Settings
from pgsam_node.deliver.scu import client_ae, open_association
from pgsam_node.errors import SendError


def echo(settings: Settings, dest: Destination) -> str:
    """C-ECHO ``dest``; returns a one-line result, raises :class:`SendError` on failure."""
    ae = client_ae(settings)
    ae.add_requested_context(Verification)
    assoc = open_association(settings, dest, ae)
    if not assoc.is_established:
        raise SendError(f"cannot associate with {dest.name} ({dest.host}:{dest.port}): connection failed, timed out or aborted")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    if code != 0x0000:
        raise SendError(f"{dest.name}: C-ECHO answered {'no status' if code is None else f'0x{code:04X}'}")
    return f"{dest.name}: C-ECHO success from {dest.ae_title}@{dest.host}:{dest.port}"


def test_destination(settings: Settings, dest: Destination) -> str:
    """Check ``dest`` by its type; one line on success, :class:`SendError` otherwise."""
    if dest.type == "dicomweb":
        from pgsam_node.deliver.stow import capability_check

        return capability_check(settings, dest)
    return echo(settings, dest)


test_destination.__test__ = False  # not a pytest test despite its name
