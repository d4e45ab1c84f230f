"""Node database: models, engine/session handling and Alembic migrations."""

from pgsam_node.db.models import (
    ApiToken,
    AuditLog,
    Base,
    Instance,
    NodeSwitch,
    OutboxItem,
    OutboxState,
    Report,
    Run,
    SequenceRole,
    Series,
    Study,
    StudyEvent,
    StudyState,
    utcnow,
)
from pgsam_node.db.session import Database, open_database  # noqa: F401
