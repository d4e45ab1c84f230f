"""TLS contexts for DICOM (PS3.15 Annex B.1 secure transport) from ``dicom.tls`` settings."""

from __future__ import annotations

import ssl

from pgsam_node.config import TlsSettings
from pgsam_node.errors import ConfigError


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """SSL context for the listener, or None when TLS is off."""
    if not tls.enabled:
        return None
    if not tls.cert_file or not tls.key_file:
        raise ConfigError("dicom.tls.cert_file and dicom.tls.key_file are required when dicom.tls.enabled is true")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.ca_file:
            ctx.load_verify_locations(str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom.tls: cannot load certificate/key: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    if tls.require_client_cert and not tls.ca_file:
        raise ConfigError("dicom.tls.ca_file is required when dicom.tls.require_client_cert is true")
    return ctx


def client_context(tls: TlsSettings, server_hostname_check: bool = False) -> ssl.SSLContext:
    """SSL context for sending to a TLS destination; verifies the peer against ``ca_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = server_hostname_check
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"dicom.tls: cannot load certificate/key: {exc}") from exc
    return ctx
