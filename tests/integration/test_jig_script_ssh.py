"""The script jig against a real sshd playing the node in a network namespace."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from appliance.annealer import deployments
from appliance.db import Database
from appliance.models import Node
from tests.integration.sshd_node import sshd_node
from tests.unit.annealer_world import anneal, load, make_nodes, node_role, runs_of, states

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("annealer-ssh")]

ROLES = """\
roles:
  - name: greet
    jig: script
    jig_data:
      script: |
        #!/bin/sh
        set -eu
        read -r inputs
        echo "greeting from $(echo "$SSH_CONNECTION" | cut -d' ' -f3)" >&2
        python3 -c 'import json,sys,os; i=json.loads(sys.argv[1]); print(json.dumps({"shout": i["word"].upper(), "server": os.environ["SSH_CONNECTION"].split()[2]}))' "$inputs"
    inputs: {word: {default: hello}}
    outputs: {shout: {}, server: {}}
  - name: broken
    jig: script
    jig_data:
      script: |
        #!/bin/sh
        echo "disk /dev/sdz not found" >&2
        exit 3
"""


@pytest.fixture(scope="module")
def node_access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with sshd_node(tmp_path_factory.mktemp("sshd")) as access:
        yield access


@pytest.fixture
def sqlite(sqlite_db: Database, tmp_path: Path, node_access: dict[str, Any]) -> Database:
    load(sqlite_db, tmp_path, ROLES)
    return sqlite_db


def bind(db: Database, role: str, access: dict[str, Any]) -> int:
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        session.execute(update(Node).where(Node.id == node).values(hint={"ssh": access}))
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, [node], [role])
        deployments.commit(session, deployment)
    return node


def test_script_runs_on_the_node_with_inputs_on_stdin_and_json_outputs(
    sqlite: Database, node_access: dict[str, Any]
) -> None:
    bind(sqlite, "greet", node_access)
    anneal(sqlite, timeout=60)
    greet = node_role(sqlite, "n0.test", "greet")
    assert greet.state == "active", greet.runlog
    assert greet.wall == {"shout": "HELLO", "server": node_access["host"]}
    run = runs_of(sqlite, greet.id)[-1]
    assert run.inputs == {"word": "hello"}
    assert f"greeting from {node_access['host']}" in run.log


def test_script_exit_status_is_an_error_with_its_log_kept(
    sqlite: Database, node_access: dict[str, Any]
) -> None:
    bind(sqlite, "broken", node_access)
    anneal(sqlite, timeout=60)
    broken = node_role(sqlite, "n0.test", "broken")
    assert broken.state == "error"
    assert "script exited 3" in broken.runlog and "disk /dev/sdz not found" in broken.runlog
    assert runs_of(sqlite, broken.id)[-1].status == "error"


def test_unreachable_node_is_retried_then_errors(sqlite: Database, node_access: dict[str, Any]) -> None:
    closed = {**node_access, "port": 2}  # nothing listens there: connection refused
    bind(sqlite, "greet", closed)
    anneal(sqlite, timeout=60, retry_limit=2)
    greet = node_role(sqlite, "n0.test", "greet")
    assert (greet.state, greet.attempts) == ("error", 2)
    assert "SSH to" in greet.runlog
    assert states(sqlite) == {("n0.test", "greet"): "error"}


def test_wrong_host_key_is_refused(sqlite: Database, node_access: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = {**node_access, "host_key": " ".join(other.with_suffix(".pub").read_text().split()[:2])}
    bind(sqlite, "greet", forged)
    anneal(sqlite, timeout=60, retry_limit=3)
    greet = node_role(sqlite, "n0.test", "greet")
    assert (greet.state, greet.attempts) == ("error", 1)  # not retryable: nothing will change by waiting
    assert "host key does not match" in greet.runlog
    assert json.dumps(greet.wall) == "{}"
