"""Networks and ranges: create, update, delete with an Event each, shared by the API and the CLI.

Address arithmetic and allocation live in appliance.ipam; this module owns the life cycle of the rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import events, ipam
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.models import RANGE_KINDS, Network, Range
from appliance.versions import check_and_bump

NETWORK_FIELDS = frozenset(
    {
        "name",
        "cidr",
        "category",
        "conduit",
        "vlan",
        "gateway",
        "dns_servers",
        "domain",
        "interface",
        "ntp_servers",
        "mtu",
    }
)
RANGE_FIELDS = frozenset({"name", "kind", "first", "last"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise InvalidInput("name", "1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
    return name


def get_network(session: Session, network_id: int, *, for_update: bool = False) -> Network:
    query = select(Network).where(Network.id == network_id)
    if for_update:
        query = query.with_for_update()
    network = session.scalar(query)
    if network is None:
        raise NotFound(f"network {network_id} not found", field="id")
    return network


def network_by_name(session: Session, name: str) -> Network:
    network = session.scalar(select(Network).where(Network.name == name))
    if network is None:
        raise NotFound(f"network '{name}' not found", field="name")
    return network


def get_range(session: Session, range_id: int, *, for_update: bool = False) -> Range:
    query = select(Range).where(Range.id == range_id)
    if for_update:
        query = query.with_for_update()
    rng = session.scalar(query)
    if rng is None:
        raise NotFound(f"range {range_id} not found", field="id")
    return rng


def _apply_network(session: Session, network: Network, changes: Mapping[str, Any]) -> dict[str, Any]:
    applied: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in NETWORK_FIELDS:
            raise InvalidInput(key, "is not a network field")
        if key == "name":
            _check_name(value)
            clash = session.scalar(select(Network.id).where(Network.name == value, Network.id != network.id))
            if clash is not None:
                raise Conflict(f"network name '{value}' is taken", field="name")
        if key == "cidr":
            value = str(ipam.parse_network(value))
            if network.id is not None and value != network.cidr:
                has_ranges = session.scalar(select(Range.id).where(Range.network_id == network.id).limit(1))
                if has_ranges is not None:
                    raise Conflict("cannot change the CIDR of a network that has ranges", field="cidr")
        if getattr(network, key) != value:
            applied[key] = value
        setattr(network, key, value)
    ipam.validate_network(network)
    return applied


def create_network(
    session: Session, name: str, cidr: str, *, actor: str = "system", **fields: Any
) -> Network:
    network = Network(name=_check_name(name), dns_servers=[], ntp_servers=[])
    if session.scalar(select(Network.id).where(Network.name == name)) is not None:
        raise Conflict(f"network name '{name}' is taken", field="name")
    _apply_network(session, network, {"cidr": cidr, **{k: v for k, v in fields.items() if v is not None}})
    session.add(network)
    session.flush()
    events.record(
        session,
        "network.create",
        subject_type="network",
        subject_id=network.id,
        actor=actor,
        message=f"network {name} {network.cidr}",
        data={"name": name, "cidr": network.cidr},
    )
    return network


def update_network(
    session: Session,
    network_id: int,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
    actor: str = "system",
) -> Network:
    network = get_network(session, network_id, for_update=True)
    check_and_bump(network, expected_version, f"network {network.name}")
    applied = _apply_network(session, network, changes)
    session.flush()
    events.record(
        session,
        "network.update",
        subject_type="network",
        subject_id=network.id,
        actor=actor,
        message=f"network {network.name}: {', '.join(sorted(applied)) or 'no change'}",
        data={"changes": applied},
    )
    return network


def delete_network(
    session: Session, network_id: int, *, expected_version: int | None = None, actor: str = "system"
) -> None:
    """Remove a network with its ranges and allocations (the database cascades them)."""
    network = get_network(session, network_id, for_update=True)
    if expected_version is not None:
        check_and_bump(network, expected_version, f"network {network.name}")
    name = network.name
    session.delete(network)
    session.flush()
    events.record(
        session,
        "network.delete",
        subject_type="network",
        subject_id=network_id,
        actor=actor,
        message=f"network {name}",
    )


def create_range(
    session: Session, network_id: int, name: str, kind: str, first: str, last: str, *, actor: str = "system"
) -> Range:
    network = get_network(session, network_id)
    _check_name(name)
    if session.scalar(select(Range.id).where(Range.network_id == network_id, Range.name == name)) is not None:
        raise Conflict(f"network '{network.name}' already has a range '{name}'", field="name")
    rng = ipam.make_range(session, network, name, kind, first, last)
    session.flush()
    events.record(
        session,
        "range.create",
        subject_type="range",
        subject_id=rng.id,
        actor=actor,
        message=f"range {network.name}/{name} {kind} {first}-{last}",
        data={"network": network.name, "name": name, "kind": kind, "first": first, "last": last},
    )
    return rng


def update_range(
    session: Session,
    range_id: int,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
    actor: str = "system",
) -> Range:
    rng = get_range(session, range_id, for_update=True)
    check_and_bump(rng, expected_version, f"range {rng.name}")
    network = get_network(session, rng.network_id)
    for key in changes:
        if key not in RANGE_FIELDS:
            raise InvalidInput(key, "is not a range field")
    new = {key: changes.get(key, getattr(rng, key)) for key in RANGE_FIELDS}
    _check_name(new["name"])
    if new["kind"] not in RANGE_KINDS:
        raise InvalidInput("kind", f"must be one of {', '.join(RANGE_KINDS)}")
    if new["name"] != rng.name and session.scalar(
        select(Range.id).where(Range.network_id == rng.network_id, Range.name == new["name"])
    ):
        raise Conflict(f"network '{network.name}' already has a range '{new['name']}'", field="name")
    first_int = ipam.address_in(network, new["first"], "first")
    last_int = ipam.address_in(network, new["last"], "last")
    if last_int < first_int:
        raise InvalidInput("last", f"{new['last']} comes before {new['first']}")
    for other in session.scalars(select(Range).where(Range.network_id == rng.network_id, Range.id != rng.id)):
        if other.first_int <= last_int and first_int <= other.last_int:
            raise InvalidInput("first", f"overlaps range '{other.name}' ({other.first}-{other.last})")
    applied = {k: v for k, v in new.items() if getattr(rng, k) != v}
    for key, value in new.items():
        setattr(rng, key, value)
    rng.first_int, rng.last_int = first_int, last_int
    session.flush()
    events.record(
        session,
        "range.update",
        subject_type="range",
        subject_id=rng.id,
        actor=actor,
        message=f"range {network.name}/{rng.name}: {', '.join(sorted(applied)) or 'no change'}",
        data={"changes": applied},
    )
    return rng


def delete_range(
    session: Session, range_id: int, *, expected_version: int | None = None, actor: str = "system"
) -> None:
    rng = get_range(session, range_id, for_update=True)
    if expected_version is not None:
        check_and_bump(rng, expected_version, f"range {rng.name}")
    name = rng.name
    session.delete(rng)
    session.flush()
    events.record(
        session,
        "range.delete",
        subject_type="range",
        subject_id=range_id,
        actor=actor,
        message=f"range {name}",
    )
