"""node switches: operator pause of receiving, processing and sending

Revision ID: ops_pause_switches
Revises: ops_token_scopes
Create Date: 2026-12-04 16:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = "ops_pause_switches"
down_revision = "ops_token_scopes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No row means "running": an upgraded node keeps working exactly as before.
    op.create_table(
        "node_switches",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("node_switches")
