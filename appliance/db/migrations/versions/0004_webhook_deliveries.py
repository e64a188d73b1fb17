"""webhook deliveries: when created and last tried, the last error, one row per sink and event

Revision ID: 0004_webhook_deliveries
Revises: 0003_agent_tasks
Create Date: 2026-11-26 07:00:00
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from alembic import op

revision = "0004_webhook_deliveries"
down_revision = "0003_agent_tasks"
branch_labels = None
depends_on = None


def _recreate() -> Literal["always", "auto"]:
    # SQLite's ADD COLUMN refuses a CURRENT_TIMESTAMP default: rebuild the table there, ALTER elsewhere
    return "always" if op.get_context().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None, recreate=_recreate()) as batch_op:
        batch_op.add_column(
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                server_default=sa.text("CURRENT_TIMESTAMP"),
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_deliveries_sink_event", ["sink_id", "event_id"], unique=True)
        batch_op.create_index("ix_deliveries_due", ["sink_id", "status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None, recreate=_recreate()) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.drop_index("ix_deliveries_sink_event")
        batch_op.drop_column("last_error")
        batch_op.drop_column("last_attempt_at")
        batch_op.drop_column("created_at")
