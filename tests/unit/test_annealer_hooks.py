"""Role hooks: declared in barclamp YAML, checked at load, run by the annealer after results commit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.annealer import deployments, hooks
from appliance.annealer.barclamps import BarclampError
from appliance.annealer.runner import Annealer
from appliance.db import Database
from appliance.models import Event
from tests.unit import hook_targets
from tests.unit.annealer_world import anneal, load, make_nodes, node_role, states

HOOKED = """\
roles:
  - name: hk-ok
    hooks: {on_active: "tests.unit.hook_targets:record_call", on_todo: "tests.unit.hook_targets:record_call"}
  - name: hk-bad
    jig: test
    jig_data: {fail: boom}
    hooks:
      on_error: "tests.unit.hook_targets:record_call"
  - name: hk-raise
    hooks: {on_active: "tests.unit.hook_targets:explode"}
"""


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    hook_targets.CALLS.clear()
    yield
    for role in ("hk-ok", "hk-bad", "hk-raise"):
        hooks.unregister_role(role)
    hook_targets.CALLS.clear()


def _deploy(db: Database, roles: list[str]) -> int:
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], roles)
        deployments.commit(session, deployment)
    return node


def test_annealer_calls_on_todo_on_active_and_on_error_with_the_node_role(
    db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, HOOKED)
    # the hook cursor lives in the database: whether the annealer starts before or after the commit,
    # the todo is seen
    annealer = Annealer(db, lease_seconds=60, backoff_seconds=0.05)
    try:
        _deploy(db, ["hk-ok", "hk-bad"])
        annealer.run_until_idle(timeout=30)
    finally:
        annealer.close()
    ok, bad = node_role(db, "n0.test", "hk-ok"), node_role(db, "n0.test", "hk-bad")
    seen = {(c.event, c.role, c.node_role_id) for c in hook_targets.CALLS}
    assert ("on_active", "hk-ok", ok.id) in seen
    assert ("on_todo", "hk-ok", ok.id) in seen
    assert ("on_error", "hk-bad", bad.id) in seen
    assert all(c.node_id == ok.node_id for c in hook_targets.CALLS)


def test_a_failing_hook_becomes_a_hook_error_event_and_the_annealer_converges(
    db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, HOOKED)
    _deploy(db, ["hk-raise", "hk-ok"])
    anneal(db)
    assert set(states(db).values()) == {"active"}
    failing = node_role(db, "n0.test", "hk-raise")
    with db.read_session() as session:
        errors = list(session.scalars(select(Event).where(Event.action == "role.hook_error")))
    assert len(errors) == 1
    assert errors[0].data["role"] == "hk-raise" and errors[0].data["hook"] == "on_active"
    assert errors[0].data["node_role_id"] == failing.id
    assert "hook blew up" in errors[0].data["message"]
    assert ("on_active", "hk-ok") in {(c.event, c.role) for c in hook_targets.CALLS}


@pytest.mark.parametrize(
    ("hooks_yaml", "reason"),
    [
        ('{on_finish: "tests.unit.hook_targets:record_call"}', "unknown hook 'on_finish'"),
        ('{on_active: "tests.unit.no_such_module:f"}', "cannot import 'tests.unit.no_such_module'"),
        ('{on_active: "tests.unit.hook_targets:missing"}', "has no callable 'missing'"),
        ('{on_active: "no-colon"}', "must be 'package.module:function'"),
    ],
)
def test_unknown_hook_or_unimportable_target_is_refused_at_load_with_file_and_line(
    db: Database, tmp_path: Path, hooks_yaml: str, reason: str
) -> None:
    with pytest.raises(BarclampError) as info:
        load(db, tmp_path, f"roles:\n  - name: hk-ok\n    hooks: {hooks_yaml}\n")
    assert info.value.file.endswith("barclamp.yaml") and info.value.line == 4
    assert reason in info.value.reason
