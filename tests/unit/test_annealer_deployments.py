"""Deployments: proposed/committed lifecycle, implicit roles, parents on the node or across the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.annealer import deployments
from appliance.annealer.graph import deployment_graph
from appliance.db import Database
from appliance.errors import Conflict
from appliance.models import NodeRoleEdge
from tests.unit.annealer_world import anneal, load, make_nodes, node_role, states

ROLES = """\
roles:
  - {name: base}
  - {name: mid, requires: [base]}
  - {name: top, requires: [mid]}
  - {name: server, cluster: true}
  - {name: client, requires: [server, base]}
"""


@pytest.fixture
def world(db: Database, tmp_path: Path) -> Database:
    load(db, tmp_path, ROLES)
    return db


def test_added_node_roles_are_proposed_and_nothing_runs_until_commit(world: Database) -> None:
    nodes = make_nodes(world, 2)
    with world.session() as session:
        deployment = deployments.create(session, "web")
        deployments.add_nodes(session, deployment, nodes, ["mid"])
        dep_id = deployment.id
    assert set(states(world, dep_id).values()) == {"proposed"}
    assert anneal(world).completed == 0
    with world.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "web"))
    after = states(world, dep_id)
    assert {after[(f"n{i}.test", "base")] for i in range(2)} == {"todo"}
    assert {after[(f"n{i}.test", "mid")] for i in range(2)} == {"blocked"}
    anneal(world)
    assert set(states(world, dep_id).values()) == {"active"}


def test_binding_a_role_pulls_in_the_roles_it_requires(world: Database) -> None:
    node = make_nodes(world, 1)[0]
    with world.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["top"])
    assert set(states(world)) == {("n0.test", "top"), ("n0.test", "mid"), ("n0.test", "base")}
    top, mid, base = (node_role(world, "n0.test", r) for r in ("top", "mid", "base"))
    with world.read_session() as session:
        edges = set(session.execute(select(NodeRoleEdge.parent_id, NodeRoleEdge.child_id)))
    assert edges == {(mid.id, top.id), (base.id, mid.id)}


def test_required_role_already_in_system_deployment_is_used_as_parent(world: Database) -> None:
    node = make_nodes(world, 1)[0]
    with world.session() as session:
        system = deployments.system_deployment(session)
        deployments.add_nodes(session, system, [node], ["base"])
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["mid"])
        dep_id, sys_id = deployment.id, system.id
    assert set(states(world, dep_id)) == {("n0.test", "mid")}
    base = node_role(world, "n0.test", "base", sys_id)
    mid = node_role(world, "n0.test", "mid", dep_id)
    with world.read_session() as session:
        assert (
            session.scalar(select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == mid.id)) == base.id
        )
    # system is always committed: its node-role ran; then the committed deployment's child follows it
    with world.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "d"))
    anneal(world)
    assert set(states(world).values()) == {"active"}


def test_cluster_role_parents_span_every_node_of_the_deployment(world: Database) -> None:
    nodes = make_nodes(world, 4)
    with world.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes[:2], ["server"])
        deployments.add_nodes(session, deployment, nodes, ["client"])
        dep_id = deployment.id
    servers = {node_role(world, f"n{i}.test", "server").id for i in range(2)}
    with world.read_session() as session:
        for i in range(4):
            client = node_role(world, f"n{i}.test", "client")
            parents = set(
                session.scalars(select(NodeRoleEdge.parent_id).where(NodeRoleEdge.child_id == client.id))
            )
            assert servers <= parents and len(parents) == 3  # both servers + base on its own node
        graph = deployment_graph(session, dep_id)
    assert {n["name"] for n in graph["roles"]["nodes"]} == {"server", "client", "base"}
    assert len(graph["node_roles"]["nodes"]) == 2 + 4 + 4


def test_cluster_requirement_without_any_server_is_refused(world: Database) -> None:
    node = make_nodes(world, 1)[0]
    with pytest.raises(Conflict, match="requires cluster role server"), world.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["client"])


def test_propose_again_allows_edits_and_starts_nothing_new(world: Database) -> None:
    nodes = make_nodes(world, 2)
    with world.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes[:1], ["base"])
        deployments.commit(session, deployment)
    anneal(world)
    with world.session() as session:
        deployment = deployments.get_deployment(session, "d")
        deployments.propose(session, deployment)
        deployments.add_nodes(session, deployment, nodes[1:], ["base"])
    assert states(world)[("n1.test", "base")] == "proposed"
    assert anneal(world).completed == 0
    with world.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "d"))
    anneal(world)
    assert set(states(world).values()) == {"active"}


def test_new_binding_in_a_committed_deployment_starts_at_once(world: Database) -> None:
    nodes = make_nodes(world, 1)
    with world.session() as session:
        deployment = deployments.create(session, "d")
        deployments.commit(session, deployment)
        deployments.add_nodes(session, deployment, nodes, ["mid"])
    assert states(world) == {("n0.test", "base"): "todo", ("n0.test", "mid"): "blocked"}


def test_deployment_names_are_unique(world: Database) -> None:
    with world.session() as session:
        deployments.create(session, "d")
    with pytest.raises(Conflict), world.session() as session:
        deployments.create(session, "d")


CONFLICTING = """\
roles:
  - {name: base}
  - {name: mysql, requires: [base], conflicts: [postgres]}
  - {name: postgres, requires: [base]}
  - {name: wipe-disks, destructive: true, requires: [base], inputs: {raid: {default: r1}}}
  - {name: after-wipe, requires: [wipe-disks]}
"""


def test_conflicting_roles_are_refused_naming_both(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, CONFLICTING)
    nodes = make_nodes(db, 2)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes[:1], ["mysql"])
        deployments.add_nodes(session, deployment, nodes[1:], ["postgres"])  # another node: fine
    clash = r"role postgres conflicts with role mysql already on node n0\.test"
    with pytest.raises(Conflict, match=clash), db.session() as session:
        deployments.add_nodes(session, deployments.get_deployment(session, "d"), nodes[:1], ["postgres"])
    fresh = make_nodes(db, 1, "x")
    with pytest.raises(Conflict, match="roles mysql and postgres conflict"), db.session() as session:
        deployments.add_nodes(session, deployments.create(session, "other"), fresh, ["mysql", "postgres"])


def test_destructive_role_runs_once_and_is_never_reannealed(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, CONFLICTING)
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], ["after-wipe"])
        deployments.commit(session, deployment)
    anneal(db)
    wipe = node_role(db, "n0.test", "wipe-disks")
    base = node_role(db, "n0.test", "base")
    with db.session() as session:
        deployments.set_user_data(session, wipe.id, {"raid": "r10"})  # its own input changed
        deployments.reanneal(session, [base.id])  # and its parent re-runs
    anneal(db)
    assert node_role(db, "n0.test", "wipe-disks").run_count == 1
    assert node_role(db, "n0.test", "base").run_count == 2
    assert set(states(db).values()) == {"active"}
