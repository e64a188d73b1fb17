"""/nodes: machines of the fleet, their MACs and target role; /nodes/<id>/redeploy."""

from __future__ import annotations

from flask import Blueprint
from pydantic import Field
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, defer

from appliance import nodes
from appliance.annealer import node_ops
from appliance.models import Node, NodeMac, Role
from web.api.access import actor
from web.api.endpoint import changes, endpoint, expected_version, read_session, write_session
from web.api.paging import page_of, paginate
from web.api.schemas import NodeIn, NodeOut, NodePatch, NodeQuery, NodeSummaryOut, Out
from web.context import kiln

bp = Blueprint("nodes", __name__)


def _target_role(session: Session, node: Node) -> str | None:
    if node.target_role_id is None:
        return None
    return session.scalar(select(Role.name).where(Role.id == node.target_role_id))


def _out(session: Session, node: Node) -> NodeOut:
    out = NodeOut.model_validate(node)
    out.target_role = _target_role(session, node)
    return out


@endpoint(bp, "GET", "/nodes", query=NodeQuery, response=page_of(NodeSummaryOut), summary="List nodes")
def nodes_get(query: NodeQuery) -> dict[str, object]:
    """Filter by exact `name`, `state` or one of the node's MACs; `q` searches names and MACs."""
    # inventories and discovery data are large and not part of a list item: never read them here
    stmt = select(Node).options(defer(Node.inventory), defer(Node.discovery))
    if query.name is not None:
        stmt = stmt.where(Node.name == query.name)
    if query.state is not None:
        stmt = stmt.where(Node.state == query.state)
    if query.mac is not None:
        mac = nodes.normalize_mac(query.mac)
        stmt = stmt.where(Node.id.in_(select(NodeMac.node_id).where(NodeMac.mac == mac)))
    if query.q:
        text = query.q.lower()
        stmt = stmt.where(
            or_(
                func.lower(Node.name).contains(text, autoescape=True),
                Node.id.in_(select(NodeMac.node_id).where(NodeMac.mac.contains(text, autoescape=True))),
            )
        )
    with read_session() as s:
        return paginate(s, stmt, Node.id, query, NodeSummaryOut.model_validate)


@endpoint(bp, "POST", "/nodes", body=NodeIn, response=NodeOut, status=201, summary="Create a node")
def node_post(body: NodeIn) -> NodeOut:
    fields = changes(body)
    target = fields.pop("target_role", None)
    with write_session() as s:
        node = nodes.create_node(s, fields.pop("name"), macs=fields.pop("macs"), actor=actor(), **fields)
        if target is not None:
            node_ops.set_target_role(s, node.id, target, actor=actor())
        return _out(s, node)


@endpoint(bp, "GET", "/nodes/<int:node_id>", response=NodeOut, summary="Show a node")
def node_get(node_id: int) -> NodeOut:
    with read_session() as s:
        return _out(s, nodes.get_node(s, node_id))


@endpoint(bp, "PUT", "/nodes/<int:node_id>", body=NodeIn, response=NodeOut, summary="Replace a node's fields")
def node_put(node_id: int, body: NodeIn) -> NodeOut:
    return _update(node_id, body)


@endpoint(
    bp,
    "PATCH",
    "/nodes/<int:node_id>",
    body=NodePatch,
    response=NodeOut,
    summary="Change some of a node's fields",
)
def node_patch(node_id: int, body: NodePatch) -> NodeOut:
    return _update(node_id, body)


def _update(node_id: int, body: NodeIn | NodePatch) -> NodeOut:
    fields = changes(body)
    # PATCH: absent leaves the target role alone, null clears it; PUT: absent clears it too
    targeting = "target_role" in fields
    target = fields.pop("target_role", None)
    version = expected_version(body)
    with write_session() as s:
        # locked from the first read: a later FOR UPDATE would hand back this identity-mapped copy
        # unrefreshed, and the version check would compare against a stale version (PostgreSQL)
        node = nodes.get_node(s, node_id, for_update=True)
        if targeting and target != _target_role(s, node):
            node_ops.set_target_role(s, node_id, target, expected_version=version, actor=actor())
            if not fields:
                return _out(s, node)
            version = None  # checked above; the bump there must not read as someone else's change
        node = nodes.update_node(s, node_id, fields, expected_version=version, actor=actor())
        return _out(s, node)


@endpoint(bp, "DELETE", "/nodes/<int:node_id>", status=204, summary="Delete a node")
def node_delete(node_id: int) -> None:
    with write_session() as s:
        nodes.delete_node(s, node_id, expected_version=expected_version(), actor=actor())


class RedeployOut(Out):
    node_id: int
    name: str
    node_roles: int = Field(description="node-roles of the node reset to proposed (and re-committed)")
    power_cycled: bool = Field(description="false: no BMC or the BMC failed; the reset is done anyway")
    power_error: str | None
    message: str


@endpoint(
    bp,
    "POST",
    "/nodes/<int:node_id>/redeploy",
    response=RedeployOut,
    summary="Re-install a node: node-roles to proposed, bootenv discovery, network boot + power cycle",
)
def node_redeploy_post(node_id: int) -> RedeployOut:
    """200 even when power could not be cycled (no BMC): `power_cycled` false and `power_error` say so."""
    web = kiln()
    result = node_ops.redeploy(web.db, web.settings, node_id, actor=actor())
    return RedeployOut(
        node_id=result.node_id,
        name=result.name,
        node_roles=result.node_roles,
        power_cycled=result.power_cycled,
        power_error=result.power_error,
        message=result.summary(),
    )
