"""Node database: models, engine/session handling and Alembic migrations."""

from .models import (  # noqa: F401
    ApiToken,
    AuditLog,
    Base,
    Instance,
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
from .session import Database, open_database  # noqa: F401
