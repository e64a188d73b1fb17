"""Role hooks (OpenCrowbar's on_todo, on_active, ...): Python callables a barclamp attaches to a role.

Hooks run in the annealer, never in a web request or a claim transaction: the annealer follows the
Event log past a cursor taken at its start and calls the hooks of the roles involved. With no hook
registered the annealer does nothing extra. A hook's exception is logged and written as a
`role.hook_error` Event; it never stops the annealer.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from appliance.db import Database
from appliance.events import record
from appliance.models import Event, NodeRole, Role

log = logging.getLogger(__name__)

EVENTS = frozenset({"on_todo", "on_active", "on_error", "on_node_create", "on_node_change", "on_commit"})
# node-role state entered -> hook
STATE_HOOKS = {"todo": "on_todo", "active": "on_active", "error": "on_error"}
NODE_CREATE_ACTIONS = ("node.create", "node.discovered")
NODE_CHANGE_ACTIONS = ("node.update", "node.rediscovered", "node.discovery")
WATCHED = ("noderole.state", "deployment.commit", *NODE_CREATE_ACTIONS, *NODE_CHANGE_ACTIONS)


@dataclass(frozen=True)
class HookCall:
    """What a hook receives: the event, the role, and the node-role / node / deployment involved."""

    event: str
    role: str
    node_role_id: int | None = None
    node_id: int | None = None
    deployment_id: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


Hook = Callable[[HookCall], Any]

_hooks: dict[tuple[str, str], list[Hook]] = {}


def register_hook(role_name: str, event: str, func: Hook) -> None:
    """Attach `func` to `event` of `role_name` (registering the same callable twice is a no-op)."""
    if event not in EVENTS:
        raise ValueError(f"unknown hook event '{event}' (one of {sorted(EVENTS)})")
    funcs = _hooks.setdefault((role_name, event), [])
    if func not in funcs:
        funcs.append(func)


def unregister_role(role_name: str) -> None:
    for key in [k for k in _hooks if k[0] == role_name]:
        del _hooks[key]


def hooks_for(role_name: str, event: str) -> list[Hook]:
    return list(_hooks.get((role_name, event), ()))


def any_registered() -> bool:
    return any(_hooks.values())


def resolve(target: str) -> Hook:
    """'package.module:function' -> the callable; ValueError says why not."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"hook target '{target}' must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure refuses the barclamp with its reason
        raise ValueError(f"cannot import '{module_name}': {type(exc).__name__}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"'{module_name}' has no callable '{attr}'")
    return func  # type: ignore[no-any-return]


def register_targets(role_name: str, targets: Mapping[str, str]) -> None:
    for event, target in targets.items():
        register_hook(role_name, event, resolve(target))


class HookRunner:
    """Follows the Event log from where it was at construction and runs the hooks it calls for."""

    def __init__(self, db: Database, actor: str) -> None:
        self.db = db
        self.actor = actor
        with db.read_session() as session:
            self.cursor: int = session.scalar(select(func.max(Event.id))) or 0

    def poll(self, limit: int = 1000) -> int:
        """Run the hooks of Events past the cursor; returns the number of hooks called."""
        if not any_registered():
            return 0
        with self.db.read_session() as session:
            events = list(
                session.execute(
                    select(Event.id, Event.action, Event.subject_id, Event.data)
                    .where(Event.id > self.cursor, Event.action.in_(WATCHED))
                    .order_by(Event.id)
                    .limit(limit)
                )
            )
            if not events:
                return 0
            self.cursor = events[-1][0]
            calls = list(self._calls(session, events))
        for hook, call in calls:
            self._run(hook, call)
        return len(calls)

    def _calls(self, session: Any, events: Iterable[Any]) -> Iterable[tuple[Hook, HookCall]]:
        for _, action, subject_id, data in events:
            data = data or {}
            if action == "noderole.state":
                event = STATE_HOOKS.get(data.get("to", ""))
                if event is None or subject_id is None:
                    continue
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.id == subject_id)
                )
            elif action == "deployment.commit":
                event = "on_commit"
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.deployment_id == subject_id)
                )
            elif action in NODE_CREATE_ACTIONS:
                # a new node has no node-roles yet: every role with the hook hears of it
                for role_name, hook_event in list(_hooks):
                    if hook_event == "on_node_create":
                        for hook in hooks_for(role_name, hook_event):
                            yield hook, HookCall(hook_event, role_name, node_id=subject_id, data=data)
                continue
            else:
                event = "on_node_change"
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.node_id == subject_id)
                )
            for nr_id, node_id, deployment_id, role_name in rows:
                for hook in hooks_for(role_name, event):
                    yield hook, HookCall(event, role_name, nr_id, node_id, deployment_id, data)

    def _run(self, hook: Hook, call: HookCall) -> None:
        try:
            hook(call)
        except Exception as exc:  # a barclamp's bug is reported, never fatal to the annealer
            message = f"{type(exc).__name__}: {exc}"
            log.exception("hook %s of role %s failed", call.event, call.role)
            with self.db.session() as session:
                record(
                    session,
                    "role.hook_error",
                    subject_type="node_role" if call.node_role_id else "role",
                    subject_id=call.node_role_id,
                    actor=self.actor,
                    message=f"{call.role} {call.event}: {message}",
                    data={
                        "role": call.role,
                        "hook": call.event,
                        "node_role_id": call.node_role_id,
                        "message": message,
                    },
                )
