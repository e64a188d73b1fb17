"""The annealer end to end on one process: injection, run log and replay, re-annealing, errors."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from appliance.annealer import deployments, runlog
from appliance.annealer.barclamps import load as load_dir
from appliance.annealer.injection import Inputs, UndeclaredInput, merge_inputs
from appliance.annealer.runner import Annealer
from appliance.db import Database
from appliance.jigs import REGISTRY, Jig, NodeRoleContext
from tests.unit.annealer_world import anneal, load, make_nodes, node_role, runs_of, states, write_barclamp

LAYERS = """\
roles:
  - name: src
    inputs: {src_v: {}}
    outputs: {v: {from: src_v}}
  - name: sink
    requires: [src]
    inputs:
      v: {default: role-default}
      w: {default: untouched}
    outputs: {seen: {from: v}}
"""


def last_inputs(db: Database, node: str, role: str) -> dict[str, Any]:
    return dict(runs_of(db, node_role(db, node, role).id)[-1].inputs)


def test_inputs_merge_in_design_order_and_each_layer_change_reanneals(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, LAYERS)
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["sink"])
        deployments.commit(session, deployment)
    anneal(db)
    assert last_inputs(db, "n0.test", "sink") == {"v": "role-default", "w": "untouched"}

    with db.session() as session:
        deployment = deployments.get_deployment(session, "d")
        deployments.add_role(session, deployment, "sink", data={"v": "deployment"})
    anneal(db)
    assert last_inputs(db, "n0.test", "sink")["v"] == "deployment"

    with db.session() as session:
        deployments.set_discovery(session, node, {"v": "discovery"})
    anneal(db)
    assert last_inputs(db, "n0.test", "sink")["v"] == "discovery"

    src = node_role(db, "n0.test", "src")
    with db.session() as session:
        deployments.set_user_data(session, src.id, {"src_v": "parent"})
    anneal(db)
    assert last_inputs(db, "n0.test", "sink")["v"] == "parent"  # parent's new output reached the child

    sink = node_role(db, "n0.test", "sink")
    with db.session() as session:
        deployments.set_user_data(session, sink.id, {"v": "user"})
    anneal(db)
    assert last_inputs(db, "n0.test", "sink") == {"v": "user", "w": "untouched"}
    assert node_role(db, "n0.test", "sink").wall == {"seen": "user"}
    assert node_role(db, "n0.test", "sink").run_count == 5
    assert node_role(db, "n0.test", "src").run_count == 2  # the layers below src never touched it


def test_discovery_change_of_an_undeclared_key_reanneals_nothing(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, LAYERS)
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["sink"])
        deployments.commit(session, deployment)
    anneal(db)
    with db.session() as session:
        assert deployments.set_discovery(session, node, {"disk_count": 4}) == []
    assert anneal(db).completed == 0


def test_a_jig_reading_an_undeclared_input_fails_the_run(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Snooper(Jig):
        name = "snooper"

        def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
            return {"got": inputs["password"]}

    monkeypatch.setitem(REGISTRY, "snooper", Snooper())
    load(db, tmp_path, "roles:\n  - {name: nosy, jig: snooper, inputs: {declared: {default: 1}}}\n")
    node = make_nodes(db, 1, discovery={"password": "hunter2"})[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["nosy"])
        deployments.commit(session, deployment)
    anneal(db)
    nosy = node_role(db, "n0.test", "nosy")
    assert nosy.state == "error"
    assert "undeclared input 'password'" in nosy.runlog
    assert runs_of(db, nosy.id)[-1].inputs == {"declared": 1}


def test_inputs_object_refuses_undeclared_names_even_with_a_default() -> None:
    inputs = Inputs({"a": 1, "b": None}, "r")
    assert inputs["a"] == 1 and inputs.get("b", 7) == 7 and "zzz" not in inputs
    with pytest.raises(UndeclaredInput):
        inputs.get("zzz", "fallback")
    assert merge_inputs(
        {"x": {"default": 0}, "y": {}},
        deployment={"x": 1, "y": 1, "z": 1},
        discovery={"x": 2},
        parents=[{"x": 3}, {"x": 4}],
        user={"y": 5},
    ) == {"x": 4, "y": 5}


NTP = """\
roles:
  - name: ntp-server
    cluster: true
    inputs: {admin_address: {schema: {type: string}}}
    outputs: {ntp_server: {from: admin_address}}
  - name: ntp-client
    requires: [ntp-server]
    inputs: {ntp_servers: {schema: {type: array}, from: ntp_server, aggregate: list}}
    outputs: {ntp_servers: {from: ntp_servers}}
