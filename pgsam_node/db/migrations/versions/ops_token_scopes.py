"""api tokens: key id and scopes

Revision ID: ops_token_scopes
Revises: 0001
Create Date: 2026-11-23 20:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = "ops_token_scopes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.create_index(batch_op.f("ix_api_tokens_key_id"), ["key_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_key_id"))
        batch_op.drop_column("scopes")
        batch_op.drop_column("key_id")
