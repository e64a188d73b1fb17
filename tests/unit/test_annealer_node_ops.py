"""Node operations: alive / available keep the annealer off a node; redeploy resets it (API and CLI);
a target role limits what runs on a node."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from appliance.annealer import deployments
from appliance.annealer.explain import why
from appliance.cli import main
from appliance.db import Database
from appliance.models import Bootenv, Event, Node, NodeRole
from tests.unit.annealer_world import anneal, load, make_nodes, node_role, runs_of, states
from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixture)

ROLES = """\
roles:
  - name: base
    inputs: {motd: {default: hi}}
    outputs: {motd: {from: motd}}
  - {name: app, requires: [base]}
"""

Kiln = Callable[..., Result]


@pytest.fixture
def kiln(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kiln:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(main, ["--database-url", db.url, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


def _committed(db: Database, tmp_path: Path, count: int = 2) -> list[int]:
    load(db, tmp_path, ROLES)
    ids = make_nodes(db, count)
    with db.session() as s:
        if s.scalar(select(Bootenv.id).where(Bootenv.name == "discovery")) is None:
            s.add(Bootenv(name="discovery", kind="discovery", description="discovery (test)"))
        deployment = deployments.create(s, "d")
        deployments.add_nodes(s, deployment, ids, ["app"])
        deployments.commit(s, deployment)
    return ids


def test_annealer_leaves_a_node_that_is_not_alive_or_not_available_until_the_cli_sets_it_back(
    db: Database, kiln: Kiln, tmp_path: Path
) -> None:
    _committed(db, tmp_path)
    assert "n0.test: alive no" in kiln("node", "set", "n0.test", "--not-alive").output
    kiln("node", "set", "n1.test", "--not-available")
    anneal(db)
    assert states(db) == {
        ("n0.test", "base"): "todo",
        ("n0.test", "app"): "blocked",
        ("n1.test", "base"): "todo",
        ("n1.test", "app"): "blocked",
    }
    assert runs_of(db, node_role(db, "n0.test", "base").id) == []

    shown = json.loads(kiln("node", "set", "n1.test", "--available", "--json").output)
    assert (shown["alive"], shown["available"]) == (True, True)
    anneal(db)
    assert states(db)[("n1.test", "app")] == "active" and states(db)[("n0.test", "base")] == "todo"

    kiln("node", "set", "n0.test", "--alive")
    anneal(db)
    assert set(states(db).values()) == {"active"}
    assert "give --alive" in kiln("node", "set", "n0.test", code=2).output
    with db.read_session() as s:
        changes = [e.data["changes"] for e in s.scalars(select(Event).where(Event.action == "node.update"))]
    assert {"alive": False} in changes and {"available": True} in changes


def test_redeploy_resets_node_roles_and_bootenv_and_says_power_was_not_cycled_without_a_bmc(
    api: Api, tmp_path: Path
) -> None:
    db = api.db
    n0, n1 = _committed(db, tmp_path)
    anneal(db)
    assert set(states(db).values()) == {"active"}
    before = node_role(db, "n0.test", "app")
    assert before.run_count == 1 and before.wall == {} and node_role(db, "n0.test", "base").wall

    answer = api.post(f"/nodes/{n0}/redeploy", None, role="operator")
    assert answer.status_code == 200, answer.json
    assert answer.json["node_roles"] == 2
    assert answer.json["power_cycled"] is False
    assert "no BMC" in answer.json["power_error"]
    assert "power NOT cycled" in answer.json["message"]
    # the deployment is committed: the reset node-roles start again (base todo, app waits for it)
    assert states(db) == {
        ("n0.test", "base"): "todo",
        ("n0.test", "app"): "blocked",
        ("n1.test", "base"): "active",
        ("n1.test", "app"): "active",
    }
    base = node_role(db, "n0.test", "base")
    assert (base.run_count, base.wall, base.runlog) == (0, {}, "")
    with db.read_session() as s:
        node = s.get(Node, n0)
        assert node is not None and node.bootenv == "discovery"
        moves = [
            (e.data["from"], e.data["to"])
            for e in s.scalars(
                select(Event).where(
                    Event.action == "noderole.state",
                    Event.subject_id == base.id,
                    Event.data["reason"].as_string() == "redeploy",
                )
            )
        ]
        assert moves == [("active", "proposed"), ("proposed", "todo")]
    (event,) = api.events("node.redeploy")
    assert event.subject_id == n0 and event.actor == "operator" and event.data["power_cycled"] is False

    assert api.post(f"/nodes/{n1}/redeploy", None, role="readonly").status_code == 403
    assert api.post("/nodes/999999/redeploy", None).status_code == 404
    anneal(db)
    assert set(states(db).values()) == {"active"}
    assert node_role(db, "n0.test", "base").run_count == 1


def test_redeploy_from_the_cli_in_a_proposed_deployment_leaves_the_node_roles_proposed(
    db: Database, kiln: Kiln, tmp_path: Path
) -> None:
    _committed(db, tmp_path, count=1)
    anneal(db)
    with db.session() as s:
        deployments.propose(s, deployments.get_deployment(s, "d"))
    out = kiln("node", "redeploy", "n0.test", "--json").output
    assert json.loads(out)["node_roles"] == 2 and json.loads(out)["power_cycled"] is False
    assert set(states(db).values()) == {"proposed"}
    assert "power NOT cycled" in kiln("node", "redeploy", "n0.test").output
    with db.read_session() as s:
        assert {nr.run_count for nr in s.scalars(select(NodeRole))} == {0}
    with db.session() as s:
        deployments.commit(s, deployments.get_deployment(s, "d"))
    anneal(db)
    assert set(states(db).values()) == {"active"}


def test_target_role_anneals_a_node_only_up_to_that_role_and_explain_says_why_the_rest_waits(
    db: Database, kiln: Kiln, tmp_path: Path
) -> None:
    _committed(db, tmp_path)
    assert "target_role base" in kiln("node", "set", "n0.test", "--target-role", "base").output
    anneal(db)
    assert states(db) == {
        ("n0.test", "base"): "active",
        ("n0.test", "app"): "todo",
        ("n1.test", "base"): "active",
        ("n1.test", "app"): "active",
    }
    app = node_role(db, "n0.test", "app")
    assert runs_of(db, app.id) == []
    with db.read_session() as s:
        answer = why(s, app.id)
        assert why(s, node_role(db, "n1.test", "app").id)["reasons"] == []
    assert [r["code"] for r in answer["reasons"]] == ["target_role"] and answer["runnable"] is False
    assert "only up to role base" in answer["reasons"][0]["message"]
    assert "no role named 'nope'" in kiln("node", "set", "n0.test", "--target-role", "nope", code=1).output

    kiln("node", "set", "n0.test", "--no-target-role")
    anneal(db)
    assert set(states(db).values()) == {"active"}
    with db.read_session() as s:
        targets = [e.data for e in s.scalars(select(Event).where(Event.action == "node.target_role"))]
    assert targets == [{"target_role": "base"}, {"target_role": None}]
