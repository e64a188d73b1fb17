"""Discovery and the node agent: POST /discovery (inventory + one-time token → node id + agent token),
the agent's work loop (/agent/...), and the operator's view of a node's agent tasks.

The agent endpoints authenticate with the agent token from registration, not a user's API token, so
they are `public` to the endpoint framework and check the token themselves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import agent_tasks, discovery
from appliance.errors import InvalidInput, Unauthorized
from appliance.groupcommit import Batch
from appliance.inventory import MAX_BODY_BYTES, Inventory, parse_inventory
from appliance.models import AgentTask, Node
from web.api.access import actor
from web.api.endpoint import endpoint, read_session, write_session
from web.boot.groupwrite import group_commit

bp = Blueprint("discovery", __name__)

# how long an idle agent waits before polling again (seconds)
POLL_WAIT = 3


class DiscoveryIn(Inventory):
    token: str = Field(min_length=8, max_length=128, description="the kiln.token= of the kernel command line")


class DiscoveryOut(BaseModel):
    node_id: int
    name: str
    token: str = Field(description="agent token: 'Authorization: Bearer <token>' on /agent/...")
    created: bool
    poll: int = POLL_WAIT


class WorkOut(BaseModel):
    """Flat on purpose: the agent is busybox sh and reads fields with sed."""

    id: int | None = None
    kind: Literal["none", "script", "bmc", "reboot", "poweroff"] = "none"
    timeout: int | None = None
    wait: int = 0
    address: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    channel: int | None = None
    username: str | None = None
    password: str | None = None
    user_id: int | None = None


class ResultIn(BaseModel):
    status: Literal["ok", "error"]
    exit_code: int | None = Field(default=None, ge=-1, le=255)
    output: str = Field(default="", max_length=agent_tasks.MAX_OUTPUT * 2)


class TaskIn(BaseModel):
    kind: Literal["script", "bmc", "reboot", "poweroff"]
    payload: dict[str, Any] = Field(default_factory=dict)
    timeout_s: int = Field(default=600, ge=1, le=86400)


class TaskOut(BaseModel):
    id: int
    node_id: int
    node_role_id: int | None
    kind: str
    state: str
    timeout_s: int
    created_at: dt.datetime
    sent_at: dt.datetime | None
    finished_at: dt.datetime | None
    exit_code: int | None
    output: str


class TaskList(BaseModel):
    items: list[TaskOut]


@bp.before_request
def _bounded_body() -> None:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidInput("body", f"larger than {MAX_BODY_BYTES // 1024} KiB")


@endpoint(
    bp,
    "POST",
    "/discovery",
    body=DiscoveryIn,
    response=DiscoveryOut,
    status=201,
    public=True,
    summary="Register a node from its discovery agent's inventory",
)
def discovery_post(body: DiscoveryIn) -> DiscoveryOut:
    """Creates the node, or updates the one whose DMI UUID or any MAC matches; the token is spent."""
    inventory = parse_inventory(body.model_dump(by_alias=True, exclude={"token"}))
    address = request.remote_addr

    def register(s: Session, batch: Batch) -> DiscoveryOut:
        done = discovery.register(s, inventory, body.token, address=address, batch=batch)
        return DiscoveryOut(
            node_id=done.node.id, name=done.node.name, token=done.agent_token, created=done.created
        )

    # many machines report at once in a boot storm: their registrations share transactions
    return group_commit().submit(register)


def _agent_node(s: Session) -> Node:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send 'Authorization: Bearer <agent token>'")
    return discovery.node_for_agent(s, value.strip())


def _work(task: AgentTask | None) -> WorkOut:
    if task is None:
        return WorkOut(wait=POLL_WAIT)
    fields = {k: v for k, v in task.payload.items() if k in WorkOut.model_fields and k not in ("id", "kind")}
    return WorkOut(id=task.id, kind=task.kind, timeout=task.timeout_s, wait=POLL_WAIT, **fields)  # type: ignore[arg-type]


@endpoint(bp, "GET", "/agent/work", response=WorkOut, public=True, summary="Agent: the next task, if any")
def agent_work() -> WorkOut:
    with write_session() as s:
        node = _agent_node(s)
        return _work(agent_tasks.next_task(s, node))


@endpoint(bp, "GET", "/agent/tasks/<int:task_id>/script", public=True, summary="Agent: a script task's text")
def agent_task_script(task_id: int) -> Response:
    with write_session() as s:
        task = agent_tasks.task_for(s, _agent_node(s), task_id)
        if task.kind != "script":
            raise InvalidInput("task_id", f"task {task_id} is a {task.kind} task, not a script")
        return Response(str(task.payload["script"]), mimetype="text/plain")


@endpoint(
    bp,
    "POST",
    "/agent/tasks/<int:task_id>/result",
    body=ResultIn,
    response=TaskOut,
    public=True,
    summary="Agent: report a task's result",
)
def agent_task_result(task_id: int, body: ResultIn) -> TaskOut:
    with write_session() as s:
        node = _agent_node(s)
        task = agent_tasks.report(
            s, node, task_id, status=body.status, exit_code=body.exit_code, output=body.output
        )
        return TaskOut.model_validate(task, from_attributes=True)


@endpoint(
    bp,
    "POST",
    "/nodes/<int:node_id>/agent-tasks",
    body=TaskIn,
    response=TaskOut,
    status=201,
    summary="Queue a task for the node's agent",
)
def node_task_post(node_id: int, body: TaskIn) -> TaskOut:
    with write_session() as s:
        task = agent_tasks.queue(s, node_id, body.kind, body.payload, timeout_s=body.timeout_s, actor=actor())
        return TaskOut.model_validate(task, from_attributes=True)


@endpoint(bp, "GET", "/nodes/<int:node_id>/agent-tasks", response=TaskList, summary="A node's agent tasks")
def node_tasks_get(node_id: int) -> TaskList:
    with read_session() as s:
        rows = s.scalars(select(AgentTask).where(AgentTask.node_id == node_id).order_by(AgentTask.id))
        return TaskList(items=[TaskOut.model_validate(t, from_attributes=True) for t in rows])
