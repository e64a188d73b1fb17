"""The parts of `kiln lab` that need no root: its generated config, its address plan, its seed data.
The lab itself (namespace, bridge, DHCP, teardown) is tested for real in tests/integration/test_lab.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance import auth
from appliance.cli.lab import LabOptions, lab_config
from appliance.config import load_settings
from appliance.db import Database
from appliance.lab.forward import TcpForwarder
from appliance.lab.network import LabError, LabNetwork
from appliance.lab.seed import LabPlan, ensure_admin, seed_networks
from appliance.models import Event, Network, Range, User

KILN = str(Path(sys.executable).parent / "kiln")


def test_the_generated_config_is_valid_and_serves_dhcp_on_the_bridge_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = LabOptions(net=LabNetwork(), port=8080, state_dir=tmp_path, metrics_port=9670)
    opts.config_path.write_text(lab_config(opts))
    for name in list(os.environ):
        if name.startswith("KILN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KILN_CONFIG", str(opts.config_path))
    settings = load_settings()
    assert settings.dhcp_interfaces == ["kilnbr0"]
    assert settings.advertise_address == "10.77.0.1"
    assert settings.web_bind == "0.0.0.0:8080"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'kiln.db'}"
    assert settings.dns_upstreams == [], "lab nodes must not be forwarded to the host's resolvers"


def test_the_address_plan_splits_the_lab_subnet_and_puts_bmcs_next_to_it() -> None:
    plan = LabPlan.for_network(LabNetwork())
    assert plan.admin_ranges == [
        ("hosts", "host", "10.77.0.10", "10.77.0.127"),
        ("discovery", "dynamic", "10.77.0.128", "10.77.0.254"),
    ]
    assert plan.bmc_cidr == "10.77.1.0/24"
    assert plan.bmc_ranges == [("bmcs", "bmc", "10.77.1.10", "10.77.1.254")]
    small = LabPlan.for_network(LabNetwork(subnet="192.168.50.0/28"))
    assert small.admin_ranges[1] == ("discovery", "dynamic", "192.168.50.8", "192.168.50.14")
    assert small.bmc_cidr == "192.168.50.16/28"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "a-namespace-name-too-long-for-links"}, None),
        ({"bridge": "bridge-name-over-15"}, "1-15 characters"),
        ({"subnet": "10.0.0.0/30"}, "/29 or larger"),
        ({"subnet": "fd00::/64"}, "IPv4"),
        ({"link": "169.254.77.0/29"}, "must be a /30"),
    ],
)
def test_lab_network_names_and_subnets_are_checked(kwargs: dict[str, str], message: str | None) -> None:
    if message is None:
        net = LabNetwork(**kwargs)
        assert len(net.host_veth) <= 15 and len(net.ns_veth) <= 15
        return
    with pytest.raises(LabError, match=message):
        LabNetwork(**kwargs)


def test_seeding_twice_keeps_one_set_of_networks_and_one_admin(sqlite_db: Database, tmp_path: Path) -> None:
    net = LabNetwork()
    seed_networks(sqlite_db, net, "kiln.lab")
    first = ensure_admin(sqlite_db, tmp_path)
    seed_networks(sqlite_db, net, "kiln.lab")
    again = ensure_admin(sqlite_db, tmp_path)
    assert first.created and not again.created
    assert again.password == first.password
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0
    with sqlite_db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Network)) == 2
        assert session.scalar(select(func.count()).select_from(Range)) == 3
        assert session.scalar(select(func.count()).select_from(User)) == 1
        admin_net = session.scalar(select(Network).where(Network.name == "lab-admin"))
        assert admin_net is not None and admin_net.interface == "kilnbr0"
        assert admin_net.dns_servers == ["10.77.0.1"]
        assert auth.authenticate(session, "admin", first.password).role == "admin"
        actions = set(session.scalars(select(Event.action)))
        assert {"network.create", "range.create", "user.create"} <= actions


def test_the_forwarder_relays_both_ways_and_half_closes() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    target = upstream.getsockname()

    def echo_upper() -> None:
        conn, _ = upstream.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            conn.sendall(data.upper())

    server = threading.Thread(target=echo_upper)
    server.start()
    forwarder = TcpForwarder(("127.0.0.1", 0), target).start()
    try:
        with socket.create_connection(forwarder.address, timeout=10) as client:
            client.sendall(b"x" * 200_000 + b"end")
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := client.recv(65536):
                received += chunk
        assert received == b"X" * 200_000 + b"END"
    finally:
        forwarder.stop()
        server.join(timeout=10)
        upstream.close()


def test_a_forwarder_that_never_started_stops_cleanly() -> None:
    forwarder = TcpForwarder(("127.0.0.1", 0), ("127.0.0.1", 9))
    port = forwarder.address[1]
    forwarder.stop()
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again


def test_the_forwarder_refuses_a_port_in_use_with_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(LabError, match=f"cannot listen on 127.0.0.1:{port}"):
            TcpForwarder(("127.0.0.1", port), ("127.0.0.1", 9))


def test_lab_refuses_to_run_without_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        argv = [KILN, "lab"]
    else:
        # as root, drop to nobody to see what a user without sudo gets
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", KILN, "lab"]
    env = {**os.environ, "KILN_STATE_DIR": "/nonexistent/lab", "KILN_CONFIG": "/nonexistent/kiln.toml"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 1
    assert "needs root" in result.stderr
