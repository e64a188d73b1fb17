"""Building blocks for the annealer tests: a barclamp written to a temp dir, nodes, a run to idle."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from appliance.annealer import barclamps
from appliance.annealer.runner import Annealer
from appliance.db import Database
from appliance.models import Node, NodeRole, Role, Run


def write_barclamp(
    root: Path, roles_yaml: str, name: str = "testbc", extra: dict[str, str] | None = None
) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    head = f"barclamp: {{name: {name}, version: '1'}}\n"
    (directory / "barclamp.yaml").write_text(head + textwrap.dedent(roles_yaml))
    for filename, text in (extra or {}).items():
        (directory / filename).write_text(textwrap.dedent(text))
    return directory


def load(db: Database, root: Path, roles_yaml: str, name: str = "testbc") -> None:
    with db.session() as session:
        barclamps.load(session, write_barclamp(root, roles_yaml, name))


def make_nodes(
    db: Database, count: int, prefix: str = "n", discovery: dict[str, Any] | None = None
) -> list[int]:
    with db.session() as session:
        rows = [{"name": f"{prefix}{i}.test", "discovery": dict(discovery or {})} for i in range(count)]
        session.execute(insert(Node), rows)
        names = [r["name"] for r in rows]
        return list(session.scalars(select(Node.id).where(Node.name.in_(names)).order_by(Node.id)))


def anneal(db: Database, timeout: float = 30.0, **kwargs: Any) -> Annealer:
    annealer = Annealer(db, **{"lease_seconds": 60, "backoff_seconds": 0.05, **kwargs})
    try:
        annealer.run_until_idle(timeout=timeout)
    finally:
        annealer.close()
    return annealer


def states(db: Database, deployment_id: int | None = None) -> dict[tuple[str, str], str]:
    """{(node name, role name): state}."""
    with db.read_session() as session:
        query = (
            select(Node.name, Role.name, NodeRole.state)
            .join(Node, Node.id == NodeRole.node_id)
            .join(Role, Role.id == NodeRole.role_id)
        )
        if deployment_id is not None:
            query = query.where(NodeRole.deployment_id == deployment_id)
        return {(n, r): s for n, r, s in session.execute(query)}


def node_role(db: Database, node: str, role: str, deployment_id: int | None = None) -> NodeRole:
    with db.read_session() as session:
        query = (
            select(NodeRole)
            .join(Node, Node.id == NodeRole.node_id)
            .join(Role, Role.id == NodeRole.role_id)
            .where(Node.name == node, Role.name == role)
        )
        if deployment_id is not None:
            query = query.where(NodeRole.deployment_id == deployment_id)
        found = session.scalar(query)
        assert found is not None, (node, role)
        return found


def runs_of(db: Database, node_role_id: int) -> list[Run]:
    with db.read_session() as session:
        return list(session.scalars(select(Run).where(Run.node_role_id == node_role_id).order_by(Run.id)))


def all_runs(db: Database) -> Sequence[tuple[int, int, str]]:
    """(run id, node-role id, status) in run order."""
    with db.read_session() as session:
        return list(session.execute(select(Run.id, Run.node_role_id, Run.status).order_by(Run.id)))
