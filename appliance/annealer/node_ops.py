"""Operations on a whole node: redeploy (OpenCrowbar's Node.redeploy!) and target_role.

Redeploy re-installs a node from scratch: every node-role of the node goes back to `proposed` with its
results forgotten (wall, run count, run log, retries), the node boots discovery next and is power-reset
through its BMC into a one-time network boot. Node-roles of a committed deployment are then committed
again (todo or blocked, as a commit does), so the node re-anneals without an operator re-committing;
those of a proposed deployment wait for its commit. Children on other nodes go to `blocked` until
this node's node-roles are active again. Every state change goes through `states.transition()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, select
from sqlalchemy.orm import Session

from appliance import events, nodes
from appliance.annealer import states
from appliance.annealer.deployments import descendants
from appliance.bmc.power import power_nodes
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import InvalidInput
from appliance.models import Deployment, NodeRole, Role
from appliance.versions import check_and_bump

_nr = cast(Table, NodeRole.__table__)

# what a node-role learnt from its runs on the old installation: forgotten on redeploy
_FORGET: dict[str, Any] = {
    "wall": {},
    "run_count": 0,
    "runlog": "",
    "attempts": 0,
    "retry_at": None,
    "claimed_by": None,
    "lease_expires_at": None,
}


@dataclass
class RedeployResult:
    node_id: int
    name: str
    node_roles: int  # node-roles of the node reset to proposed
    power_cycled: bool
    power_error: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "node_roles": self.node_roles,
            "power_cycled": self.power_cycled,
            "power_error": self.power_error,
        }

    def summary(self) -> str:
        done = f"redeploy {self.name}: {self.node_roles} node-role(s) reset, bootenv discovery"
        if self.power_cycled:
            return f"{done}, network boot and power cycle sent"
        return f"{done}; power NOT cycled ({self.power_error}): power-cycle it by hand"


def reset_node_roles(session: Session, node_id: int, *, actor: str = "system") -> list[int]:
    """The database half of redeploy: the node's node-roles to proposed and, in committed deployments,
    on to todo/blocked; their children on other nodes to blocked. Returns the reset node-role ids."""
    ids = list(session.scalars(select(NodeRole.id).where(NodeRole.node_id == node_id).order_by(NodeRole.id)))
    if not ids:
        return []
    outside = descendants(session, ids)  # children on other nodes: this node's own ids are excluded
    for from_state in (states.ACTIVE, states.ERROR, states.TRANSITION, states.TODO):
        states.transition(
            session, from_state, states.BLOCKED, ids=outside, actor=actor, reason="parent redeployed"
        )
    for from_state in (states.ACTIVE, states.ERROR, states.TRANSITION, states.TODO, states.BLOCKED):
        states.transition(session, from_state, states.PROPOSED, ids=ids, actor=actor, reason="redeploy")
    # results are forgotten whatever the state was (a proposed one may have run before a propose)
    session.execute(_nr.update().where(_nr.c.id.in_(ids)).values(**_FORGET))
    committed = _nr.c.deployment_id.in_(select(Deployment.id).where(Deployment.state == "committed"))
    states.transition(
        session,
        states.PROPOSED,
        states.TODO,
        ids=ids,
        where=and_(committed, ~states.not_ready()),
        actor=actor,
        reason="redeploy",
    )
    states.transition(
        session, states.PROPOSED, states.BLOCKED, ids=ids, where=committed, actor=actor, reason="redeploy"
    )
    return ids


def redeploy(
    db: Database, settings: Settings, node_id: int, *, actor: str = "system", timeout: float | None = None
) -> RedeployResult:
    """Reset the node's node-roles and bootenv (one transaction), then netboot + power-cycle it.

    A node without a BMC (or with an unreachable one) is still reset: the result says power was not
    cycled, and so does the `node.redeploy` Event.
    """
    with db.session() as session:
        node = nodes.update_node(session, node_id, {"bootenv": "discovery"}, actor=actor)
        name = node.name
        reset = reset_node_roles(session, node_id, actor=actor)
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    power = power_nodes(db, settings, [node_id], "netboot", actor=actor, **kwargs)[0]
    result = RedeployResult(node_id, name, len(reset), power.ok, None if power.ok else power.error)
    with db.session() as session:
        events.record(
            session,
            "node.redeploy",
            subject_type="node",
            subject_id=node_id,
            actor=actor,
            message=result.summary(),
            data=result.as_dict(),
        )
    return result


def set_target_role(
    session: Session,
    node_id: int,
    role: str | None,
    *,
    expected_version: int | None = None,
    actor: str = "system",
) -> None:
    """Anneal the node only up to `role` and its parents (None: everything bound to it runs again).

    The annealer's claim and explain.why() both use states.in_target_scope(); nothing changes state here.
    An unknown role is bad input (InvalidInput naming `target_role`), not a missing node.
    """
    node = nodes.get_node(session, node_id, for_update=True)
    role_id = None
    if role is not None:
        role_id = session.scalar(select(Role.id).where(Role.name == role))
        if role_id is None:
            raise InvalidInput("target_role", f"no role named '{role}'")
    check_and_bump(node, expected_version, f"node {node.name}")
    node.target_role_id = role_id
    session.flush()
    events.record(
        session,
        "node.target_role",
        subject_type="node",
        subject_id=node_id,
        actor=actor,
        message=f"node {node.name}: target role {role or 'cleared'}",
        data={"target_role": role},
    )
