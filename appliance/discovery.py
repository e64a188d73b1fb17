"""Discovery: one-time boot tokens, registering a node from its inventory, and agent tokens.

A booting machine gets a single-use, expiring discovery token on its kernel command line (rendered into
its iPXE script by web/boot). The agent trades it, with the inventory, for a node id and an agent token
it then uses to poll for work. Only SHA-256 digests of tokens are stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from appliance import events, nodes
from appliance.annealer import deployments
from appliance.errors import Unauthorized
from appliance.groupcommit import Batch
from appliance.inventory import Inventory
from appliance.models import BootToken, Node, NodeMac, Role, utcnow

DISCOVERY_TOKEN_TTL = dt.timedelta(minutes=30)
AGENT_TOKEN_TTL = dt.timedelta(days=7)
# the bootenv a node gets once it has registered; a reboot then boots its disk, not discovery again
REGISTERED_BOOTENV = "local"


def _digest(clear: str) -> str:
    return hashlib.sha256(clear.encode()).hexdigest()


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timezone-aware columns back naive (in UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def issue_token(
    session: Session,
    purpose: str,
    *,
    mac: str | None = None,
    node_id: int | None = None,
    ttl: dt.timedelta = DISCOVERY_TOKEN_TTL,
) -> str:
    """A new boot token; the clear text is returned once and never stored."""
    clear = secrets.token_urlsafe(24)
    session.add(
        BootToken(
            token_hash=_digest(clear),
            purpose=purpose,
            mac=mac,
            node_id=node_id,
            expires_at=utcnow() + ttl,
        )
    )
    return clear


def consume_discovery_token(session: Session, clear: str) -> BootToken:
    """Mark a discovery token used, atomically: of two requests racing with one token, one wins."""
    now = utcnow()
    used = session.execute(
        update(BootToken)
        .where(
            BootToken.token_hash == _digest(clear),
            BootToken.purpose == "discovery",
            BootToken.used_at.is_(None),
            BootToken.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(used, "rowcount", 0) != 1:
        raise Unauthorized("discovery token unknown, already used or expired", field="token")
    token = session.scalar(select(BootToken).where(BootToken.token_hash == _digest(clear)))
    assert token is not None
    return token


def node_for_agent(session: Session, clear: str) -> Node:
    """The node an agent token belongs to; records the contact (boot-loop detection reads it)."""
    token = session.scalar(
        select(BootToken).where(BootToken.token_hash == _digest(clear), BootToken.purpose == "agent")
    )
    if token is None or token.node_id is None:
        raise Unauthorized("unknown agent token")
    if _aware(token.expires_at) < utcnow():
        raise Unauthorized("agent token expired")
    node = session.get(Node, token.node_id)
    if node is None:
        raise Unauthorized("the agent token's node was deleted")
    node.last_agent_contact = utcnow()
    return node


def _valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        canonical = str(uuidlib.UUID(value))
    except ValueError:
        return None
    return None if canonical in nodes._BOGUS_UUIDS else canonical


@dataclass
class Registration:
    node: Node
    agent_token: str
    created: bool


def register(
    session: Session,
    inventory: Inventory,
    token: str,
    *,
    address: str | None = None,
    batch: Batch | None = None,
) -> Registration:
    """Create or update the node an inventory describes, matched by DMI UUID or any MAC (never twice).

    In a group commit (`batch`), binding the discovery roles is deferred to one set-based call for every
    node of the batch."""
    boot = consume_discovery_token(session, token)
    macs = inventory.macs()
    if boot.mac and boot.mac not in macs:
        macs.insert(0, boot.mac)
    system_uuid = _valid_uuid(inventory.system.uuid)
    node = nodes.match_node(session, macs=macs, system_uuid=system_uuid)
    interfaces = {nic.mac: nic.name for nic in inventory.nics}
    boot_mac = inventory.boot_mac or boot.mac or macs[0]
    created = node is None
    if node is None:
        node = nodes.create_node(
            session,
            "d" + boot_mac.replace(":", ""),
            macs=_mac_entries(session, None, macs, interfaces, boot_mac),
            actor="discovery",
            system_uuid=system_uuid if _uuid_free(session, system_uuid, None) else None,
            state="discovered",
        )
    else:
        entries = _mac_entries(session, node, macs, interfaces, boot_mac)
        node.macs.clear()
        session.flush()
        for row in entries:
            node.macs.append(NodeMac(**row))
        if system_uuid and node.system_uuid is None and _uuid_free(session, system_uuid, node.id):
            node.system_uuid = system_uuid
        if node.state in ("new", "error"):
            node.state = "discovered"
        node.version += 1
    node.inventory = inventory.stored()
    node.last_agent_contact = utcnow()
    node.last_boot_step = "registered"
    if node.bootenv == "discovery":
        node.bootenv = REGISTERED_BOOTENV
    session.flush()
    system = deployments.system_deployment(session)
    if node.deployment_id is None:
        node.deployment_id = system.id
    deployments.set_discovery(session, node.id, _discovery_data(inventory, address), actor="discovery")
    clear = issue_token(session, "agent", node_id=node.id, ttl=AGENT_TOKEN_TTL)
    events.record(
        session,
        "node.discovered" if created else "node.rediscovered",
        subject_type="node",
        subject_id=node.id,
        actor="discovery",
        message=f"node {node.name} {'discovered' if created else 'rediscovered'} from {boot_mac}",
        data={"macs": macs, "system_uuid": system_uuid, "address": address},
    )
    if batch is None:
        deployments.join_system(session, node.id, actor="discovery")
    else:
        batch.defer("join_system", join_system_many, node.id)
    return Registration(node=node, agent_token=clear, created=created)


def join_system_many(session: Session, node_ids: list[int]) -> None:
    """Every node joins `system` with the roles flagged `discovery`, in one set-based binding."""
    names = list(session.scalars(select(Role.name).where(Role.discovery.is_(True))))
    system = deployments.system_deployment(session)
    deployments.add_nodes(session, system, sorted(set(node_ids)), names, actor="discovery")


def _uuid_free(session: Session, system_uuid: str | None, node_id: int | None) -> bool:
    if system_uuid is None:
        return False
    owner = session.scalar(select(Node.id).where(Node.system_uuid == system_uuid))
    return owner is None or owner == node_id


def _mac_entries(
    session: Session, node: Node | None, macs: list[str], interfaces: dict[str, str], boot_mac: str
) -> list[dict[str, Any]]:
    """The node's MACs after this report: the reported ones plus those it had, minus any another node
    owns (a NIC moved between machines stays with its first owner until an operator moves it)."""
    keep = [m.mac for m in node.macs] if node is not None else []
    rows = []
    for mac in dict.fromkeys([*macs, *keep]):
        owner = session.get(NodeMac, mac)
        if owner is not None and (node is None or owner.node_id != node.id):
            continue
        rows.append({"mac": mac, "interface": interfaces.get(mac), "primary": mac == boot_mac})
    return rows


def _discovery_data(inventory: Inventory, address: str | None) -> dict[str, Any]:
    """Node.discovery: the attributes discovery provides to role inputs (DESIGN §4)."""
    data: dict[str, Any] = {
        "inventory": inventory.stored(),
        "macs": inventory.macs(),
        "boot_mac": inventory.boot_mac,
        "bmc_present": inventory.bmc.present,
    }
    if address:
        data["admin_address"] = address
    if inventory.bmc.address and inventory.bmc.address != "0.0.0.0":
        data["bmc_inband_address"] = inventory.bmc.address
    return data
