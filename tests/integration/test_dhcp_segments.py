"""Kiln's DHCP on shared segments: through ISC dhcrelay, as proxyDHCP beside a dnsmasq that owns the
addresses, and watching for a rogue dnsmasq on a segment it serves."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.db import Database, create_database
from appliance.models import Event, Lease
from services.dhcp.packet import ACK, DISCOVER, OFFER, REQUEST, Packet
from tests.integration.dhcp_lab import KilnDhcp, client_socket, collect, mac_for, request_packet, seed_network
from tests.netns import Namespace, bridge, veth

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp")]

PXE_DISCOVER = {93: b"\x00\x00", 60: b"PXEClient:Arch:00000:UNDI:002001", 97: b"\x00" + bytes(range(16))}


@pytest.fixture
def namespaces(request: pytest.FixtureRequest) -> Iterator[dict[str, Namespace]]:
    made: dict[str, Namespace] = {}

    def make(role: str) -> Namespace:
        made[role] = Namespace.create("kd" + role)
        request.addfinalizer(made[role].delete)
        return made[role]

    for role in ("srv", "cli", "mid"):
        make(role)
    yield made


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = create_database(f"sqlite:///{tmp_path / 'kiln.db'}")
    yield database
    database.dispose()


def _kiln(
    ns: Namespace, tmp_path: Path, db: Database, request: pytest.FixtureRequest, **env: str
) -> KilnDhcp:
    kiln = KilnDhcp(ns, tmp_path, db.url, ["eth0"], env=env).start()
    request.addfinalizer(kiln.stop)
    return kiln


def _daemon(
    ns: Namespace, argv: list[str], request: pytest.FixtureRequest, log: Path
) -> subprocess.Popen[bytes]:
    proc = ns.popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    request.addfinalizer(stop)
    return proc


def _segment(ns: dict[str, Namespace]) -> None:
    """srv, cli and a third host ("mid" is the switch) on one bridged segment 10.70.0.0/24."""
    switch = Namespace.create("kdsw")
    ns["switch"] = switch
    ns["oth"] = Namespace.create("kdoth")
    ports = []
    for n, role in enumerate(("srv", "cli", "oth")):
        veth(ns[role], "eth0", switch, f"p{n}")
        ports.append(f"p{n}")
    bridge(switch, "br0", ports)
    ns["srv"].address("eth0", "10.70.0.1/24")
    ns["oth"].address("eth0", "10.70.0.2/24")
    ns["cli"].address("eth0", "10.70.0.250/24")


@pytest.fixture
def segment(namespaces: dict[str, Namespace], request: pytest.FixtureRequest) -> dict[str, Namespace]:
    _segment(namespaces)
    request.addfinalizer(namespaces["switch"].delete)
    request.addfinalizer(namespaces["oth"].delete)
    return namespaces


def _dnsmasq(ns: Namespace, tmp_path: Path, request: pytest.FixtureRequest) -> subprocess.Popen[bytes]:
    return _daemon(
        ns,
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces",
         "--dhcp-range=10.70.0.100,10.70.0.150,1h", "--no-ping", f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
         "--log-dhcp"],
        request, tmp_path / "dnsmasq.log",
    )  # fmt: skip


def test_dhclient_gets_lease_through_isc_dhcrelay(
    namespaces: dict[str, Namespace], db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv, cli, relay = namespaces["srv"], namespaces["cli"], namespaces["mid"]
    veth(cli, "eth0", relay, "down0")
    veth(relay, "up0", srv, "eth0")
    relay.address("down0", "10.60.0.1/24")
    relay.address("up0", "10.61.0.2/24")
    srv.address("eth0", "10.61.0.1/24")
    srv.run(["ip", "route", "add", "10.60.0.0/24", "via", "10.61.0.2"])
    seed_network(db, "remote", "10.60.0.0/24", ("10.60.0.100", "10.60.0.199"), gateway="10.60.0.1")
    seed_network(db, "server", "10.61.0.0/24", None, interface="eth0")
    _kiln(srv, tmp_path, db, request)
    _daemon(
        relay,
        ["dhcrelay", "-4", "-d", "-id", "down0", "-iu", "up0", "10.61.0.1"],
        request,
        tmp_path / "relay.log",
    )
    sock = client_socket(cli, "eth0")
    replies: list[tuple[object, object]] = []
    deadline = time.monotonic() + 15
    while not replies and time.monotonic() < deadline:  # dhcrelay takes a moment to open its sockets
        sock.sendto(request_packet(DISCOVER, mac_for(1), 7), ("255.255.255.255", 67))
        replies = collect(sock, 1, timeout=1)  # type: ignore[assignment]
    assert replies, (tmp_path / "relay.log").read_text()
    sock.close()
    # now the real client, end to end
    script = tmp_path / "script"
    out = tmp_path / "env"
    script.write_text(
        f'#!/bin/sh\n{{ echo "reason=$reason"; env | grep "^new_"; echo "end=$reason"; }} >> {out}\n'
    )
    script.chmod(0o755)
    dhclient = _daemon(
        cli,
        ["dhclient", "-d", "-1", "-cf", "/dev/null", "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"),
         "-sf", str(script), "eth0"],
        request, tmp_path / "dhclient.log",
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (out.exists() and "end=BOUND" in out.read_text()):
        time.sleep(0.05)
    dhclient.terminate()
    text = out.read_text() if out.exists() else (tmp_path / "dhclient.log").read_text()
    assert "reason=BOUND" in text, text
    assert "new_routers=10.60.0.1" in text
    assert "new_dhcp_server_identifier=10.61.0.1" in text
    address = text.split("new_ip_address=", 1)[1].split()[0]
    assert address.startswith("10.60.0.1")
    with db.read_session() as s:
        lease = s.scalar(select(Lease).where(Lease.address == address))
    assert lease is not None and lease.relay == "10.60.0.1"


def test_proxy_dhcp_beside_dnsmasq_gives_boot_info_only(
    segment: dict[str, Namespace], db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed_network(db, "admin", "10.70.0.0/24", None, interface="eth0")
    _dnsmasq(segment["oth"], tmp_path, request)
    kiln = _kiln(
        segment["srv"], tmp_path, db, request, KILN_DHCP_PROXY="true", KILN_ADVERTISE_ADDRESS="10.70.0.1"
    )
    sock = client_socket(segment["cli"], "eth0")
    # a PXE ROM hears both: dnsmasq's address and Kiln's boot information
    replies: dict[str, Packet] = {}
    deadline = time.monotonic() + 15
    xid = 100
    while len(replies) < 2 and time.monotonic() < deadline:
        xid += 1
        sock.sendto(request_packet(DISCOVER, mac_for(2), xid, PXE_DISCOVER), ("255.255.255.255", 67))
        for packet, source in collect(sock, 2, timeout=1):
            if packet.xid == xid:
                replies[source[0] if packet.options.get(54) != b"\x0a\x46\x00\x01" else "kiln"] = packet
    assert set(replies) == {"kiln", "10.70.0.2"}, replies
    proxy, owner = replies["kiln"], replies["10.70.0.2"]
    assert owner.message_type == OFFER and owner.yiaddr != 0
    assert proxy.message_type == OFFER and proxy.yiaddr == 0
    assert proxy.file == b"undionly.kpxe" and proxy.siaddr == 0x0A460001
    assert proxy.options[60] == b"PXEClient" and proxy.options[43] == b"\x06\x01\x08\xff"
    assert proxy.options[97] == PXE_DISCOVER[97]
    # the PXE boot-server request to port 4011 gets the boot file too
    sock.sendto(
        request_packet(REQUEST, mac_for(2), 555, PXE_DISCOVER, ciaddr=0x0A4600FA), ("10.70.0.1", 4011)
    )
    acks = [p for p, _src in collect(sock, 1, timeout=3, xid=555)]
    assert acks and acks[0].message_type == ACK and acks[0].file == b"undionly.kpxe"
    # a client that is not network booting gets nothing from Kiln
    sock.sendto(request_packet(DISCOVER, mac_for(3), 999), ("255.255.255.255", 67))
    plain = [p for p, _src in collect(sock, 2, timeout=1.5, xid=999)]
    assert [p.options[54] for p in plain] == [b"\x0a\x46\x00\x02"]
    sock.close()
    assert 'kiln_requests_total{kind="offer",service="dhcp"}' in kiln.metrics()
    # beside a proxy, the server that owns the addresses is expected, not a rogue
    with db.read_session() as s:
        assert s.scalar(select(Event).where(Event.action == "dhcp.rogue_server")) is None


def test_rogue_dnsmasq_on_served_segment_is_recorded(
    segment: dict[str, Namespace], db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed_network(db, "admin", "10.70.0.0/24", ("10.70.0.160", "10.70.0.199"), interface="eth0")
    _dnsmasq(segment["oth"], tmp_path, request)
    rogue_mac = segment["oth"].run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    time.sleep(0.5)  # dnsmasq has no readiness signal; Kiln's first probe goes out at start
    kiln = _kiln(segment["srv"], tmp_path, db, request)
    events: list[Event] = []
    deadline = time.monotonic() + 15
    while not events and time.monotonic() < deadline:
        with db.read_session() as s:
            events = list(s.scalars(select(Event).where(Event.action == "dhcp.rogue_server")))
        time.sleep(0.1)
    assert events, kiln.log_path.read_text()
    assert events[0].data["server"] == "10.70.0.2"
    assert events[0].data["mac"] == rogue_mac
    assert events[0].data["interface"] == "eth0"
    metrics = kiln.metrics()
    assert (
        f'kiln_dhcp_rogue_replies_total{{interface="eth0",mac="{rogue_mac}",server="10.70.0.2"}}' in metrics
    )


def test_only_configured_interfaces_are_served(
    namespaces: dict[str, Namespace], db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv, served, other = namespaces["srv"], namespaces["cli"], namespaces["mid"]
    veth(srv, "eth0", served, "eth0")
    veth(srv, "eth1", other, "eth0")
    srv.address("eth0", "10.80.0.1/24")
    srv.address("eth1", "10.81.0.1/24")
    served.address("eth0", "10.80.0.250/24")
    other.address("eth0", "10.81.0.250/24")
    seed_network(db, "served", "10.80.0.0/24", ("10.80.0.100", "10.80.0.199"), interface="eth0")
    seed_network(db, "other", "10.81.0.0/24", ("10.81.0.100", "10.81.0.199"), interface="eth1")
    _kiln(srv, tmp_path, db, request)  # KILN_DHCP_INTERFACES=eth0 only
    answered = client_socket(served, "eth0")
    ignored = client_socket(other, "eth0")
    ignored.sendto(request_packet(DISCOVER, mac_for(5), 51), ("255.255.255.255", 67))
    answered.sendto(request_packet(DISCOVER, mac_for(6), 61), ("255.255.255.255", 67))
    assert [p.xid for p, _src in collect(answered, 1, timeout=5)] == [61]
    assert collect(ignored, 1, timeout=1) == []
    answered.close()
    ignored.close()
