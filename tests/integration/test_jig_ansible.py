"""The ansible jig: a real playbook through ansible-runner against the sshd node in a namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from appliance.annealer import barclamps, deployments
from appliance.db import Database
from appliance.models import Node
from tests.integration.sshd_node import sshd_node
from tests.unit.annealer_world import anneal, make_nodes, node_role, runs_of, write_barclamp

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("annealer-ssh")]

ROLES = """\
roles:
  - name: motd
    jig: ansible
    jig_data: {playbook: site.yml}
    inputs: {greeting: {default: hello}, target: {}}
    outputs: {message: {}, server: {}}
  - name: failing
    jig: ansible
    jig_data: {playbook: fail.yml}
"""

SITE = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: where am I
      ansible.builtin.shell: echo "$SSH_CONNECTION" | cut -d' ' -f3
      register: where
      changed_when: false
    - name: write the file the role is about
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "{{ greeting }}\\n"
    - name: publish outputs
      ansible.builtin.set_stats:
        data:
          message: "{{ greeting | upper }}"
          server: "{{ where.stdout }}"
"""

FAIL = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.fail:
        msg: "RAID controller missing"
"""


@pytest.fixture(scope="module")
def node_access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with sshd_node(tmp_path_factory.mktemp("sshd")) as access:
        yield access


def bind(db: Database, tmp_path: Path, role: str, access: dict[str, Any], user: dict[str, Any]) -> None:
    with db.session() as session:
        barclamps.load(session, write_barclamp(tmp_path, ROLES, extra={"site.yml": SITE, "fail.yml": FAIL}))
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        session.execute(update(Node).where(Node.id == node).values(hint={"ssh": access}))
        deployment = deployments.create(session, "d")
        ids = deployments.add_nodes(session, deployment, [node], [role])
        deployments.set_user_data(session, ids[0], user)
        deployments.commit(session, deployment)


def test_playbook_gets_inputs_as_extra_vars_and_set_stats_become_outputs(
    sqlite_db: Database, tmp_path: Path, node_access: dict[str, Any]
) -> None:
    target = tmp_path / "motd"
    bind(sqlite_db, tmp_path, "motd", node_access, {"target": str(target), "greeting": "welcome"})
    anneal(sqlite_db, timeout=120)
    motd = node_role(sqlite_db, "n0.test", "motd")
    assert motd.state == "active", motd.runlog
    assert motd.wall == {"message": "WELCOME", "server": node_access["host"]}
    assert target.read_text() == "welcome\n"
    run = runs_of(sqlite_db, motd.id)[-1]
    assert run.inputs == {"greeting": "welcome", "target": str(target)}
    assert "publish outputs" in run.log


def test_failed_task_is_an_error_with_the_playbook_output_kept(
    sqlite_db: Database, tmp_path: Path, node_access: dict[str, Any]
) -> None:
    bind(sqlite_db, tmp_path, "failing", node_access, {})
    anneal(sqlite_db, timeout=120, retry_limit=3)
    failing = node_role(sqlite_db, "n0.test", "failing")
    assert (failing.state, failing.attempts) == ("error", 1)
    assert "RAID controller missing" in failing.runlog
