"""`why`: every reason a node-role is not running is named, and a parent's reason recursively."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from appliance.annealer import deployments, explain, states
from appliance.annealer.runner import Annealer
from appliance.annealer.service import beat
from appliance.db import Database
from appliance.jigs import REGISTRY
from appliance.models import Node
from tests.unit.annealer_world import anneal, load, make_nodes, node_role

ROLES = """\
roles:
  - {name: flaky, jig: test, jig_data: {fail: disk missing}}
  - {name: mid, requires: [flaky]}
  - {name: top, requires: [mid]}
  - {name: plain}
  - {name: retried, jig: test, jig_data: {fail: retryable}}
  - {name: ghost, jig: vanishing}
"""


@pytest.fixture
def world(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setitem(REGISTRY, "vanishing", REGISTRY["noop"])
    load(db, tmp_path, ROLES)
    monkeypatch.delitem(REGISTRY, "vanishing")
    return db


def why(db: Database, node: str, role: str) -> dict[str, Any]:
    with db.read_session() as session:
        return explain.why(session, node_role(db, node, role).id)


def codes(answer: dict[str, Any]) -> list[str]:
    return [r["code"] for r in answer["reasons"]]


def bind(db: Database, roles: list[str], *, commit: bool = True) -> None:
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], roles)
        if commit:
            deployments.commit(session, deployment)


def test_blocked_chain_is_explained_down_to_the_failed_parent(world: Database) -> None:
    bind(world, ["top"])
    anneal(world)
    answer = why(world, "n0.test", "top")
    assert (answer["state"], codes(answer), answer["runnable"]) == ("blocked", ["parent"], False)
    mid = answer["reasons"][0]["parent"]
    assert answer["reasons"][0]["message"] == "parent mid on n0.test is blocked"
    flaky = mid["reasons"][0]["parent"]
    assert flaky["state"] == "error" and "disk missing" in flaky["reasons"][0]["message"]
    assert f"kiln noderole retry {flaky['id']}" in flaky["reasons"][0]["message"]


def test_proposed_deployment_and_unavailable_node_and_missing_jig_are_named(world: Database) -> None:
    bind(world, ["plain", "ghost"], commit=False)
    assert codes(why(world, "n0.test", "plain")) == ["deployment"]
    with world.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "d"))
        session.execute(update(Node).values(alive=False, available=False))
    assert codes(why(world, "n0.test", "plain")) == ["node_not_alive", "node_not_available"]
    assert "jig" in codes(why(world, "n0.test", "ghost"))


def test_backoff_and_annealer_heartbeat_are_named(world: Database) -> None:
    bind(world, ["retried", "plain"])
    annealer = Annealer(world, backoff_seconds=300, retry_limit=9, lease_seconds=60)
    try:
        annealer.step()
        annealer.wait_inflight(timeout=10)
        retried = why(world, "n0.test", "retried")
        assert retried["state"] == "todo" and codes(retried) == ["backoff"]
        assert "attempt 1 failed; retry backoff until" in retried["reasons"][0]["message"]
        # plain ran already; make it todo again to look at a runnable node-role
        with world.session() as session:
            deployments.reanneal(session, [node_role(world, "n0.test", "plain").id])
        assert codes(why(world, "n0.test", "plain")) == ["no_annealer"]
        beat(world, annealer)
        plain = why(world, "n0.test", "plain")
        assert codes(plain) == ["waiting"] and plain["runnable"] is True
    finally:
        annealer.close()


def test_running_node_role_names_its_annealer(world: Database) -> None:
    bind(world, ["plain"])
    nr = node_role(world, "n0.test", "plain")
    with world.session() as session:
        states.transition(session, states.TODO, states.TRANSITION, ids=[nr.id], values={"claimed_by": "a1"})
    answer = why(world, "n0.test", "plain")
    assert codes(answer) == ["running"] and "annealer a1" in answer["reasons"][0]["message"]
