"""hook cursor: how far role hooks have run through the event log, and who holds the current window

Revision ID: 0005_hook_cursor
Revises: 0004_webhook_deliveries
Create Date: 2026-11-26 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_hook_cursor"
down_revision = "0004_webhook_deliveries"
branch_labels = None
depends_on = None

EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hook_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_event_id", EVENT_ID, nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_upto", EVENT_ID, nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_cursor")),
    )
    # Start at the log's end as it stands now: an upgraded appliance must not replay its whole history
    # into hooks (a fresh database has no events yet, so there every event counts).
    op.execute("INSERT INTO hook_cursor (id, last_event_id) SELECT 1, COALESCE(MAX(id), 0) FROM events")


def downgrade() -> None:
    op.drop_table("hook_cursor")
