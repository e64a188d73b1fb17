"""Nodes and their MACs: create, update, delete and look up, shared by the API, the CLI and discovery.

Every change writes an Event. MACs are stored in one form (`aa:bb:cc:dd:ee:ff`) so the DHCP index,
discovery and the API all key on the same string.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import events
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.models import Bootenv, Node, NodeMac
from appliance.versions import check_and_bump

NODE_STATES = ("new", "discovered", "annealing", "ready", "error", "off")
# Fields an operator may set directly; everything else is written by discovery, the annealer or BMC code.
EDITABLE_FIELDS = frozenset(
    {
        "name",
        "description",
        "state",
        "system_uuid",
        "bootenv",
        "alive",
        "available",
        "hint",
        "bmc_driver",
        "bmc_address",
        "bmc_username",
    }
)
_HEX = re.compile(r"[0-9a-f]{12}")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# DMI UUIDs that firmware fills with placeholders: identical on every board of a model, so matching on
# them would merge different machines (seen on Supermicro and many white-box boards).
_BOGUS_UUIDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",
    }
)


def normalize_mac(value: str, field: str = "mac") -> str:
    """`aa:bb:cc:dd:ee:ff` from colon, dash, Cisco-dot or bare-hex spellings."""
    digits = re.sub(r"[:\-.]", "", value.strip().lower())
    if not _HEX.fullmatch(digits):
        raise InvalidInput(field, f"'{value}' is not a MAC address")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalize_uuid(value: str, field: str = "system_uuid") -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError as exc:
        raise InvalidInput(field, f"'{value}' is not a UUID") from exc


def check_node_name(name: str, field: str = "name") -> str:
    """A node name is a DNS name (RFC 1123 labels, lower case) because DNS serves it as-is."""
    if not name or len(name) > 253:
        raise InvalidInput(field, "must be 1-253 characters")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidInput(
            field,
            f"'{name}' is not DNS-safe: lower-case letters, digits and '-', labels of 1-63, dot-separated",
        )
    return name


def get_node(session: Session, node_id: int, *, for_update: bool = False) -> Node:
    query = select(Node).where(Node.id == node_id)
    if for_update:
        query = query.with_for_update()
    node = session.scalar(query)
    if node is None:
        raise NotFound(f"node {node_id} not found", field="id")
    return node


def node_by_name(session: Session, name: str) -> Node:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        raise NotFound(f"node '{name}' not found", field="name")
    return node


def node_by_mac(session: Session, mac: str) -> Node | None:
    row = session.get(NodeMac, normalize_mac(mac))
    return None if row is None else session.get(Node, row.node_id)


def match_node(session: Session, *, macs: Iterable[str] = (), system_uuid: str | None = None) -> Node | None:
    """The known node a booting machine is: by DMI UUID first (it survives NIC swaps), then by any MAC."""
    if system_uuid:
        wanted = normalize_uuid(system_uuid)
        if wanted not in _BOGUS_UUIDS:
            node = session.scalar(select(Node).where(Node.system_uuid == wanted))
            if node is not None:
                return node
    for mac in macs:
        node = node_by_mac(session, mac)
        if node is not None:
            return node
    return None


def _mac_rows(entries: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        item: dict[str, Any] = {"mac": entry} if isinstance(entry, str) else dict(entry)
        mac = normalize_mac(str(item.get("mac", "")), f"macs[{i}]")
        if mac in seen:
            raise InvalidInput(f"macs[{i}]", f"{mac} is listed twice")
        seen.add(mac)
        rows.append({"mac": mac, "interface": item.get("interface"), "primary": bool(item.get("primary"))})
    if rows and not any(r["primary"] for r in rows):
        rows[0]["primary"] = True
    return rows


def _check_macs_free(session: Session, rows: Sequence[Mapping[str, Any]], node_id: int | None) -> None:
    for row in rows:
        owner = session.get(NodeMac, row["mac"])
        if owner is not None and owner.node_id != node_id:
            raise Conflict(f"MAC {row['mac']} already belongs to node {owner.node_id}", field="macs")


def _set_macs(session: Session, node: Node, entries: Sequence[str | Mapping[str, Any]]) -> None:
    rows = _mac_rows(entries)
    _check_macs_free(session, rows, node.id)
    wanted = {r["mac"]: r for r in rows}
    for existing in list(node.macs):
        if existing.mac not in wanted:
            node.macs.remove(existing)
    session.flush()
    current = {m.mac: m for m in node.macs}
    for mac, row in wanted.items():
        if mac in current:
            current[mac].interface = row["interface"]
            current[mac].primary = row["primary"]
        else:
            node.macs.append(NodeMac(mac=mac, interface=row["interface"], primary=row["primary"]))


def _apply(session: Session, node: Node, changes: Mapping[str, Any]) -> dict[str, Any]:
    applied: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "macs":
            continue
        if key not in EDITABLE_FIELDS:
            raise InvalidInput(key, "is not a field an operator may set")
        if key == "name":
            value = check_node_name(value)
            clash = session.scalar(select(Node.id).where(Node.name == value, Node.id != node.id))
            if clash is not None:
                raise Conflict(f"node name '{value}' is taken", field="name")
        elif key == "bootenv" and session.scalar(select(Bootenv.id).where(Bootenv.name == value)) is None:
            raise InvalidInput("bootenv", f"no bootenv named '{value}'")
        elif key == "state" and value not in NODE_STATES:
            raise InvalidInput("state", f"must be one of {', '.join(NODE_STATES)}")
        elif key == "system_uuid" and value is not None:
            value = normalize_uuid(value)
            clash = session.scalar(select(Node.id).where(Node.system_uuid == value, Node.id != node.id))
            if clash is not None:
                raise Conflict(f"system_uuid {value} already belongs to node {clash}", field="system_uuid")
        if getattr(node, key) != value:
            applied[key] = value
        setattr(node, key, value)
    return applied


def create_node(
    session: Session,
    name: str,
    *,
    macs: Sequence[str | Mapping[str, Any]] = (),
    actor: str = "system",
    **fields: Any,
) -> Node:
    node = Node(name=check_node_name(name))
    if session.scalar(select(Node.id).where(Node.name == node.name)) is not None:
        raise Conflict(f"node name '{name}' is taken", field="name")
    _apply(session, node, {k: v for k, v in fields.items() if v is not None})
    # refuse bad or taken MACs before the row exists, so a caller that swallows the error commits nothing
    _check_macs_free(session, _mac_rows(macs), None)
    session.add(node)
    session.flush()
    _set_macs(session, node, macs)
    session.flush()
    events.record(
        session,
        "node.create",
        subject_type="node",
        subject_id=node.id,
        actor=actor,
        message=f"node {node.name}",
        data={"name": node.name, "macs": [m.mac for m in node.macs]},
    )
    return node


def update_node(
    session: Session,
    node_id: int,
    changes: Mapping[str, Any],
    *,
    expected_version: int | None = None,
    actor: str = "system",
) -> Node:
    """Change a node; `expected_version` (the caller's copy) must still be current, else Conflict."""
    node = get_node(session, node_id, for_update=True)
    check_and_bump(node, expected_version, f"node {node.name}")
    applied = _apply(session, node, changes)
    if "macs" in changes:
        before = [m.mac for m in node.macs]
        _set_macs(session, node, changes["macs"] or [])
        after = [m.mac for m in node.macs]
        if before != after:
            applied["macs"] = after
    session.flush()
    events.record(
        session,
        "node.update",
        subject_type="node",
        subject_id=node.id,
        actor=actor,
        message=f"node {node.name}: {', '.join(sorted(applied)) or 'no change'}",
        data={"changes": applied},
    )
    return node


def delete_node(
    session: Session, node_id: int, *, expected_version: int | None = None, actor: str = "system"
) -> None:
    node = get_node(session, node_id, for_update=True)
    if expected_version is not None:
        check_and_bump(node, expected_version, f"node {node.name}")
    name = node.name
    session.delete(node)
    session.flush()
    events.record(
        session,
        "node.delete",
        subject_type="node",
        subject_id=node_id,
        actor=actor,
        message=f"node {name}",
        data={"name": name},
    )
