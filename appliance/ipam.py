"""IP address management: networks, ranges and atomic allocation of addresses to nodes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance import events
from appliance.errors import InvalidInput, NotFound, RangeExhausted
from appliance.models import RANGE_KINDS, Allocation, Lease, Network, Range, Reservation


@dataclass(frozen=True)
class RangeUsage:
    size: int
    used: int

    @property
    def free(self) -> int:
        return self.size - self.used


def parse_network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidInput("cidr", str(exc)) from exc


def address_in(network: Network, value: str, field: str) -> int:
    """The integer form of `value`, checked to lie inside `network` (not its network/broadcast)."""
    net = parse_network(network.cidr)
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidInput(field, f"'{value}' is not an IP address") from exc
    if addr not in net:
        raise InvalidInput(field, f"{value} is outside {network.cidr}")
    if net.version == 4 and net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
        raise InvalidInput(field, f"{value} is the network or broadcast address of {network.cidr}")
    return int(addr)


def validate_network(network: Network) -> None:
    net = parse_network(network.cidr)
    if network.gateway:
        address_in(network, network.gateway, "gateway")
    for i, server in enumerate(network.dns_servers or []):
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise InvalidInput(f"dns_servers[{i}]", f"'{server}' is not an IP address") from exc
    if network.vlan is not None and not 0 <= network.vlan <= 4094:
        raise InvalidInput("vlan", "must be 0-4094")
    del net


def make_range(session: Session, network: Network, name: str, kind: str, first: str, last: str) -> Range:
    """A new range, checked to lie in its network and not to overlap another range of it."""
    if kind not in RANGE_KINDS:
        raise InvalidInput("kind", f"must be one of {', '.join(RANGE_KINDS)}")
    first_int = address_in(network, first, "first")
    last_int = address_in(network, last, "last")
    if last_int < first_int:
        raise InvalidInput("last", f"{last} comes before {first}")
    for other in session.scalars(select(Range).where(Range.network_id == network.id)):
        if other.first_int <= last_int and first_int <= other.last_int:
            raise InvalidInput(
                "first", f"{first}-{last} overlaps range '{other.name}' ({other.first}-{other.last})"
            )
    rng = Range(
        network_id=network.id,
        name=name,
        kind=kind,
        first=first,
        last=last,
        first_int=first_int,
        last_int=last_int,
    )
    session.add(rng)
    return rng


def _lock_range(session: Session, range_id: int) -> Range:
    # PostgreSQL: the row lock serialises allocators of one range. SQLite: every write session already
    # holds the database write lock (BEGIN IMMEDIATE), so FOR UPDATE is dropped by the dialect.
    rng = session.scalar(select(Range).where(Range.id == range_id).with_for_update())
    if rng is None:
        raise NotFound(f"range {range_id} not found")
    return rng


def _taken(session: Session, rng: Range) -> set[int]:
    taken: set[int] = set()
    for model in (Allocation, Lease):
        taken.update(
            session.scalars(
                select(model.address_int).where(
                    model.network_id == rng.network_id,
                    model.address_int.between(rng.first_int, rng.last_int),
                )
            )
        )
    for address in session.scalars(
        select(Reservation.address).where(Reservation.network_id == rng.network_id)
    ):
        taken.add(int(ipaddress.ip_address(address)))
    return taken


def allocate(
    session: Session,
    range_id: int,
    *,
    node_id: int | None = None,
    mac: str | None = None,
    hostname: str | None = None,
    address: str | None = None,
    actor: str = "system",
) -> Allocation:
    """Give the lowest free address of a range (or `address`, if free) to a node or MAC.

    Atomic across threads and processes: concurrent callers never receive the same address.
    """
    rng = _lock_range(session, range_id)
    network = session.get(Network, rng.network_id)
    assert network is not None
    taken = _taken(session, rng)
    if network.gateway:
        taken.add(int(ipaddress.ip_address(network.gateway)))
    if address is not None:
        wanted = address_in(network, address, "address")
        if not rng.first_int <= wanted <= rng.last_int:
            raise InvalidInput("address", f"{address} is outside range '{rng.name}' ({rng.first}-{rng.last})")
        if wanted in taken:
            raise RangeExhausted(f"{address} is already allocated", field="address")
        chosen = wanted
    else:
        chosen = next((i for i in range(rng.first_int, rng.last_int + 1) if i not in taken), -1)
        if chosen < 0:
            raise RangeExhausted(
                f"range '{rng.name}' of network '{network.name}' ({rng.first}-{rng.last}) has no free address",
                field="range_id",
            )
    text = str(ipaddress.ip_address(chosen))
    allocation = Allocation(
        network_id=rng.network_id,
        range_id=rng.id,
        node_id=node_id,
        mac=mac,
        hostname=hostname,
        address=text,
        address_int=chosen,
        purpose={"bmc": "bmc", "dhcp": "dhcp"}.get(rng.kind, "host"),
    )
    session.add(allocation)
    session.flush()
    events.record(
        session,
        "allocation.create",
        subject_type="allocation",
        subject_id=allocation.id,
        actor=actor,
        message=f"{text} from {network.name}/{rng.name}" + (f" to node {node_id}" if node_id else ""),
        data={"network": network.name, "range": rng.name, "address": text, "node_id": node_id},
    )
    return allocation


def release(session: Session, allocation_id: int, *, actor: str = "system") -> None:
    allocation = session.get(Allocation, allocation_id)
    if allocation is None:
        raise NotFound(f"allocation {allocation_id} not found")
    session.delete(allocation)
    events.record(
        session,
        "allocation.delete",
        subject_type="allocation",
        subject_id=allocation_id,
        actor=actor,
        message=f"released {allocation.address}",
        data={"address": allocation.address, "node_id": allocation.node_id},
    )


def usage(session: Session, rng: Range) -> RangeUsage:
    used = session.scalar(
        select(func.count())
        .select_from(Allocation)
        .where(
            Allocation.network_id == rng.network_id,
            Allocation.address_int.between(rng.first_int, rng.last_int),
        )
    )
    leased = session.scalar(
        select(func.count())
        .select_from(Lease)
        .where(
            Lease.network_id == rng.network_id,
            Lease.state == "active",
            Lease.address_int.between(rng.first_int, rng.last_int),
        )
    )
    return RangeUsage(size=rng.last_int - rng.first_int + 1, used=int(used or 0) + int(leased or 0))
