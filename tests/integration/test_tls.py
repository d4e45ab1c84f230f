"""Real TLS DICOM associations (PS3.15 B.1) with pgsam_node.tls contexts, and HTTPS for the web.

Certificates are made in the test with the ``openssl`` CLI: a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a second CA nobody trusts.
"""

from __future__ import annotations

import ssl

import httpx
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from pgsam_node.config import TlsSettings
from pgsam_node.db import Database
from pgsam_node.tls import client_context, server_context
from pgsam_node.web import WebServer

from ..helpers import free_port
from ..pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _echo_scp(tls: TlsSettings):
    ae = AE(ae_title="PGSAM")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_context(tls),
                             evt_handlers=[(evt.EVT_C_ECHO, lambda e: 0x0000)])
    return server, port


def _echo(port: int, tls: TlsSettings | None) -> int | None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    kw = {"tls_args": (client_context(tls), None)} if tls is not None else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="PGSAM", **kw)
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if status else None


def test_tls_echo_ca_and_client_certs(pki):
    srv_tls = TlsSettings(enabled=True, cert_file=pki / "server.pem", key_file=pki / "server.key", ca_file=pki / "ca.pem")
    server, port = _echo_scp(srv_tls)
    try:
        assert _echo(port, TlsSettings(enabled=True, ca_file=pki / "ca.pem")) == 0x0000
        # a client that does not trust our CA refuses the server
        assert _echo(port, TlsSettings(enabled=True, ca_file=pki / "rogue.pem")) is None
        # plain TCP to a TLS listener: no association
        assert _echo(port, None) is None
    finally:
        server.shutdown()

    strict = srv_tls.model_copy(update={"require_client_cert": True})
    server, port = _echo_scp(strict)
    try:
        assert _echo(port, TlsSettings(enabled=True, ca_file=pki / "ca.pem")) is None  # no client certificate
        with_cert = TlsSettings(enabled=True, ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key")
        assert _echo(port, with_cert) == 0x0000
        # a client certificate from another CA is refused too
        rogue_cert = TlsSettings(enabled=True, ca_file=pki / "ca.pem", cert_file=pki / "rogue.pem", key_file=pki / "rogue.key")
        assert _echo(port, rogue_cert) is None
    finally:
        server.shutdown()


def test_web_over_https(pki, settings):
    settings.web.tls_cert_file = pki / "server.pem"
    settings.web.tls_key_file = pki / "server.key"
    db = Database(settings.database_url)
    srv = WebServer(settings, db)
    srv.start(announce=False)
    try:
        assert srv.url.startswith("https://")
        r = httpx.get(f"{srv.url}/healthz", verify=ssl.create_default_context(cafile=str(pki / "ca.pem")))
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/healthz", verify=ssl.create_default_context(cafile=str(pki / "rogue.pem")))
    finally:
        srv.stop()
        db.dispose()
