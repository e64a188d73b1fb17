"""Barclamps, roles, attributes, deployments and node-roles: what the annealer works on (DESIGN §3-4)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.models.base import Base, Timestamps, Versioned, utcnow


class Barclamp(Timestamps, Base):
    __tablename__ = "barclamps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[str] = mapped_column(String(32), default="0")
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(1024), default="")


class Role(Timestamps, Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    barclamp_id: Mapped[int | None] = mapped_column(ForeignKey("barclamps.id"), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    jig: Mapped[str] = mapped_column(String(32), default="noop")
    requires: Mapped[list[Any]] = mapped_column(JSON, default=list)
    conflicts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    provides: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # {name: {"schema": {...}, "default": ...}}
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    templates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # jig-specific data: script body, playbook path...
    jig_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    discovery: Mapped[bool] = mapped_column(Boolean, default=False)
    implicit: Mapped[bool] = mapped_column(Boolean, default=False)
    milestone: Mapped[bool] = mapped_column(Boolean, default=False)
    cluster: Mapped[bool] = mapped_column(Boolean, default=False)
    destructive: Mapped[bool] = mapped_column(Boolean, default=False)
    # may run beside another run on the same node (OpenCrowbar allowed one run per node)
    concurrent: Mapped[bool] = mapped_column(Boolean, default=False)
    cohort: Mapped[int] = mapped_column(Integer, default=0)


class Attribute(Base):
    """A named value with a path into node/role data and a schema: the unit of injection."""

    __tablename__ = "attributes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role_id: Mapped[int | None] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), nullable=True)
    path: Mapped[str] = mapped_column(String(255), default="")
    schema: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default: Mapped[Any] = mapped_column(JSON, nullable=True)
    writable: Mapped[bool] = mapped_column(Boolean, default=False)


class Deployment(Timestamps, Versioned, Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="proposed")  # proposed | committed
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True)


class DeploymentRole(Timestamps, Base):
    __tablename__ = "deployment_roles"
    __table_args__ = (UniqueConstraint("deployment_id", "role_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"))
    proposed_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    committed_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class NodeRole(Base):
    """A role on a node in a deployment. Its `state` changes only through appliance.annealer.states."""

    __tablename__ = "node_roles"
    __table_args__ = (
        UniqueConstraint("node_id", "role_id", "deployment_id"),
        Index("ix_node_roles_state_cohort", "state", "cohort", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), index=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="proposed")
    cohort: Mapped[int] = mapped_column(Integer, default=0)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sys_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    wall: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runlog: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class NodeRoleEdge(Base):
    """parent must be active before child may run."""

    __tablename__ = "node_role_edges"

    parent_id: Mapped[int] = mapped_column(ForeignKey("node_roles.id", ondelete="CASCADE"), primary_key=True)
    child_id: Mapped[int] = mapped_column(
        ForeignKey("node_roles.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Run(Base):
    """One jig run of a node-role: its merged inputs, outputs and log, so it can be replayed."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    node_role_id: Mapped[int] = mapped_column(ForeignKey("node_roles.id", ondelete="CASCADE"), index=True)
    annealer: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), default="running")  # ok|error|discarded|replay-*
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log: Mapped[str] = mapped_column(Text, default="")
    # a replay (`kiln noderole replay`) re-runs a recorded run's inputs; it never changes state
    replay_of: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AnnealerHeartbeat(Base):
    __tablename__ = "annealer_heartbeats"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HookCursor(Base):
    """The one row saying how far role hooks have run through the Event log (appliance.annealer.hooks).

    An annealer claims the window (last_event_id, claimed_upto] until lease_expires_at, runs its hooks
    and then moves last_event_id; a claim whose lease ran out is taken over by another annealer.
    """

    __tablename__ = "hook_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_upto: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), nullable=True
    )
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
