"""agent tasks: work for the node agent and its results

Revision ID: 0003_agent_tasks
Revises: 0002_annealer
Create Date: 2026-11-26 06:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_agent_tasks"
down_revision = "0002_annealer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("node_role_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("timeout_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_agent_tasks_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["node_role_id"],
            ["node_roles.id"],
            name=op.f("fk_agent_tasks_node_role_id_node_roles"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_tasks")),
    )
    with op.batch_alter_table("agent_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_agent_tasks_node_state", ["node_id", "state", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_agent_tasks_node_role_id"), ["node_role_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_tasks_node_role_id"))
        batch_op.drop_index("ix_agent_tasks_node_state")
    op.drop_table("agent_tasks")
