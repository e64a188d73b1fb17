"""One node: inventory, addresses, BMC and power, bootenv, node-roles with their runs, events.

Three live fragments (summary, roles, events) are re-fetched by kiln.js when an event names the node
or one of its node-roles. Buttons post to the actions below, which call the same functions as the
API and CLI (appliance.bmc.power, appliance.nodes, appliance.annealer.deployments and node_ops).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import Blueprint, flash, redirect, request, url_for
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance import nodes
from appliance.annealer import deployments as deployment_ops
from appliance.annealer import explain, node_ops, states
from appliance.bmc.power import power_nodes
from appliance.errors import InvalidInput
from appliance.models import Allocation, Deployment, Event, Lease, Network, NodeRole, Role, Run
from web.admin.guard import action, back, done, page
from web.admin.nodes import power_summary, reprovision
from web.admin.rendering import render
from web.api.access import Caller
from web.context import kiln

bp = Blueprint("node_detail", __name__)

POWER_BUTTONS = (("on", "Power on"), ("off", "Power off"), ("cycle", "Power cycle"), ("status", "Read state"))
RUNS_PER_ROLE = 3
EVENTS_SHOWN = 40


def _node_roles(session: Session, node_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(NodeRole, Role.name, Role.jig, Deployment.name)
        .join(Role, Role.id == NodeRole.role_id)
        .join(Deployment, Deployment.id == NodeRole.deployment_id)
        .where(NodeRole.node_id == node_id)
        .order_by(NodeRole.cohort, Role.name, NodeRole.id)
    ).all()
    ids = [nr.id for nr, *_ in rows]
    # the last few runs of each node-role, whatever the others ran: one query with a window
    rank = func.row_number().over(partition_by=Run.node_role_id, order_by=Run.id.desc()).label("rank")
    recent = select(Run.id, rank).where(Run.node_role_id.in_(ids)).subquery()
    runs: dict[int, list[Run]] = defaultdict(list)
    for run in session.scalars(
        select(Run)
        .join(recent, recent.c.id == Run.id)
        .where(recent.c.rank <= RUNS_PER_ROLE)
        .order_by(Run.id.desc())
    ):
        runs[run.node_role_id].append(run)
    return [
        {
            "nr": nr,
            "role": role,
            "jig": jig,
            "deployment": dep,
            "runs": runs.get(nr.id, []),
            # the same answer as GET /api/v2/node_roles/<id>/why, so the page never leaves anyone guessing
            "why": None if nr.state == states.ACTIVE else explain.why(session, nr.id),
        }
        for nr, role, jig, dep in rows
    ]


def _events(session: Session, node_id: int, node_role_ids: list[int]) -> list[Event]:
    mine = and_(Event.subject_type == "node", Event.subject_id == node_id)
    theirs = and_(Event.subject_type == "node_role", Event.subject_id.in_(node_role_ids))
    return list(
        session.scalars(
            select(Event)
            .where(or_(mine, theirs) if node_role_ids else mine)
            .order_by(Event.id.desc())
            .limit(EVENTS_SHOWN)
        )
    )


def node_context(session: Session, node_id: int) -> dict[str, Any]:
    node = nodes.get_node(session, node_id)
    roles = _node_roles(session, node_id)
    nr_ids = [r["nr"].id for r in roles]
    macs = [m.mac for m in node.macs]
    allocations = session.execute(
        select(Allocation, Network.name)
        .join(Network, Network.id == Allocation.network_id)
        .where(Allocation.node_id == node_id)
        .order_by(Network.name, Allocation.address_int)
    ).all()
    leases = list(session.scalars(select(Lease).where(Lease.mac.in_(macs)).order_by(Lease.starts_at.desc())))
    deployment = session.get(Deployment, node.deployment_id) if node.deployment_id else None
    target = session.get(Role, node.target_role_id) if node.target_role_id else None
    subjects = " ".join([f"node:{node_id}", *(f"node_role:{i}" for i in nr_ids)])
    return {
        "node": node,
        "inventory": node.inventory or {},
        "roles": roles,
        "allocations": allocations,
        "leases": leases,
        "deployment": deployment,
        "target_role": target.name if target else None,
        "all_roles": list(session.scalars(select(Role.name).order_by(Role.name))),
        "events": _events(session, node_id, nr_ids),
        "subjects": subjects,
        "power_buttons": POWER_BUTTONS,
        "has_bmc": bool(node.bmc_address),
    }


@bp.get("/nodes/<int:node_id>")
@page
def node_page(node_id: int) -> str:
    with kiln().db.read_session() as s:
        context = node_context(s, node_id)
    base = url_for("admin.node_detail.node_page", node_id=node_id)
    fragments = {
        "summary": "admin/_node_summary.html",
        "roles": "admin/_node_roles.html",
        "events": "admin/_node_events.html",
    }
    return render("admin/node.html", fragments, base_url=base, **context)


@bp.post("/nodes/<int:node_id>/power")
@action("operator")
def node_power(who: Caller, node_id: int) -> WerkzeugResponse:
    verb = request.form.get("power", "")
    if verb not in dict(POWER_BUTTONS):
        raise InvalidInput("power", "choose on, off, cycle or status")
    web = kiln()
    results = power_nodes(web.db, web.settings, [node_id], verb, actor=who.username)
    message = power_summary(verb, results)
    if verb != "status":
        # an action writes no power_state of its own; read it back so every open page shows the change
        power_nodes(web.db, web.settings, [node_id], "status", actor=who.username)
    return done(message)


@bp.post("/nodes/<int:node_id>/reprovision")
@action("operator")
def node_reprovision(who: Caller, node_id: int) -> WerkzeugResponse:
    return done(reprovision(who, [node_id]))


@bp.post("/nodes/<int:node_id>/redeploy")
@action("operator")
def node_redeploy(who: Caller, node_id: int) -> WerkzeugResponse:
    """Re-install the node: the same node_ops.redeploy() as POST /api/v2/nodes/<id>/redeploy."""
    web = kiln()
    result = node_ops.redeploy(web.db, web.settings, node_id, actor=who.username)
    if not result.power_cycled:
        # the reset is committed; the operator must still power-cycle by hand: not an "ok" message
        flash(result.summary(), "error")
        return redirect(back())
    return done(result.summary())


@bp.post("/nodes/<int:node_id>/target_role")
@action("operator")
def node_target_role(who: Caller, node_id: int) -> WerkzeugResponse:
    """Set or clear (empty choice) the role the node anneals up to, as `kiln node set --target-role`."""
    role = request.form.get("target_role", "").strip() or None
    with kiln().db.session() as s:
        node_ops.set_target_role(s, node_id, role, actor=who.username)
        name = nodes.get_node(s, node_id).name
    return done(f"{name}: target role {role or 'cleared (every node-role may run)'}")


@bp.post("/nodes/<int:node_id>/flags")
@action("operator")
def node_flags(who: Caller, node_id: int) -> WerkzeugResponse:
    """Toggle alive / available: an operator parks a node without deleting it."""
    flag = request.form.get("flag", "")
    if flag not in ("alive", "available"):
        raise InvalidInput("flag", "alive or available")
    value = request.form.get("value") == "true"
    with kiln().db.session() as s:
        node = nodes.update_node(s, node_id, {flag: value}, actor=who.username)
        name = node.name
    return done(f"{name}: {flag} set to {'yes' if value else 'no'}")


@bp.post("/node_roles/<int:node_role_id>/retry")
@action("operator")
def node_role_retry(who: Caller, node_role_id: int) -> WerkzeugResponse:
    with kiln().db.session() as s:
        state = deployment_ops.retry(s, node_role_id, actor=who.username)
    return done(f"node-role {node_role_id} retried: now {state}")
