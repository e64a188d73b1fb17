"""Work for the node agent (the discovery image, later installed systems): one row per task."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.models.base import Base, utcnow

AGENT_TASK_KINDS = ("script", "bmc", "reboot", "poweroff")
AGENT_TASK_STATES = ("queued", "sent", "ok", "error", "cancelled")


class AgentTask(Base):
    """A task the node's agent picks up when it polls, and the result it reports back.

    `node_role_id` links a task to the node-role whose jig queued it, so the jig can wait for the result.
    """

    __tablename__ = "agent_tasks"
    __table_args__ = (Index("ix_agent_tasks_node_state", "node_id", "state", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    node_role_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_roles.id", ondelete="SET NULL"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    timeout_s: Mapped[int] = mapped_column(Integer, default=600)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output: Mapped[str] = mapped_column(Text, default="")
