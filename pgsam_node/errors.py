"""One base exception and one subclass per stage.

Exceptions turn into DICOM statuses or study states only at the edges (the SCP handlers, the
pipeline); stage code raises these and never swallows one without logging it.
"""


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(NodeError):
    """Invalid configuration: the message names the offending key."""


class DatabaseError(NodeError):
    """The node database cannot be reached or migrated."""


class ReceiveError(NodeError):
    """An incoming instance cannot be accepted."""


class StorageFullError(ReceiveError):
    """The spool is below its free-space reserve (maps to 0xA700)."""


class UnparseableDatasetError(ReceiveError):
    """The dataset cannot be decoded (maps to 0xC210)."""


class ClassifyError(NodeError):
    """Sequence-classification rules are invalid."""


class GeometryError(NodeError):
    """A series' geometry cannot be trusted; ``reason`` is a short machine code."""

    def __init__(self, message: str, reason: str = "geometry"):
        super().__init__(message)
        self.reason = reason


class RisError(NodeError):
    """The RIS cannot be queried (transient: a down RIS delays, never fails)."""


class Hl7Error(NodeError):
    """An HL7 message is malformed or of an unsupported type."""


class ReportError(NodeError):
    """Report text cannot be parsed into findings."""


class ModelError(NodeError):
    """The model folder, checkpoint or preset is invalid."""


class InferenceError(NodeError):
    """Inference failed for a study."""


class EncodeError(NodeError):
    """A DICOM SEG/SR cannot be built or fails validation."""


class SendError(NodeError):
    """Delivery to a destination failed.

    ``permanent`` tells a failure that retrying cannot fix (association rejected for our AE title,
    SOP class not accepted) from a transient one (destination down, timeout).
    """

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class PipelineError(NodeError):
    """A study cannot progress; ``reason`` is recorded on the study."""

    def __init__(self, message: str, reason: str = "pipeline"):
        super().__init__(message)
        self.reason = reason


class WebError(NodeError):
    """Web/API layer error."""
