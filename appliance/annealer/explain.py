"""Why is this node-role not running? Every cause the annealer itself checks, in words, recursively.

OpenCrowbar's users restarted services to find out why a node-role sat in `todo` (digitalrebar/core
#431). Here each condition of "runnable" (DESIGN §4) is checked and named, and a parent that is not
active is explained in turn, so the answer ends at the node-role that actually needs attention.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.annealer import states
from appliance.errors import NotFound
from appliance.jigs import REGISTRY
from appliance.models import AnnealerHeartbeat, Deployment, Node, NodeRole, NodeRoleEdge, Role, utcnow

MAX_DEPTH = 8


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=dt.UTC)
    return value


def why(session: Session, node_role_id: int, *, heartbeat_seconds: float = 30.0) -> dict[str, Any]:
    """{id, node, role, state, runnable, reasons: [{code, message, parent?}]}."""
    return _why(session, node_role_id, heartbeat_seconds, depth=0, seen=set())


def _why(
    session: Session, nr_id: int, heartbeat_seconds: float, *, depth: int, seen: set[int]
) -> dict[str, Any]:
    nr = session.get(NodeRole, nr_id)
    if nr is None:
        raise NotFound(f"node-role {nr_id} not found")
    seen.add(nr_id)
    node, role = session.get(Node, nr.node_id), session.get(Role, nr.role_id)
    deployment = session.get(Deployment, nr.deployment_id)
    assert node is not None and role is not None and deployment is not None
    reasons: list[dict[str, Any]] = []

    def say(code: str, message: str, **extra: Any) -> None:
        reasons.append({"code": code, "message": message, **extra})

    now = utcnow()
    if nr.state == states.ACTIVE:
        pass
    elif nr.state == states.TRANSITION:
        lease = _aware(nr.lease_expires_at)
        until = f", lease until {lease:%Y-%m-%d %H:%M:%S}Z" if lease else ""
        say("running", f"running on annealer {nr.claimed_by}{until}")
    elif nr.state == states.ERROR:
        first = (nr.runlog or "").strip().splitlines()[:1]
        say(
            "error",
            f"its jig failed ({first[0] if first else 'no log'}); retry with `kiln noderole retry {nr.id}`",
        )
    elif nr.state == states.PROPOSED or deployment.state != "committed":
        say("deployment", f"deployment {deployment.name} is {deployment.state}: commit it to start")
    if nr.state in (states.TODO, states.BLOCKED):
        if not node.alive:
            say("node_not_alive", f"node {node.name} is not alive")
        if not node.available:
            say("node_not_available", f"node {node.name} is not available (taken out of Kiln's hands)")
        if node.target_role_id is not None and not _in_target(session, nr.id):
            target = session.get(Role, node.target_role_id)
            say(
                "target_role",
                f"node {node.name} is annealed only up to role {target.name if target else '?'} and its"
                f" parents; {role.name} is neither (clear or change the node's target role)",
            )
        if role.jig not in REGISTRY:
            say("jig", f"jig '{role.jig}' of role {role.name} is not registered in this Kiln")
        retry_at = _aware(nr.retry_at)
        if nr.state == states.TODO and retry_at is not None and retry_at > now:
            say("backoff", f"attempt {nr.attempts} failed; retry backoff until {retry_at:%Y-%m-%d %H:%M:%S}Z")
        _parents(session, nr, heartbeat_seconds, depth, seen, say)
        _busy_node(session, nr, role, say)
        if nr.state == states.TODO and not reasons:
            _annealers(session, heartbeat_seconds, now, say)
    return {
        "id": nr.id,
        "node": node.name,
        "role": role.name,
        "deployment": deployment.name,
        "state": nr.state,
        "runnable": nr.state == states.TODO and all(r["code"] == "waiting" for r in reasons),
        "reasons": reasons,
    }


def _in_target(session: Session, nr_id: int) -> bool:
    scoped = select(NodeRole.id).join(Node, Node.id == NodeRole.node_id)
    return (
        session.scalar(
            scoped.where(NodeRole.id == nr_id, states.in_target_scope(NodeRole.id, Node.target_role_id))
        )
        is not None
    )


def _parents(
    session: Session, nr: NodeRole, heartbeat_seconds: float, depth: int, seen: set[int], say: Any
) -> None:
    parents = session.execute(
        select(NodeRole.id, NodeRole.state, Role.name, Node.name)
        .join(NodeRoleEdge, NodeRoleEdge.parent_id == NodeRole.id)
        .join(Role, Role.id == NodeRole.role_id)
        .join(Node, Node.id == NodeRole.node_id)
        .where(NodeRoleEdge.child_id == nr.id, NodeRole.state != states.ACTIVE)
        .order_by(NodeRole.cohort, NodeRole.id)
    ).all()
    for parent_id, state, role_name, node_name in parents:
        nested = None
        if depth < MAX_DEPTH and parent_id not in seen:
            nested = _why(session, parent_id, heartbeat_seconds, depth=depth + 1, seen=seen)
        say("parent", f"parent {role_name} on {node_name} is {state}", parent=nested)


def _busy_node(session: Session, nr: NodeRole, role: Role, say: Any) -> None:
    if role.concurrent or nr.state != states.TODO:
        return
    busy = session.execute(
        select(Role.name)
        .join(NodeRole, NodeRole.role_id == Role.id)
        .where(
            NodeRole.node_id == nr.node_id,
            NodeRole.state == states.TRANSITION,
            NodeRole.id != nr.id,
            Role.concurrent.is_(False),
        )
        .limit(1)
    ).scalar()
    if busy is not None and REGISTRY.get(role.jig) is not None and not REGISTRY[role.jig].inline:
        say("node_busy", f"its node is running {busy}: one run per node at a time")


def _annealers(session: Session, heartbeat_seconds: float, now: dt.datetime, say: Any) -> None:
    last = _aware(session.scalar(select(func.max(AnnealerHeartbeat.seen_at))))
    if last is None:
        say("no_annealer", "no annealer has ever reported: start kiln-annealer")
    elif (now - last).total_seconds() > heartbeat_seconds:
        say(
            "no_annealer",
            f"no annealer heartbeat for {(now - last).total_seconds():.0f} s: is kiln-annealer running?",
        )
    else:
        say("waiting", "runnable: waiting for an annealer to claim it")
