"""Attribute injection (DESIGN §4): a run receives exactly its role's declared inputs.

Layers, lowest first: role default < deployment-role data < node discovery data < parents' wall data <
node-role user data. Nothing is searched at run time; the merged dict is recorded with the run so it
can be replayed. Reading an attribute the role did not declare raises instead of returning None.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from appliance.errors import JigError
from appliance.models import DeploymentRole, Node, NodeRole, NodeRoleEdge


class UndeclaredInput(JigError):
    """A jig read an attribute its role does not declare as an input."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__(f"role {role} read undeclared input '{name}'; declare it under inputs:")
        self.name = name


class Inputs(Mapping[str, Any]):
    """The declared inputs of one run; reading anything else raises UndeclaredInput."""

    __slots__ = ("_role", "_values")

    def __init__(self, values: Mapping[str, Any], role: str = "") -> None:
        self._values = dict(values)
        self._role = role

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise UndeclaredInput(self._role, name) from None

    def get(self, name: str, default: Any = None) -> Any:
        # Mapping.get would turn the error into `default`: exactly the silent None we refuse.
        value = self[name]
        return default if value is None else value

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Inputs({self._values!r})"


def merge_inputs(
    specs: Mapping[str, Mapping[str, Any]],
    *,
    deployment: Mapping[str, Any] | None = None,
    discovery: Mapping[str, Any] | None = None,
    parents: Sequence[Mapping[str, Any]] = (),
    user: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the layers for each declared input; undeclared keys in any layer are ignored.

    `from` names the parents' wall attribute when it differs from the input's name; `aggregate: list`
    collects it from every parent (in parent order, without duplicates) instead of the last one
    winning: that is how an ntp-client learns every ntp-server of a deployment.
    """
    merged: dict[str, Any] = {}
    for name, spec in specs.items():
        value = spec.get("default")
        for layer in (deployment, discovery):
            if layer and name in layer:
                value = layer[name]
        source = spec.get("from", name)
        if spec.get("aggregate") == "list":
            collected: list[Any] = []
            seen = False
            for wall in parents:
                if source in wall:
                    seen = True
                    items = wall[source] if isinstance(wall[source], list) else [wall[source]]
                    collected.extend(item for item in items if item not in collected)
            if seen:
                value = collected
        else:
            for wall in parents:
                if source in wall:
                    value = wall[source]
        if user and name in user:
            value = user[name]
        merged[name] = value
    return merged


def gather_inputs(
    db: Session | Connection,
    claimed: Sequence[tuple[int, int, int, int]],
    specs_by_role: Mapping[int, Mapping[str, Mapping[str, Any]]],
) -> dict[int, dict[str, Any]]:
    """Inputs for a batch of claimed node-roles in four set-based queries, not one per node-role.

    `claimed` rows are (node_role_id, node_id, role_id, deployment_id).
    """
    wanted = [row for row in claimed if specs_by_role.get(row[2])]
    result: dict[int, dict[str, Any]] = {row[0]: {} for row in claimed if not specs_by_role.get(row[2])}
    if not wanted:
        return result
    node_ids = {row[1] for row in wanted}
    discovery: dict[int, Any] = dict(
        db.execute(select(Node.id, Node.discovery).where(Node.id.in_(node_ids))).all()
    )
    dep_ids = {row[3] for row in wanted}
    role_ids = {row[2] for row in wanted}
    dep_data = {
        (d, r): data
        for d, r, data in db.execute(
            select(DeploymentRole.deployment_id, DeploymentRole.role_id, DeploymentRole.committed_data).where(
                DeploymentRole.deployment_id.in_(dep_ids), DeploymentRole.role_id.in_(role_ids)
            )
        )
    }
    wanted_ids = [row[0] for row in wanted]
    user: dict[int, Any] = dict(
        db.execute(select(NodeRole.id, NodeRole.user_data).where(NodeRole.id.in_(wanted_ids))).all()
    )
    walls: dict[int, list[Mapping[str, Any]]] = {}
    rows = db.execute(
        select(NodeRoleEdge.child_id, NodeRole.wall)
        .join(NodeRole, NodeRole.id == NodeRoleEdge.parent_id)
        .where(NodeRoleEdge.child_id.in_(wanted_ids))
        .order_by(NodeRoleEdge.child_id, NodeRole.cohort, NodeRole.id)
    )
    for child_id, wall in rows:
        walls.setdefault(child_id, []).append(wall or {})
    for nr_id, node_id, role_id, dep_id in wanted:
        result[nr_id] = merge_inputs(
            specs_by_role[role_id],
            deployment=dep_data.get((dep_id, role_id)),
            discovery=discovery.get(node_id),
            parents=walls.get(nr_id, ()),
            user=user.get(nr_id),
        )
    return result
