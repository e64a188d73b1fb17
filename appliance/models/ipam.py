"""IPAM and DHCP state: networks, ranges, routers, allocations, reservations, leases."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from appliance.models.base import Base, Timestamps, Versioned, utcnow

RANGE_KINDS = ("dhcp", "host", "bmc", "dynamic")


class Network(Timestamps, Versioned, Base):
    __tablename__ = "networks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    cidr: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(32), default="admin")  # admin | bmc | storage | public
    conduit: Mapped[str] = mapped_column(String(64), default="1g0")
    vlan: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gateway: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dns_servers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    domain: Mapped[str | None] = mapped_column(String(253), nullable=True)
    # the interface Kiln's DHCP serves this network on (None: reached through a relay)
    interface: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ntp_servers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    mtu: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Range(Timestamps, Versioned, Base):
    __tablename__ = "ranges"
    __table_args__ = (UniqueConstraint("network_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # one of RANGE_KINDS
    first: Mapped[str] = mapped_column(String(64))
    last: Mapped[str] = mapped_column(String(64))
    first_int: Mapped[int] = mapped_column(BigInteger)
    last_int: Mapped[int] = mapped_column(BigInteger)


class Router(Base):
    __tablename__ = "routers"

    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(64))
    pref: Mapped[int] = mapped_column(Integer, default=0)


class Allocation(Timestamps, Base):
    """An address given to a node (or held for a MAC before a node exists)."""

    __tablename__ = "allocations"
    __table_args__ = (UniqueConstraint("network_id", "address_int"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    range_id: Mapped[int] = mapped_column(ForeignKey("ranges.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True, index=True)
    address: Mapped[str] = mapped_column(String(64))
    address_int: Mapped[int] = mapped_column(BigInteger)
    hostname: Mapped[str | None] = mapped_column(String(253), nullable=True)
    purpose: Mapped[str] = mapped_column(String(16), default="host")  # host | bmc | dhcp


class Reservation(Timestamps, Base):
    """A fixed MAC → address binding for DHCP."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str | None] = mapped_column(String(253), nullable=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Lease(Base):
    """A DHCP lease. One row per (network, address): a new client on the address replaces the row."""

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("network_id", "address_int"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17), index=True)
    address: Mapped[str] = mapped_column(String(64))
    address_int: Mapped[int] = mapped_column(BigInteger)
    client_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hostname: Mapped[str | None] = mapped_column(String(253), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active|released|declined|expired
    starts_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ends_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    relay: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # bare-metal options the client sent (arch, vendor class, user class) for the boot pages
    client_arch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vendor_class: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ipxe: Mapped[bool] = mapped_column(Boolean, default=False)
