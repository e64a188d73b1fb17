"""Several annealer processes on one database: no node-role claimed twice, none lost to kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance.annealer import deployments
from appliance.db import Database
from appliance.models import Event, NodeRole, Run
from tests.unit.annealer_world import anneal, load, make_nodes

KILN = str(Path(sys.executable).with_name("kiln"))

CHAIN = """\
roles:
  - {name: c0}
  - {name: c1, requires: [c0]}
  - {name: c2, requires: [c1]}
  - {name: hub, cluster: true}
  - {name: spoke, requires: [hub, c2]}
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            "KILN_CONFIG": str(tmp_path / "absent.toml"),
            "KILN_STATE_DIR": str(tmp_path / "state"),
            "KILN_LOG_LEVEL": "WARNING",
            **env,
        }
        proc = subprocess.Popen([KILN, "--database-url", url, "annealer", "run", *args], env=environ)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def count(db: Database, *where: object) -> int:
    with db.read_session() as session:
        return int(session.scalar(select(func.count()).select_from(NodeRole).where(*where)) or 0)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_three_annealer_processes_never_run_a_node_role_twice(
    db: Database, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    load(db, tmp_path, CHAIN)
    nodes = make_nodes(db, 120)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes[:3], ["hub"])
        deployments.add_nodes(session, deployment, nodes, ["spoke"])
    total = count(db)
    assert total == 3 + 120 * 4
    # small batches so the three processes really interleave their claims
    procs = [spawn(db.url, "--workers", "2", KILN_ANNEALER_BATCH="7") for _ in range(3)]
    with db.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "d"))
    wait_for(lambda: count(db, NodeRole.state == "active") == total, 90, "every node-role active")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=30) for proc in procs] == [0, 0, 0]
    assert count(db, NodeRole.run_count != 1) == 0
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == total
        annealers = session.scalars(select(Run.annealer).distinct()).all()
    assert 1 <= len(annealers) <= 3


def test_killed_annealer_mid_run_loses_nothing_and_runs_nothing_twice(
    db: Database, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    load(db, tmp_path, "roles:\n  - {name: slow, jig: test, jig_data: {sleep: 0.4}}\n")
    nodes = make_nodes(db, 10)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes, ["slow"])
        deployments.commit(session, deployment)
    victim = spawn(db.url, "--workers", "3", KILN_ANNEALER_LEASE_SECONDS="2")
    wait_for(
        lambda: count(db, NodeRole.state == "active") >= 3 and count(db, NodeRole.state == "transition") > 0,
        60,
        "the victim to finish some runs and hold others",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    orphaned = count(db, NodeRole.state == "transition")
    finished_by_victim = count(db, NodeRole.state == "active")
    assert orphaned > 0
    survivor = anneal(db, timeout=60, lease_seconds=2, workers=3)
    assert count(db, NodeRole.state == "active") == 10
    assert count(db, NodeRole.run_count != 1) == 0
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Run).where(Run.status == "ok")) == 10
        recovered = session.scalar(
            select(func.count()).select_from(Event).where(Event.data["reason"].as_string() == "lease expired")
        )
    assert recovered == orphaned
    assert survivor.completed == 10 - finished_by_victim
