"""A deployment's graph as JSON for the web pages and `kiln deployment show --json`.

Two levels: `roles` (each bound role with its node-roles counted by state, edges from `requires`) and
`node_roles` (every node-role with its state, edges parent -> child). Large deployments can ask for the
role level only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from appliance.errors import NotFound
from appliance.models import Deployment, Node, NodeRole, NodeRoleEdge, Role


def deployment_graph(
    session: Session, deployment_id: int, *, node_roles: bool = True, node_limit: int | None = None
) -> dict[str, Any]:
    """`node_limit`: node-roles of the first N nodes (by name) only, for a picture of a big deployment."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(f"deployment {deployment_id} not found")
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for role_id, state, count in session.execute(
        select(NodeRole.role_id, NodeRole.state, func.count())
        .where(NodeRole.deployment_id == deployment_id)
        .group_by(NodeRole.role_id, NodeRole.state)
    ):
        counts[role_id][state] = count
    roles = {r.id: r for r in session.scalars(select(Role).where(Role.id.in_(list(counts))))}
    by_name = {r.name: r for r in roles.values()}
    graph: dict[str, Any] = {
        "deployment": {"id": deployment.id, "name": deployment.name, "state": deployment.state},
        "roles": {
            "nodes": [
                {
                    "id": r.id,
                    "name": r.name,
                    "cohort": r.cohort,
                    "jig": r.jig,
                    "cluster": r.cluster,
                    "states": counts[r.id],
                }
                for r in sorted(roles.values(), key=lambda r: (r.cohort, r.name))
            ],
            "edges": [
                {"parent": by_name[req].id, "child": r.id}
                for r in roles.values()
                for req in r.requires or []
                if req in by_name
            ],
        },
    }
    if node_roles:
        child = aliased(NodeRole)
        mine = NodeRole.deployment_id == deployment_id
        child_mine = child.deployment_id == deployment_id
        if node_limit is not None:
            # ids fetched first: as a subquery SQLite re-evaluates it per row (3x slower at 5,000 nodes)
            first = list(
                session.scalars(
                    select(Node.id)
                    .where(Node.id.in_(select(NodeRole.node_id).where(mine)))
                    .order_by(Node.name)
                    .limit(node_limit)
                )
            )
            mine = and_(mine, NodeRole.node_id.in_(first))
            child_mine = and_(child_mine, child.node_id.in_(first))
        rows = session.execute(
            select(NodeRole.id, Node.name, Role.name, NodeRole.state, NodeRole.cohort)
            .join(Node, Node.id == NodeRole.node_id)
            .join(Role, Role.id == NodeRole.role_id)
            .where(mine)
            .order_by(NodeRole.cohort, NodeRole.id)
        )
        edges = session.execute(
            select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id)
            .join(child, child.id == NodeRoleEdge.child_id)
            .where(child_mine)
        )
        graph["node_roles"] = {
            "nodes": [{"id": i, "node": n, "role": r, "state": s, "cohort": c} for i, n, r, s, c in rows],
            "edges": [{"parent": p, "child": c} for p, c in edges],
        }
    return graph
