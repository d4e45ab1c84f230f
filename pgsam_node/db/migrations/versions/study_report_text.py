"""studies.report_text: the matched report travels with the study

The wait step stores the matched report's text on the study, so the run no longer searches the RIS
a second time. Studies attached before this revision get their text here: from the embedded
``reports`` table by id; a study matched to an external RIS and not yet run (READY, or RUNNING whose
lease will expire) goes back to WAITING_REPORT, where the next check matches it again, now with
its text.

Revision ID: study_report_text
Revises: ops_pause_switches
Create Date: 2026-12-04 16:00:00
"""
import datetime as dt

from alembic import op
import sqlalchemy as sa


revision = "study_report_text"
down_revision = "ops_pause_switches"
branch_labels = None
depends_on = None

REASON = "report matched before the upgrade to carried report text: matching again"


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_text", sa.Text(), nullable=True))
    studies = sa.table(
        "studies", sa.column("id", sa.Integer), sa.column("state", sa.String), sa.column("state_reason", sa.Text),
        sa.column("state_changed_at", sa.DateTime), sa.column("waiting_since", sa.DateTime),
        sa.column("report_ref", sa.String), sa.column("report_hash", sa.String), sa.column("report_text", sa.Text),
        sa.column("lease_owner", sa.String), sa.column("lease_expires_at", sa.DateTime),
    )
    reports = sa.table("reports", sa.column("id", sa.Integer), sa.column("report_text", sa.Text))
    events = sa.table(
        "study_events", sa.column("study_id", sa.Integer), sa.column("at", sa.DateTime), sa.column("from_state", sa.String),
        sa.column("to_state", sa.String), sa.column("reason", sa.Text), sa.column("actor", sa.String),
    )
    conn = op.get_bind()
    embedded = sa.literal("reports:") + sa.cast(reports.c.id, sa.String)
    conn.execute(
        studies.update()
        .where(studies.c.report_ref.like("reports:%"))
        .values(report_text=sa.select(reports.c.report_text).where(embedded == studies.c.report_ref).scalar_subquery())
    )
    stale = conn.execute(
        sa.select(studies.c.id, studies.c.state)
        .where(studies.c.report_ref.is_not(None), studies.c.report_text.is_(None), studies.c.state.in_(["READY", "RUNNING"]))
    ).all()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # naive UTC, as the node stores times
    for sid, state in stale:
        conn.execute(
            studies.update().where(studies.c.id == sid).values(
                state="WAITING_REPORT", state_reason=REASON, state_changed_at=now, waiting_since=now,
                report_ref=None, report_hash=None, lease_owner=None, lease_expires_at=None,
            )
        )
        conn.execute(events.insert().values(study_id=sid, at=now, from_state=state, to_state="WAITING_REPORT",
                                            reason=REASON, actor="migration"))


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("report_text")