"""


def test_second_ntp_server_reanneals_every_client_and_removing_it_converges_back(
    db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, NTP)
    nodes = [make_nodes(db, 1, f"n{i}-", {"admin_address": f"10.0.0.{i + 1}"})[0] for i in range(5)]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes[:1], ["ntp-server"])
        deployments.add_nodes(session, deployment, nodes[:4], ["ntp-client"])
        deployments.commit(session, deployment)
    anneal(db)
    clients = [node_role(db, f"n{i}-0.test", "ntp-client") for i in range(4)]
    assert {c.run_count for c in clients} == {1}
    assert all(c.wall == {"ntp_servers": ["10.0.0.1"]} for c in clients)

    with db.session() as session:
        deployments.add_nodes(session, deployments.get_deployment(session, "d"), nodes[4:], ["ntp-server"])
    assert {states(db)[(f"n{i}-0.test", "ntp-client")] for i in range(4)} == {"blocked"}
    anneal(db)
    clients = [node_role(db, f"n{i}-0.test", "ntp-client") for i in range(4)]
    assert {c.run_count for c in clients} == {2}
    assert all(sorted(c.wall["ntp_servers"]) == ["10.0.0.1", "10.0.0.5"] for c in clients)
    assert all(
        sorted(runs_of(db, c.id)[-1].inputs["ntp_servers"]) == ["10.0.0.1", "10.0.0.5"] for c in clients
    )

    with db.session() as session:
        deployments.remove_node(session, deployments.get_deployment(session, "d"), nodes[4])
    anneal(db)
    clients = [node_role(db, f"n{i}-0.test", "ntp-client") for i in range(4)]
    assert {c.run_count for c in clients} == {3}
    assert all(c.wall == {"ntp_servers": ["10.0.0.1"]} for c in clients)
    assert node_role(db, "n0-0.test", "ntp-server").run_count == 1  # the first server never re-ran


def test_run_log_records_inputs_and_outputs_and_replay_reruns_them(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, NTP)
    node = make_nodes(db, 1, discovery={"admin_address": "192.0.2.7"})[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["ntp-client", "ntp-server"])
        deployments.commit(session, deployment)
    anneal(db)
    client = node_role(db, "n0.test", "ntp-client")
    with db.read_session() as session:
        shown = runlog.show(session, client.id)
    assert shown["runs"][0]["inputs"] == {"ntp_servers": ["192.0.2.7"]}
    assert shown["runs"][0]["outputs"] == {"ntp_servers": ["192.0.2.7"]}
    assert shown["runs"][0]["status"] == "ok"

    # replay uses the recorded inputs even after the live data moved on, and changes no state
    with db.session() as session:
        deployments.set_discovery(session, node, {"admin_address": "192.0.2.99"})
    replayed = runlog.replay(db, client.id, run_id=shown["runs"][0]["id"])
    assert replayed["status"] == "replay-ok" and replayed["same_outputs"]
    assert replayed["inputs"] == {"ntp_servers": ["192.0.2.7"]}
    assert replayed["replay_of"] == shown["runs"][0]["id"]
    assert node_role(db, "n0.test", "ntp-client").state == "blocked"


FLAKY = """\
roles:
  - {name: flaky, jig: test, jig_data: {fail: boom}}
  - {name: after, requires: [flaky]}
