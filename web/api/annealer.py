"""/deployments (create, bind roles and nodes, commit, propose, graph), /node_roles (list, show, retry,
replay, user data) and /roles: the annealer's API. The work is done by appliance.annealer."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from appliance.annealer import deployments, explain, runlog
from appliance.annealer.graph import deployment_graph
from appliance.models import Deployment, NodeRole, Role
from web.api.access import actor
from web.api.endpoint import endpoint, read_session, write_session
from web.api.paging import ListQuery, page_of, paginate
from web.api.schemas import Strict, Timestamp

bp = Blueprint("annealer", __name__)

NodeRoleState = Literal["proposed", "todo", "transition", "active", "blocked", "error"]


class DeploymentIn(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""


class DeploymentOut(BaseModel):
    id: int
    name: str
    description: str
    state: str
    system: bool
    version: int
    counts: dict[str, int] = Field(default_factory=dict, description="node-roles by state")
    created_at: Timestamp
    updated_at: Timestamp


class DeploymentRoleIn(Strict):
    role: str
    data: dict[str, Any] | None = Field(None, description="deployment-wide input values, applied at commit")


class DeploymentNodesIn(Strict):
    nodes: list[int] = Field(min_length=1, description="node ids")
    roles: list[str] = Field(min_length=1, description="roles to bind; the roles they require come along")


class BoundOut(BaseModel):
    node_roles: list[int]


class GraphOut(BaseModel):
    deployment: dict[str, Any]
    roles: dict[str, list[dict[str, Any]]]
    node_roles: dict[str, list[dict[str, Any]]] | None = None


class GraphQuery(Strict):
    level: Literal["roles", "node_roles"] = "node_roles"


class NodeRoleOut(BaseModel):
    id: int
    node_id: int
    role_id: int
    deployment_id: int
    state: str
    cohort: int
    run_count: int
    attempts: int


class NodeRoleQuery(ListQuery):
    node_id: int | None = None
    deployment_id: int | None = None
    role: str | None = None
    state: NodeRoleState | None = None


class RunOut(BaseModel):
    id: int
    status: str
    annealer: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    log: str
    replay_of: int | None
    started_at: Timestamp
    finished_at: Timestamp | None


class NodeRoleDetail(BaseModel):
    id: int
    node: str | None
    node_id: int
    role: str | None
    role_id: int
    deployment: str | None
    deployment_id: int
    state: str
    cohort: int
    run_count: int
    attempts: int
    retry_at: Timestamp | None
    claimed_by: str | None
    parents: list[int]
    children: list[int]
    user_data: dict[str, Any]
    wall: dict[str, Any]
    runlog: str
    runs: list[RunOut] = Field(default_factory=list, description="most recent first, with inputs and outputs")


class UserDataIn(Strict):
    user_data: dict[str, Any] = Field(description="operator values for the role's declared inputs")


class RetryOut(BaseModel):
    id: int
    state: str


class ReplayOut(RunOut):
    same_outputs: bool


class RoleOut(BaseModel):
    id: int
    name: str
    description: str
    jig: str
    cohort: int
    requires: list[str]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    discovery: bool
    implicit: bool
    milestone: bool
    cluster: bool


# ---- deployments


def _deployment_out(session: Any, deployment: Deployment) -> DeploymentOut:
    counts = dict(
        session.execute(
            select(NodeRole.state, func.count())
            .where(NodeRole.deployment_id == deployment.id)
            .group_by(NodeRole.state)
        ).all()
    )
    out = DeploymentOut.model_validate(deployment, from_attributes=True)
    out.counts = counts
    return out


@endpoint(
    bp, "GET", "/deployments", query=ListQuery, response=page_of(DeploymentOut), summary="List deployments"
)
def deployments_get(query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        return paginate(s, select(Deployment), Deployment.id, query, lambda d: _deployment_out(s, d))


@endpoint(
    bp,
    "POST",
    "/deployments",
    body=DeploymentIn,
    response=DeploymentOut,
    status=201,
    summary="Create a deployment",
)
def deployment_post(body: DeploymentIn) -> DeploymentOut:
    with write_session() as s:
        deployment = deployments.create(s, body.name, description=body.description, actor=actor())
        return _deployment_out(s, deployment)


@endpoint(bp, "GET", "/deployments/<int:deployment_id>", response=DeploymentOut, summary="Show a deployment")
def deployment_get(deployment_id: int) -> DeploymentOut:
    with read_session() as s:
        return _deployment_out(s, deployments.get_deployment(s, deployment_id))


@endpoint(
    bp,
    "POST",
    "/deployments/<int:deployment_id>/roles",
    body=DeploymentRoleIn,
    response=DeploymentOut,
    summary="Bind a role to a deployment (with deployment-wide data)",
)
def deployment_role_post(deployment_id: int, body: DeploymentRoleIn) -> DeploymentOut:
    with write_session() as s:
        deployment = deployments.get_deployment(s, deployment_id)
        deployments.add_role(s, deployment, body.role, data=body.data, actor=actor())
        return _deployment_out(s, deployment)


@endpoint(
    bp,
    "POST",
    "/deployments/<int:deployment_id>/nodes",
    body=DeploymentNodesIn,
    response=BoundOut,
    status=201,
    summary="Bind roles to nodes (node-roles appear proposed, or start at once if committed)",
)
def deployment_nodes_post(deployment_id: int, body: DeploymentNodesIn) -> BoundOut:
    with write_session() as s:
        deployment = deployments.get_deployment(s, deployment_id)
        return BoundOut(
            node_roles=deployments.add_nodes(s, deployment, body.nodes, body.roles, actor=actor())
        )


@endpoint(
    bp,
    "DELETE",
    "/deployments/<int:deployment_id>/nodes/<int:node_id>",
    status=204,
    summary="Remove a node's node-roles from a deployment (their children re-anneal)",
)
def deployment_node_delete(deployment_id: int, node_id: int) -> None:
    with write_session() as s:
        deployments.remove_node(s, deployments.get_deployment(s, deployment_id), node_id, actor=actor())


@endpoint(
    bp,
    "POST",
    "/deployments/<int:deployment_id>/commit",
    response=DeploymentOut,
    summary="Commit: node-roles go to todo (or blocked) and the annealer starts",
)
def deployment_commit_post(deployment_id: int) -> DeploymentOut:
    with write_session() as s:
        deployment = deployments.get_deployment(s, deployment_id)
        deployments.commit(s, deployment, actor=actor())
        return _deployment_out(s, deployment)


@endpoint(
    bp,
    "POST",
    "/deployments/<int:deployment_id>/propose",
    response=DeploymentOut,
    summary="Propose again: edits allowed, nothing new starts",
)
def deployment_propose_post(deployment_id: int) -> DeploymentOut:
    return _propose(deployment_id)


def _propose(deployment_id: int) -> DeploymentOut:
    with write_session() as s:
        deployment = deployments.get_deployment(s, deployment_id)
        deployments.propose(s, deployment, actor=actor())
        return _deployment_out(s, deployment)


@endpoint(
    bp,
    "POST",
    "/deployments/<int:deployment_id>/recall",
    response=DeploymentOut,
    summary="Recall (OpenCrowbar's name for propose): running work finishes, nothing new starts",
)
def deployment_recall_post(deployment_id: int) -> DeploymentOut:
    return _propose(deployment_id)


@endpoint(
    bp,
    "GET",
    "/deployments/<int:deployment_id>/graph",
    query=GraphQuery,
    response=GraphOut,
    summary="The deployment's role graph (nodes + edges) for drawing",
)
def deployment_graph_get(deployment_id: int, query: GraphQuery) -> GraphOut:
    with read_session() as s:
        return GraphOut.model_validate(
            deployment_graph(s, deployment_id, node_roles=query.level == "node_roles")
        )


# ---- node-roles


@endpoint(
    bp, "GET", "/node_roles", query=NodeRoleQuery, response=page_of(NodeRoleOut), summary="List node-roles"
)
def node_roles_get(query: NodeRoleQuery) -> dict[str, Any]:
    stmt = select(NodeRole)
    if query.node_id is not None:
        stmt = stmt.where(NodeRole.node_id == query.node_id)
    if query.deployment_id is not None:
        stmt = stmt.where(NodeRole.deployment_id == query.deployment_id)
    if query.state is not None:
        stmt = stmt.where(NodeRole.state == query.state)
    if query.role is not None:
        stmt = stmt.join(Role, Role.id == NodeRole.role_id).where(Role.name == query.role)
    with read_session() as s:
        return paginate(
            s, stmt, NodeRole.id, query, lambda nr: NodeRoleOut.model_validate(nr, from_attributes=True)
        )


@endpoint(
    bp,
    "GET",
    "/node_roles/<int:node_role_id>",
    response=NodeRoleDetail,
    summary="Show a node-role with its data, log and recent runs (inputs and outputs)",
)
def node_role_get(node_role_id: int) -> NodeRoleDetail:
    with read_session() as s:
        return NodeRoleDetail.model_validate(runlog.show(s, node_role_id, runs=10))


class WhyOut(BaseModel):
    id: int
    node: str
    role: str
    deployment: str
    state: str
    runnable: bool
    reasons: list[dict[str, Any]] = Field(description="code, message, and for a parent its own answer")


@endpoint(
    bp,
    "GET",
    "/node_roles/<int:node_role_id>/why",
    response=WhyOut,
    summary="Why a node-role is not running (parents explained recursively)",
)
def node_role_why_get(node_role_id: int) -> WhyOut:
    with read_session() as s:
        return WhyOut.model_validate(explain.why(s, node_role_id))


@endpoint(
    bp,
    "PATCH",
    "/node_roles/<int:node_role_id>",
    body=UserDataIn,
    response=NodeRoleDetail,
    summary="Set a node-role's user data (it and its descendants re-anneal)",
)
def node_role_patch(node_role_id: int, body: UserDataIn) -> NodeRoleDetail:
    with write_session() as s:
        deployments.set_user_data(s, node_role_id, body.user_data, actor=actor())
        return NodeRoleDetail.model_validate(runlog.show(s, node_role_id, runs=0))


@endpoint(
    bp,
    "PUT",
    "/node_roles/<int:node_role_id>/retry",
    response=RetryOut,
    summary="Retry a node-role in error (to todo, or blocked while a parent is not active)",
)
def node_role_retry_put(node_role_id: int) -> RetryOut:
    with write_session() as s:
        return RetryOut(id=node_role_id, state=deployments.retry(s, node_role_id, actor=actor()))


@endpoint(
    bp,
    "POST",
    "/node_roles/<int:node_role_id>/replay",
    response=ReplayOut,
    summary="Re-run the last recorded run with exactly its recorded inputs (changes no state)",
)
def node_role_replay_post(node_role_id: int) -> ReplayOut:
    from web.context import kiln

    return ReplayOut.model_validate(runlog.replay(kiln().db, node_role_id, actor=actor()))


@endpoint(
    bp,
    "GET",
    "/roles",
    query=ListQuery,
    response=page_of(RoleOut),
    summary="List roles from loaded barclamps",
)
def roles_get(query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        return paginate(
            s, select(Role), Role.id, query, lambda r: RoleOut.model_validate(r, from_attributes=True)
        )
