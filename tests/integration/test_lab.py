"""`kiln lab` for real: namespace, bridge, veth, DHCP on the bridge only, the web from the host, and a
complete teardown. Every name, subnet and port is unique to this test process, so it runs next to a
real lab and to other test workers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance import auth
from appliance.db import Database
from appliance.models import Network, Range
from tests.lab_support import KILN, RunningLab, ip, lab_env, namespaces, qemu_pids, start_lab
from tests.netns import Namespace, unique

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("lab")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    running = start_lab(tmp_path_factory.mktemp("lab"))
    try:
        running.wait_for(lambda: "Kiln lab is running." in running.out.read_text(), "the lab banner", 90)
        yield running
    finally:
        running.remove_leftovers()


def test_the_lab_prints_the_url_and_working_admin_credentials(lab: RunningLab) -> None:
    banner = lab.out.read_text()
    assert f"http://127.0.0.1:{lab.port}/" in banner
    assert "WARNING" not in banner, banner
    password = re.search(r"password\s+(\S+)", banner)
    assert password is not None
    db = Database(f"sqlite:///{lab.state / 'kiln.db'}")
    try:
        with db.read_session() as session:
            user = auth.authenticate(session, "admin", password.group(1))
            assert user.role == "admin"
    finally:
        db.dispose()


def test_the_web_is_reachable_from_the_host(lab: RunningLab) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.port}/healthz", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}


def test_the_lab_networks_and_ranges_are_in_ipam(lab: RunningLab) -> None:
    db = Database(f"sqlite:///{lab.state / 'kiln.db'}")
    try:
        with db.read_session() as session:
            nets = {n.name: n for n in session.scalars(select(Network))}
            assert nets["lab-admin"].cidr == lab.env["KILN_LAB_SUBNET"]
            assert nets["lab-admin"].interface == lab.bridge
            assert nets["lab-bmc"].category == "bmc"
            kinds = {(r.network_id, r.kind) for r in session.scalars(select(Range))}
            assert (nets["lab-admin"].id, "dynamic") in kinds
            assert (nets["lab-bmc"].id, "bmc") in kinds
    finally:
        db.dispose()


def test_namespace_bridge_and_veth_exist(lab: RunningLab) -> None:
    assert lab.namespace in namespaces()
    bridge = ip("-n", lab.namespace, "-d", "addr", "show", "dev", lab.bridge)
    assert "bridge" in bridge
    assert f"inet 10.{lab.second}." in bridge
    assert lab.host_veth in ip("link", "show", "dev", lab.host_veth)


def test_dhcp_is_bound_to_the_lab_bridge_only_and_never_on_the_host(lab: RunningLab) -> None:
    pid = lab.serve_pid()
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"), "services run on the host"
    sockets = subprocess.run(
        ["ip", "netns", "exec", lab.namespace, "ss", "-Hulpn"], capture_output=True, text=True, check=True
    ).stdout
    dhcp = [line for line in sockets.splitlines() if re.search(r":67\s", line)]
    assert dhcp, sockets
    assert all(f"%{lab.bridge}:67" in line for line in dhcp), dhcp


def test_a_client_on_the_lab_bridge_gets_an_address_from_the_dynamic_range(lab: RunningLab) -> None:
    client = Namespace.create("klc")
    try:
        port = unique("kport")
        subprocess.run(
            ["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", client.name],
            check=True,
        )
        subprocess.run(["ip", "link", "set", port, "netns", lab.namespace], check=True)
        subprocess.run(
            ["ip", "-n", lab.namespace, "link", "set", port, "master", lab.bridge, "up"], check=True
        )
        client.run(["ip", "link", "set", "eth0", "up"])
        result = client.run(
            ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "1", "-i", "eth0", "-s", "/bin/true"],
            check=False,
            timeout=40,
        )
        lease = re.search(r"lease of (\S+) obtained", result.stdout + result.stderr)
        assert lease, result.stdout + result.stderr
        last = int(lease.group(1).split(".")[-1])
        assert lease.group(1).startswith(f"10.{lab.second}.") and last >= 128, "not from the dynamic range"
    finally:
        client.delete()


def test_a_second_lab_on_the_same_state_dir_is_refused_and_leaves_the_first_alone(
    lab: RunningLab, tmp_path: Path
) -> None:
    env = lab_env(tmp_path, state=lab.state)
    result = subprocess.run([KILN, "lab"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "a lab already runs" in result.stderr
    assert env["KILN_LAB_NAMESPACE"] not in namespaces()
    assert lab.namespace in namespaces()


def test_a_port_in_use_stops_the_lab_before_it_builds_anything(tmp_path: Path) -> None:
    env = lab_env(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        env["KILN_LAB_PORT"] = str(busy.getsockname()[1])
        result = subprocess.run([KILN, "lab"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{env['KILN_LAB_PORT']}" in result.stderr
    assert "Traceback" not in result.stderr
    assert env["KILN_LAB_NAMESPACE"] not in namespaces()


def test_stopping_the_lab_removes_namespace_bridge_veth_and_forwarder(lab: RunningLab) -> None:
    pid = lab.serve_pid()
    assert lab.stop(signal.SIGTERM) == lab.expected_exit_code(), lab.output()
    assert lab.namespace not in namespaces()
    assert (
        "does not exist"
        in subprocess.run(["ip", "link", "show", "dev", lab.host_veth], capture_output=True, text=True).stderr
    )
    assert not Path(f"/proc/{pid}").exists(), "kiln serve outlived the lab"
    assert not qemu_pids(lab), "a lab node outlived the lab"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lab.port), timeout=2).close()
    assert not (lab.state / "lab.json").exists()


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_lab_takes_its_services_down_and_the_next_start_cleans_up(tmp_path: Path) -> None:
    first = start_lab(tmp_path)
    try:
        first.wait_for(lambda: "Kiln lab is running." in first.out.read_text(), "the first lab", 90)
        serve_pid = first.serve_pid()
        first.proc.kill()
        first.proc.wait()
        assert _wait_gone(serve_pid), "kiln serve outlived a killed lab"
        assert first.namespace in namespaces()

        again = start_lab(tmp_path, env=first.env)
        again.wait_for(lambda: "Kiln lab is running." in again.out.read_text(), "the restarted lab", 90)
        assert "password" in again.out.read_text()
        assert again.stop() == again.expected_exit_code(), again.output()
        assert first.namespace not in namespaces()
        assert first.host_veth not in ip("link", "show")

        result = subprocess.run(
            [KILN, "lab", "--cleanup"], env=first.env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    finally:
        first.remove_leftovers()
