"""DICOMweb STOW-RS sender (PS3.18 10.5): ``POST {url}/studies``, ``multipart/related;
type="application/dicom"``, built by ``dicomweb-client`` over a ``requests`` session that carries
the destination's TLS trust (CA pinning) and authentication (bearer, basic or mutual TLS).

Every outcome maps onto the outbox's :class:`~pgsam_node.deliver.scu.StoreOutcome`, like C-STORE:

- connection errors, timeouts, HTTP 408/429 and 5xx: transient (retried with backoff);
- other HTTP 4xx: permanent, with the server's message (dead letter);
- HTTP 200/202/409 with a Store Instances Response (PS3.18 Table 10.5.3-1): per instance —
  ``ReferencedSOPSequence`` = stored (``WarningReason`` kept as a warning), ``FailedSOPSequence``
  = failed with its ``FailureReason`` status, classified as for C-STORE (PS3.4 B.2.3);
  an instance in neither sequence is a transient failure ("not acknowledged").

A resend is idempotent: our SOP Instance UIDs are deterministic, so a repeat replaces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from pydicom.dataset import Dataset

from pgsam_node.config import Destination, Settings
from pgsam_node.deliver.scu import StoreOutcome, classify_status
from pgsam_node.errors import SendError
from pgsam_node.logsetup import uid_hash

log = logging.getLogger(__name__)
# dicomweb-client logs request headers (the bearer token) at DEBUG and SOP Instance UIDs at ERROR;
# this module logs every outcome itself, with hashed UIDs.
logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)

#: Most characters of a server's error body kept in ``last_error``.
MAX_SERVER_MESSAGE = 500
#: HTTP statuses a retry can fix.
TRANSIENT_HTTP = {408, 425, 429}


def _read_secret(path: Path | None, what: str, dest: Destination) -> str:
    try:
        return Path(path).read_text().strip()  # type: ignore[arg-type]
    except OSError as exc:
        raise SendError(f"destination {dest.name}: cannot read {what} ({exc.strerror})", permanent=True) from exc


def build_session(settings: Settings, dest: Destination) -> requests.Session:
    """A ``requests`` session for ``dest``: CA pinning (``ca_file``) and the configured auth.

    Secrets are read from their files at each call, so a rotated token is picked up without
    a restart; they are never logged.
    """
    sess = requests.Session()
    sess.trust_env = False  # no proxy or netrc from the environment: the config says everything
    sess.verify = str(dest.ca_file) if dest.ca_file else True
    if dest.auth == "bearer":
        sess.headers["Authorization"] = "Bearer " + _read_secret(dest.token_file, "token_file", dest)
    elif dest.auth == "basic":
        sess.auth = (dest.username or "", _read_secret(dest.password_file, "password_file", dest))
    if dest.client_cert_file is not None and dest.client_key_file is not None:
        # Mutual TLS: alone (``auth: mtls``) or beside a bearer token / basic password.
        sess.cert = (str(dest.client_cert_file), str(dest.client_key_file))
    return sess


def client_for(settings: Settings, dest: Destination):
    """A DICOMweb client on ``dest.url`` with its own retries off (the outbox owns retrying)."""
    from dicomweb_client.api import DICOMwebClient  # imported on first use: DIMSE-only nodes never load it

    client = DICOMwebClient(url=dest.url.rstrip("/"), session=build_session(settings, dest),
                            timeout=settings.send.timeout_seconds)
    client.set_http_retry_params(retry=False)
    return client


def _server_message(resp: requests.Response | None) -> str:
    if resp is None:
        return ""
    text = (resp.text or "").strip().replace("\n", " ")
    return text[:MAX_SERVER_MESSAGE]


def _response_dataset(resp: requests.Response | None) -> Dataset | None:
    """The Store Instances Response of an error reply (409 carries one), when it parses."""
    if resp is None or not resp.content:
        return None
    # Not gated on Content-Type: Orthanc's plugin (1.7) sends its 400/409 answers without one.
    try:
        return Dataset.from_json(resp.json())
    except Exception:  # not a DICOM JSON body: the caller reports the raw message
        return None


def outcomes_from_response(response: Dataset, sop_uids: Sequence[str], http_status: int) -> list[StoreOutcome]:
    """Per-instance outcomes from a Store Instances Response (PS3.18 Table 10.5.3-1)."""
    stored: dict[str, Dataset] = {str(it.get("ReferencedSOPInstanceUID", "")): it
                                  for it in response.get("ReferencedSOPSequence", [])}
    failed: dict[str, Dataset] = {str(it.get("ReferencedSOPInstanceUID", "")): it
                                  for it in response.get("FailedSOPSequence", [])}
    out: list[StoreOutcome] = []
    for uid in sop_uids:
        if uid in failed:
            reason = failed[uid].get("FailureReason")
            if reason is None:
                out.append(StoreOutcome(ok=False, status=http_status,
                                        error=f"STOW-RS: instance failed (HTTP {http_status}, no FailureReason)"))
                continue
            oc = classify_status(int(reason))
            oc.error = f"STOW-RS FailedSOPSequence: FailureReason 0x{int(reason):04X} ({oc.error})"
            out.append(oc)
        elif uid in stored:
            warn = stored[uid].get("WarningReason")
            out.append(StoreOutcome(ok=True, status=http_status,
                                    warning=f"STOW-RS WarningReason 0x{int(warn):04X}" if warn is not None else None))
        else:
            out.append(StoreOutcome(ok=False, status=http_status,
                                    error=f"STOW-RS: instance not acknowledged in the response (HTTP {http_status})"))
    return out


def send_stow(settings: Settings, dest: Destination, paths: Sequence[Path]) -> list[StoreOutcome]:
    """Send ``paths`` to ``dest`` in one STOW-RS request; one outcome per path, in order.

    Raises
    ------
    SendError
        The request as a whole failed (connection, TLS, timeout, HTTP error without a per-instance
        response); ``permanent`` says whether a retry can help.
    """
    outcomes: list[StoreOutcome | None] = [None] * len(paths)
    datasets: list[Dataset] = []
    index: list[int] = []
    for i, p in enumerate(paths):
        try:
            ds = pydicom.dcmread(p)
        except Exception as exc:  # a missing or corrupt output cannot be fixed by a retry
            outcomes[i] = StoreOutcome(ok=False, permanent=True, error=f"cannot read {Path(p).name}: {exc}")
            continue
        datasets.append(ds)
        index.append(i)
    if datasets:
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        for i, oc in zip(index, _post(settings, dest, datasets, uids), strict=True):
            outcomes[i] = oc
    return [o for o in outcomes if o is not None]


def _post(settings: Settings, dest: Destination, datasets: list[Dataset], uids: list[str]) -> list[StoreOutcome]:
    client = client_for(settings, dest)
    try:
        response = client.store_instances(datasets)
        status = 200
    except requests.HTTPError as exc:
        resp = exc.response
        status = resp.status_code if resp is not None else 0
        parsed = _response_dataset(resp)
        if parsed is not None and ("FailedSOPSequence" in parsed or "ReferencedSOPSequence" in parsed):
            response = parsed  # 409 Conflict or 4xx/5xx with a per-instance answer
        else:
            msg = f"STOW-RS to {dest.name}: HTTP {status}: {_server_message(resp)}".rstrip(": ")
            raise SendError(msg, permanent=not (status >= 500 or status in TRANSIENT_HTTP)) from exc
    except requests.exceptions.SSLError as exc:
        raise SendError(f"STOW-RS to {dest.name}: TLS failed ({type(exc).__name__})", permanent=False) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise SendError(f"STOW-RS to {dest.name}: connection failed or timed out ({type(exc).__name__})") from exc
    except ValueError as exc:  # unexpected media type of the response
        raise SendError(f"STOW-RS to {dest.name}: unreadable response ({exc})") from exc
    result = outcomes_from_response(response, uids, status)
    for uid, oc in zip(uids, result, strict=True):
        if not oc.ok:
            log.warning("STOW-RS to %s: instance not stored: %s", dest.name, oc.error, extra={"sop": uid_hash(uid)})
    return result


def capability_check(settings: Settings, dest: Destination) -> str:
    """Check that ``dest`` answers DICOMweb: a QIDO-RS ``GET {url}/studies?limit=1`` with the
    destination's TLS and auth. Returns a short description; raises :class:`SendError`."""
    sess = build_session(settings, dest)
    url = dest.url.rstrip("/") + "/studies"
    try:
        r = sess.get(url, params={"limit": "1"}, headers={"Accept": "application/dicom+json"},
                     timeout=settings.send.timeout_seconds)
    except requests.RequestException as exc:
        raise SendError(f"{dest.name}: {type(exc).__name__} reaching {dest.url}") from exc
    if r.status_code not in (200, 204):
        raise SendError(f"{dest.name}: HTTP {r.status_code}: {_server_message(r)}", permanent=400 <= r.status_code < 500)
    return f"{dest.name}: DICOMweb answered HTTP {r.status_code} at {dest.url}"
