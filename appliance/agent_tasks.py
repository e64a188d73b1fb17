"""Work for a node's agent: queued by the annealer's jigs or an operator, fetched by the agent when it
polls, and closed by the result it reports. Every change writes an Event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import events
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.models import AGENT_TASK_KINDS, AgentTask, Node, utcnow

MAX_OUTPUT = 65536


def queue(
    session: Session,
    node_id: int,
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    node_role_id: int | None = None,
    timeout_s: int = 600,
    actor: str = "system",
) -> AgentTask:
    if kind not in AGENT_TASK_KINDS:
        raise InvalidInput("kind", f"must be one of {', '.join(AGENT_TASK_KINDS)}")
    data = dict(payload or {})
    if kind == "script" and not isinstance(data.get("script"), str):
        raise InvalidInput("payload.script", "a script task needs the script's text")
    if kind == "bmc" and not data.get("address"):
        raise InvalidInput("payload.address", "a bmc task needs the BMC's address")
    if session.get(Node, node_id) is None:
        raise NotFound(f"node {node_id} not found", field="node_id")
    task = AgentTask(
        node_id=node_id, kind=kind, payload=data, node_role_id=node_role_id, timeout_s=timeout_s, output=""
    )
    session.add(task)
    session.flush()
    events.record(
        session,
        "agent_task.queue",
        subject_type="node",
        subject_id=node_id,
        actor=actor,
        message=f"{kind} task {task.id} queued for the agent",
        data={"task": task.id, "kind": kind},
    )
    return task


def next_task(session: Session, node: Node) -> AgentTask | None:
    """The oldest queued task of `node`, marked sent; None when there is nothing to do."""
    task = session.scalar(
        select(AgentTask)
        .where(AgentTask.node_id == node.id, AgentTask.state == "queued")
        .order_by(AgentTask.id)
        .limit(1)
    )
    if task is not None:
        task.state = "sent"
        task.sent_at = utcnow()
        events.record(
            session,
            "agent_task.sent",
            subject_type="node",
            subject_id=node.id,
            actor="agent",
            message=f"{task.kind} task {task.id} sent to the agent",
            data={"task": task.id},
        )
    return task


def task_for(session: Session, node: Node, task_id: int) -> AgentTask:
    task = session.get(AgentTask, task_id)
    if task is None or task.node_id != node.id:
        raise NotFound(f"task {task_id} not found for this node", field="task_id")
    return task


def report(
    session: Session, node: Node, task_id: int, *, status: str, exit_code: int | None, output: str
) -> AgentTask:
    task = task_for(session, node, task_id)
    if task.state != "sent":
        raise Conflict(f"task {task_id} is {task.state}, not waiting for a result", field="task_id")
    task.state = "ok" if status == "ok" else "error"
    task.exit_code = exit_code
    task.output = output[-MAX_OUTPUT:]
    task.finished_at = utcnow()
    events.record(
        session,
        "agent_task.result",
        subject_type="node",
        subject_id=node.id,
        actor="agent",
        message=f"{task.kind} task {task.id}: {task.state} (exit {exit_code})",
        data={"task": task.id, "state": task.state, "exit_code": exit_code},
    )
    return task
