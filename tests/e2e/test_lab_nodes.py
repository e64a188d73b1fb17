"""`kiln lab --nodes 1`: a QEMU machine on the lab bridge netboots from the lab, boots the discovery
image from its web and is registered: the whole lab as a newcomer uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.db import Database
from appliance.models import Lease, NodeMac
from tests.lab_support import RunningLab, namespaces, qemu_pids, start_lab

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.xdist_group("lab")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[RunningLab]:
    running = start_lab(tmp_path, "--nodes", "1")
    try:
        running.wait_for(lambda: "Kiln lab is running." in running.out.read_text(), "the lab banner", 120)
        yield running
    finally:
        running.remove_leftovers()


def test_a_qemu_node_netboots_on_the_lab_bridge_and_is_discovered(lab: RunningLab) -> None:
    assert "1 QEMU node(s)" in lab.out.read_text()
    assert qemu_pids(lab), "no QEMU process for the lab node"
    mac = f"52:54:00:{lab.second:02x}:00:01"
    db = Database(f"sqlite:///{lab.state / 'kiln.db'}")
    try:

        def leased() -> bool:
            with db.read_session() as session:
                return (
                    session.scalar(select(Lease).where(Lease.mac == mac, Lease.state == "active")) is not None
                )

        lab.wait_for(leased, f"a DHCP lease for the lab node {mac}", 60)

        def discovered() -> bool:
            with db.read_session() as session:
                return session.scalar(select(NodeMac).where(NodeMac.mac == mac)) is not None

        # the discovery image boots from the lab's web and its agent registers the node
        lab.wait_for(discovered, f"the lab node {mac} to be discovered", 90)
    finally:
        db.dispose()
    assert lab.stop() == lab.expected_exit_code(), lab.output()
    assert not qemu_pids(lab), "a lab node outlived the lab"
    assert lab.namespace not in namespaces()
