"""Hook targets the role-hook tests point barclamp YAML at: they record what the annealer calls."""

from __future__ import annotations

from appliance.annealer.hooks import HookCall

CALLS: list[HookCall] = []


def record_call(call: HookCall) -> None:
    CALLS.append(call)


def explode(call: HookCall) -> None:
    raise RuntimeError(f"hook blew up for node-role {call.node_role_id}")