"""


def test_error_keeps_children_blocked_until_a_retry_succeeds(db: Database, tmp_path: Path) -> None:
    directory = write_barclamp(tmp_path, FLAKY)
    with db.session() as session:
        load_dir(session, directory)
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["after"])
        deployments.commit(session, deployment)
    anneal(db)
    assert states(db) == {("n0.test", "flaky"): "error", ("n0.test", "after"): "blocked"}
    flaky = node_role(db, "n0.test", "flaky")
    assert "test jig told to fail: boom" in flaky.runlog and flaky.attempts == 1

    with db.session() as session:
        assert deployments.retry(session, flaky.id) == "todo"
    anneal(db)
    assert states(db)[("n0.test", "flaky")] == "error"  # still failing: still error, child still blocked

    (directory / "barclamp.yaml").write_text(
        (directory / "barclamp.yaml").read_text().replace("{fail: boom}", "{}")
    )
    with db.session() as session:
        load_dir(session, directory)
        deployments.retry(session, flaky.id)
    anneal(db)
    assert set(states(db).values()) == {"active"}
    assert [r.status for r in runs_of(db, flaky.id)] == ["error", "error", "ok"]


def test_retryable_error_backs_off_and_stops_at_the_limit(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, "roles:\n  - {name: unreachable, jig: test, jig_data: {fail: retryable}}\n")
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["unreachable"])
        deployments.commit(session, deployment)
    anneal(db, retry_limit=3)
    nr = node_role(db, "n0.test", "unreachable")
    assert (nr.state, nr.attempts, nr.run_count) == ("error", 3, 3)
    runs = runs_of(db, nr.id)
    assert [r.status for r in runs] == ["error"] * 3
    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # 0.05 s, then 0.1 s of backoff


def test_an_input_of_the_wrong_declared_type_fails_the_run_before_the_jig(
    db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, "roles:\n  - {name: typed, inputs: {port: {schema: {type: integer}}}}\n")
    node = make_nodes(db, 1, discovery={"port": "eighty"})[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["typed"])
        deployments.commit(session, deployment)
    anneal(db)
    typed = node_role(db, "n0.test", "typed")
    assert typed.state == "error"
    assert "input port: expected integer, got str 'eighty'" in typed.runlog


def test_node_role_deleted_while_its_jig_runs_does_not_break_the_batch(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, "roles:\n  - {name: slow, jig: test, jig_data: {sleep: 0.3}}\n")
    nodes = make_nodes(db, 2)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes, ["slow"])
        deployments.commit(session, deployment)
    annealer = Annealer(db, workers=2, lease_seconds=30)
    try:
        annealer.step()
        assert len(annealer.inflight) == 2
        doomed = node_role(db, "n0.test", "slow")
        with db.session() as session:
            deployments.remove_node_roles(session, [doomed.id])
        annealer.wait_inflight(timeout=10)
    finally:
        annealer.close()
    assert states(db) == {("n1.test", "slow"): "active"}
    assert [r.status for r in runs_of(db, node_role(db, "n1.test", "slow").id)] == ["ok"]


ONE_AT_A_TIME = """\
roles:
  - {name: raid, jig: test, jig_data: {sleep: 0.3}}
  - {name: bios, jig: test, jig_data: {sleep: 0.3}}
  - {name: watch, jig: test, jig_data: {sleep: 0.6}, concurrent: true}
"""


def test_one_run_per_node_at_a_time_unless_the_role_is_concurrent(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, ONE_AT_A_TIME)
    nodes = make_nodes(db, 2)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes, ["raid", "bios", "watch"])
        deployments.commit(session, deployment)
    anneal(db, workers=6)
    assert set(states(db).values()) == {"active"}

    def span(node: str, role: str) -> tuple[Any, Any]:
        run = runs_of(db, node_role(db, node, role).id)[-1]
        return run.started_at, run.finished_at

    def overlap(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    for node in ("n0.test", "n1.test"):
        assert not overlap(span(node, "raid"), span(node, "bios"))  # never two exclusive runs on a node
        assert overlap(span(node, "watch"), span(node, "raid")) or overlap(
            span(node, "watch"), span(node, "bios")
        )
    assert overlap(span("n0.test", "raid"), span("n1.test", "raid"))  # nodes in parallel
