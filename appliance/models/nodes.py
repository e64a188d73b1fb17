"""Nodes, their MACs, boot environments and one-time boot tokens."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.models.base import Base, Timestamps, Versioned, utcnow

if TYPE_CHECKING:
    from appliance.models.annealer import Deployment


class Node(Timestamps, Versioned, Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # lifecycle as the operator sees it: new, discovered, annealing, ready, error, off
    state: Mapped[str] = mapped_column(String(32), default="new", index=True)
    system_uuid: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    inventory: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # discovery-level attribute data (DESIGN §4 injection order) and operator hints
    discovery: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hint: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bootenv: Mapped[str] = mapped_column(String(64), default="discovery")
    alive: Mapped[bool] = mapped_column(Boolean, default=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True)
    target_role_id: Mapped[int | None] = mapped_column(ForeignKey("roles.id"), nullable=True)

    bmc_driver: Mapped[str | None] = mapped_column(String(16), nullable=True)  # ipmi | redfish
    bmc_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    bmc_username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Fernet token of the password; never leaves appliance/bmc in clear
    bmc_password_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    power_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    power_checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    last_boot_step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_agent_contact: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    macs: Mapped[list[NodeMac]] = relationship(
        back_populates="node", cascade="all, delete-orphan", lazy="selectin", order_by="NodeMac.mac"
    )
    deployment: Mapped[Deployment | None] = relationship(lazy="raise_on_sql")


class NodeMac(Base):
    """A MAC address belongs to at most one node; the DHCP and discovery lookups key on it."""

    __tablename__ = "node_macs"

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    interface: Mapped[str | None] = mapped_column(String(32), nullable=True)
    primary: Mapped[bool] = mapped_column(Boolean, default=False)

    node: Mapped[Node] = relationship(back_populates="macs")


class Bootenv(Timestamps, Versioned, Base):
    """A boot target: discovery, local disk, an installer or an image."""

    __tablename__ = "bootenvs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="installer")  # discovery|local|installer|image
    description: Mapped[str] = mapped_column(Text, default="")
    kernel: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    initrd: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    kernel_args: Mapped[str] = mapped_column(Text, default="")
    template: Mapped[str | None] = mapped_column(String(255), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class BootToken(Base):
    """A single-use, expiring token handed to a booting node (discovery) or an agent."""

    __tablename__ = "boot_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # discovery | agent
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BootFetch(Base):
    """Each boot step a node fetched (iPXE script, kernel, initrd...): boot-loop detection reads it."""

    __tablename__ = "boot_fetches"

    id: Mapped[int] = mapped_column(primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), index=True)
    step: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    count: Mapped[int] = mapped_column(Integer, default=1)
