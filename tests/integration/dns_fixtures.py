"""A seeded admin zone, a Kiln DNS server on loopback, and a dnsmasq upstream for the DNS tests."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import ipam
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Lease, Network, Node, NodeMac, Reservation
from services.dns.server import DnsServer


@dataclass
class Seeded:
    host_range: int
    bmc_range: int
    node_ids: dict[str, int]


def seed_zone(db: Database) -> Seeded:
    """n1 (host + BMC allocation), n2 (v4 allocation + v6 reservation), big (40 addresses), a reservation, a lease."""
    with db.session() as s:
        admin = Network(name="admin", cidr="10.9.0.0/24")
        bmc = Network(name="bmc", cidr="10.10.0.0/24", category="bmc")
        v6 = Network(name="admin6", cidr="fd00:9::/64")
        s.add_all([admin, bmc, v6])
        s.flush()
        hosts = ipam.make_range(s, admin, "hosts", "host", "10.9.0.10", "10.9.0.200")
        bmcs = ipam.make_range(s, bmc, "bmcs", "bmc", "10.10.0.10", "10.10.0.200")
        s.flush()
        nodes = {name: Node(name=name) for name in ("n1", "n2", "big", "n3.rack2", "disc")}
        nodes["n3.rack2"].bmc_address = "10.10.0.99"
        s.add_all(nodes.values())
        s.flush()
        ipam.allocate(s, hosts.id, node_id=nodes["n1"].id, address="10.9.0.11")
        ipam.allocate(s, bmcs.id, node_id=nodes["n1"].id, address="10.10.0.11")
        ipam.allocate(s, hosts.id, node_id=nodes["n2"].id, address="10.9.0.12")
        # IPv6 by reservation: ranges store addresses as BIGINT, which an IPv6 address overflows
        s.add(
            Reservation(
                mac="52:54:00:00:00:12", network_id=v6.id, address="fd00:9::12", node_id=nodes["n2"].id
            )
        )
        for i in range(40):
            ipam.allocate(s, hosts.id, node_id=nodes["big"].id, address=f"10.9.0.{100 + i}")
        s.add(
            Reservation(mac="52:54:00:00:00:01", network_id=admin.id, address="10.9.0.50", hostname="printer")
        )
        now = dt.datetime.now(dt.UTC)
        s.add(
            Lease(
                network_id=admin.id,
                mac="52:54:00:00:00:02",
                address="10.9.0.60",
                address_int=int.from_bytes(socket.inet_aton("10.9.0.60"), "big"),
                hostname="laptop",
                ends_at=now + dt.timedelta(hours=1),
            )
        )
        # a discovered node known only by its MAC: its dynamic lease carries no hostname
        s.add(NodeMac(mac="52:54:00:00:00:04", node_id=nodes["disc"].id))
        s.add(
            Lease(
                network_id=admin.id,
                mac="52:54:00:00:00:04",
                address="10.9.0.62",
                address_int=int.from_bytes(socket.inet_aton("10.9.0.62"), "big"),
                ends_at=now + dt.timedelta(hours=1),
            )
        )
        # a client claiming a node's name through DHCP must not get it
        s.add(
            Lease(
                network_id=admin.id,
                mac="52:54:00:00:00:03",
                address="10.9.0.61",
                address_int=int.from_bytes(socket.inet_aton("10.9.0.61"), "big"),
                hostname="n1",
                ends_at=now + dt.timedelta(hours=1),
            )
        )
        return Seeded(hosts.id, bmcs.id, {n: node.id for n, node in nodes.items()})


@dataclass
class RunningDns:
    server: DnsServer
    port: int


def run_dns(settings: Settings, db: Database) -> Iterator[RunningDns]:
    server = DnsServer(settings, db)
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), name="dns-test", daemon=True)
    thread.start()
    try:
        yield RunningDns(server, server.port)
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def dig(port: int, *args: str, source: str | None = None, server: str = "127.0.0.1") -> str:
    tool = shutil.which("dig")
    assert tool, "dig is not installed (package bind9-dnsutils)"
    cmd = [tool, f"@{server}", "-p", str(port), "+time=3", "+tries=1", *args]
    if source:
        cmd[2:2] = ["-b", source]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout


def start_dnsmasq_upstream(tmp: Path) -> Iterator[int]:
    """A dnsmasq on loopback answering example.test names: the upstream Kiln forwards to."""
    tool = shutil.which("dnsmasq")
    assert tool, "dnsmasq is not installed"
    port = free_port()
    txt = ",".join(f"chunk{i:02d}-" + "x" * 40 for i in range(30))
    proc = subprocess.Popen(
        [
            tool,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--address=/upstream.example.test/192.0.2.7",
            f"--txt-record=big.example.test,{txt}",
            f"--log-facility={tmp / 'dnsmasq.log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while "192.0.2.7" not in dig(port, "upstream.example.test", "+short"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
