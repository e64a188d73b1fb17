"""Node-role run records: what a run received and produced, and replaying it.

A replay runs the role's jig again with the inputs recorded for an earlier run (not today's merged
inputs), records the result as a new run pointing at the original, and changes no state: it is for
troubleshooting ("does this still fail with exactly those inputs?").
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.annealer.batches import RoleInfo
from appliance.annealer.injection import Inputs
from appliance.annealer.runner import execute_jig
from appliance.db import Database
from appliance.errors import KilnError, NotFound
from appliance.events import record
from appliance.jigs import REGISTRY, NodeRoleContext
from appliance.models import Deployment, Node, NodeRole, NodeRoleEdge, Role, Run, utcnow


def run_dict(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "annealer": run.annealer,
        "inputs": run.inputs,
        "outputs": run.outputs,
        "log": run.log,
        "replay_of": run.replay_of,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def node_role_dict(session: Session, node_role: NodeRole, *, runs: int = 0) -> dict[str, Any]:
    role = session.get(Role, node_role.role_id)
    node = session.get(Node, node_role.node_id)
    deployment = session.get(Deployment, node_role.deployment_id)
    parents = session.scalars(select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == node_role.id))
    children = session.scalars(select(NodeRoleEdge.child_id).where(NodeRoleEdge.parent_id == node_role.id))
    body: dict[str, Any] = {
        "id": node_role.id,
        "node": node.name if node else None,
        "node_id": node_role.node_id,
        "role": role.name if role else None,
        "role_id": node_role.role_id,
        "deployment": deployment.name if deployment else None,
        "deployment_id": node_role.deployment_id,
        "state": node_role.state,
        "cohort": node_role.cohort,
        "run_count": node_role.run_count,
        "attempts": node_role.attempts,
        "retry_at": node_role.retry_at,
        "claimed_by": node_role.claimed_by,
        "parents": sorted(parents),
        "children": sorted(children),
        "user_data": node_role.user_data,
        "wall": node_role.wall,
        "runlog": node_role.runlog,
    }
    if runs:
        recent = session.scalars(
            select(Run).where(Run.node_role_id == node_role.id).order_by(Run.id.desc()).limit(runs)
        )
        body["runs"] = [run_dict(r) for r in recent]
    return body


def show(session: Session, node_role_id: int, *, runs: int = 5) -> dict[str, Any]:
    node_role = session.get(NodeRole, node_role_id)
    if node_role is None:
        raise NotFound(f"node-role {node_role_id} not found")
    return node_role_dict(session, node_role, runs=runs)


def replay(
    db: Database, node_role_id: int, *, run_id: int | None = None, actor: str = "system"
) -> dict[str, Any]:
    """Re-run a recorded run (the node-role's last one unless `run_id`) and record the replay."""
    with db.read_session() as session:
        query = select(Run).where(Run.node_role_id == node_role_id, Run.replay_of.is_(None))
        query = query.where(Run.id == run_id) if run_id else query.order_by(Run.id.desc()).limit(1)
        original = session.scalar(query)
        if original is None:
            raise NotFound(f"node-role {node_role_id} has no recorded run to replay")
        node_role = session.get(NodeRole, node_role_id)
        assert node_role is not None
        role = session.get(Role, node_role.role_id)
        node = session.get(Node, node_role.node_id)
        assert role is not None and node is not None
        info = RoleInfo(
            role.id,
            role.name,
            REGISTRY.get(role.jig),
            role.inputs or {},
            role.outputs or {},
            role.jig_data or {},
        )
        ctx = NodeRoleContext(
            id=node_role.id,
            node_id=node.id,
            node_name=node.name,
            role=role.name,
            deployment_id=node_role.deployment_id,
            jig_data=info.jig_data,
            outputs=info.outputs,
            access=(node.hint or {}).get("ssh", {}),
        )
        recorded = dict(original.inputs or {})
    if info.jig is None:
        raise NotFound(f"jig '{role.jig}' is not registered")
    started = utcnow()
    try:
        outputs, log = execute_jig(info, ctx, Inputs(recorded, role.name))
        status, error = "replay-ok", ""
    except KilnError as exc:
        outputs, log, status, error = {}, getattr(exc, "log", ""), "replay-error", exc.message
    with db.session() as session:
        run = Run(
            node_role_id=node_role_id,
            annealer=f"replay by {actor}",
            status=status,
            inputs=recorded,
            outputs=outputs,
            log=f"{error}\n{log}".strip(),
            replay_of=original.id,
            started_at=started,
            finished_at=utcnow(),
        )
        session.add(run)
        session.flush()
        record(
            session,
            "noderole.replay",
            subject_type="node_role",
            subject_id=node_role_id,
            actor=actor,
            data={"run": run.id, "replay_of": original.id, "status": status},
        )
        body = run_dict(run)
    body["same_outputs"] = outputs == (original.outputs or {}) and status == "replay-ok"
    return body


def count_runs(session: Session, node_role_id: int) -> int:
    return int(session.scalar(select(func.count()).where(Run.node_role_id == node_role_id)) or 0)
