"""Kiln's DHCP server against real clients (dhclient, nmap, perfdhcp) and raw DISCOVER storms.

Each test gets a server namespace and a client namespace joined by a veth pair; the server is the real
`kiln serve --only dhcp` process.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.db import Database, create_database
from appliance.models import Lease, Node, NodeMac, Reservation
from services.dhcp.packet import ACK, DISCOVER, NAK, OFFER, REQUEST
from tests.integration.dhcp_lab import (
    KILN,
    KilnDhcp,
    client_socket,
    collect,
    mac_for,
    request_packet,
    seed_network,
)
from tests.netns import Namespace, veth

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp")]

SERVER = "10.50.0.1"


@dataclass
class Lab:
    server: Namespace
    client: Namespace
    db: Database
    db_url: str
    workdir: Path
    start: Callable[..., KilnDhcp]
    dhclient: subprocess.Popen[bytes] | None = None


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    server = Namespace.create("kds")
    request.addfinalizer(server.delete)
    client = Namespace.create("kdc")
    request.addfinalizer(client.delete)
    veth(server, "eth0", client, "eth0")
    server.address("eth0", f"{SERVER}/24")
    db_url = f"sqlite:///{tmp_path / 'kiln.db'}"
    db = create_database(db_url)
    seed_network(
        db,
        "admin",
        "10.50.0.0/24",
        ("10.50.0.100", "10.50.0.199"),
        interface="eth0",
        gateway="10.50.0.254",
        dns=[SERVER],
        domain="rack1.kiln.lab",
        ntp=[SERVER],
    )
    started: list[KilnDhcp] = []

    def start(**env: str) -> KilnDhcp:
        env.setdefault("KILN_ADVERTISE_ADDRESS", SERVER)
        kiln = KilnDhcp(server, tmp_path, db_url, ["eth0"], env=env).start()
        started.append(kiln)
        return kiln

    yield Lab(server, client, db, db_url, tmp_path, start)
    for kiln in started:
        kiln.stop()
    db.dispose()


def proc_kill(lab: Lab) -> None:
    if lab.dhclient is not None:
        lab.dhclient.kill()
        lab.dhclient.wait()


def _dhclient(lab: Lab, extra_conf: str = "", lease_seconds_wait: float = 20.0) -> dict[str, str]:
    """Run dhclient until it is BOUND; return the variables its script received."""
    conf = lab.workdir / "dhclient.conf"
    conf.write_text(
        "option pxe-arch code 93 = unsigned integer 16;\n"
        "option ipxe-encap code 175 = string;\n"
        "request subnet-mask, broadcast-address, routers, domain-name-servers, host-name, domain-name,\n"
        "  domain-search, ntp-servers, dhcp-lease-time, tftp-server-name, bootfile-name;\n" + extra_conf
    )
    out = lab.workdir / "dhclient.env"
    script = lab.workdir / "dhclient-script"
    # the script configures the address as dhclient-script would, so renewals can be unicast
    script.write_text(
        "#!/bin/sh\n"
        'case "$reason" in BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/24" dev "$interface";; esac\n'
        f'{{ echo "reason=$reason"; env | grep "^new_"; echo "end=$reason"; echo; }} >> {out}\n'
    )
    script.chmod(0o755)
    proc = lab.client.popen(
        ["dhclient", "-d", "-v", "-cf", str(conf), "-lf", str(lab.workdir / "dhclient.leases"),
         "-pf", str(lab.workdir / "dhclient.pid"), "-sf", str(script), "eth0"],
        stdout=(lab.workdir / "dhclient.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    lab.dhclient = proc
    deadline = time.monotonic() + lease_seconds_wait
    while time.monotonic() < deadline:
        if out.exists() and "end=BOUND" in out.read_text():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("dhclient not bound:\n" + (lab.workdir / "dhclient.log").read_text())
    block = out.read_text().split("reason=BOUND", 1)[1].split("\n\n", 1)[0]
    return dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)


def test_dhclient_gets_lease_and_boot_options(lab: Lab) -> None:
    lab.start()
    env = _dhclient(
        lab,
        'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\nsend pxe-arch 0;\n',
    )
    try:
        address = env["new_ip_address"]
        assert address.startswith("10.50.0.1")
        assert env["new_subnet_mask"] == "255.255.255.0"
        assert env["new_routers"] == "10.50.0.254"
        assert env["new_domain_name_servers"] == SERVER
        assert env["new_domain_name"] == "rack1.kiln.lab"
        assert env["new_domain_search"] == "rack1.kiln.lab."
        assert env["new_ntp_servers"] == SERVER
        assert env["new_broadcast_address"] == "10.50.0.255"
        assert env["new_dhcp_lease_time"] == "3600"
        assert env["new_dhcp_server_identifier"] == SERVER
        assert env["new_filename"] == "undionly.kpxe"
        assert env["new_bootfile_name"] == "undionly.kpxe"
        assert env["new_tftp_server_name"] == SERVER
        assert env["new_next_server"] == SERVER
        with lab.db.read_session() as s:
            lease = s.scalar(select(Lease).where(Lease.address == address))
        assert lease is not None and lease.state == "active" and lease.client_arch == 0
        assert lease.vendor_class == "PXEClient:Arch:00000:UNDI:002001"
        listed = subprocess.run(
            [KILN, "dhcp", "leases", "--json"],
            env={**os.environ, "KILN_CONFIG": str(lab.workdir / "absent.toml"), "KILN_DATABASE_URL": lab.db_url},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert [(r["address"], r["network"], r["arch"]) for r in json.loads(listed.stdout)] == [
            (address, "admin", 0)
        ]
    finally:
        proc_kill(lab)


def test_ipxe_client_gets_script_url_and_no_pxedhcp(lab: Lab) -> None:
    lab.start()
    env = _dhclient(lab, 'send user-class "iPXE";\nsend pxe-arch 7;\n')
    try:
        # dhclient escapes the "$" it hands to its script
        assert (
            env["new_bootfile_name"].replace("\\$", "$") == "http://10.50.0.1:8080/boot/ipxe?mac=${net0/mac}"
        )
        assert "new_tftp_server_name" not in env
        # option 175, sub-option 176 (no-pxedhcp) = 1
        assert [int(b, 16) for b in env["new_ipxe_encap"].split(":")] == [176, 1, 1]
    finally:
        proc_kill(lab)


def test_dhclient_renews_and_releases(lab: Lab) -> None:
    lab.start(KILN_DHCP_LEASE_SECONDS="4")
    env = _dhclient(lab)
    out = lab.workdir / "dhclient.env"
    deadline = time.monotonic() + 15
    while "end=RENEW" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc_kill(lab)
    assert "reason=RENEW" in out.read_text(), out.read_text()
    renewed = out.read_text().split("reason=RENEW", 1)[1]
    assert f"new_ip_address={env['new_ip_address']}" in renewed
    lab.client.run(
        ["dhclient", "-r", "-cf", str(lab.workdir / "dhclient.conf"), "-lf", str(lab.workdir / "dhclient.leases"),
         "-pf", str(lab.workdir / "dhclient.pid"), "-sf", "/bin/true", "eth0"],
        timeout=20,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        with lab.db.read_session() as s:
            state = s.scalar(select(Lease.state).where(Lease.address == env["new_ip_address"]))
        if state == "released":
            break
        time.sleep(0.1)
    assert state == "released"


def test_nmap_broadcast_dhcp_discover_sees_offer(lab: Lab) -> None:
    lab.start()
    lab.client.address("eth0", "10.50.0.250/24")  # nmap's broadcast scripts need an addressed interface
    out = lab.client.run(
        ["nmap", "--script", "broadcast-dhcp-discover", "--script-args", "broadcast-dhcp-discover.timeout=3",
         "-e", "eth0"],
        timeout=60,
    ).stdout  # fmt: skip
    assert "Response 1 of 1" in out, out
    assert re.search(r"IP Offered: 10\.50\.0\.1\d\d", out), out
    assert f"Server Identifier: {SERVER}" in out
    assert "Subnet Mask: 255.255.255.0" in out
    assert "Router: 10.50.0.254" in out
    assert "Domain Name: rack1.kiln.lab" in out


def test_perfdhcp_dora_without_drops(lab: Lab) -> None:
    lab.start()
    # perfdhcp acts as a relay: it sends from port 67 with giaddr set to its own address
    lab.client.address("eth0", "10.50.0.250/24")
    out = lab.client.run(
        ["perfdhcp", "-4", "-l", "eth0", "-r", "200", "-p", "2", "-R", "80", "-u", "-W", "1000000"],
        timeout=60,
        check=False,
    ).stdout
    sent = [int(n) for n in re.findall(r"sent packets: (\d+)", out)]
    received = [int(n) for n in re.findall(r"received packets: (\d+)", out)]
    assert len(sent) == 2 and sent[0] > 300, out
    assert received[0] >= sent[0] * 0.99 and received[1] >= sent[1] * 0.99, out
    with lab.db.read_session() as s:
        rows = s.execute(select(Lease.mac, Lease.address)).all()
    assert 0 < len(rows) <= 80
    assert len({a for _m, a in rows}) == len(rows) == len({m for m, _a in rows})


def test_malformed_packets_are_counted_and_dropped_and_service_goes_on(lab: Lab) -> None:
    kiln = lab.start()
    lab.client.address("eth0", "10.50.0.250/24")
    sock = client_socket(lab.client, "eth0")
    good = request_packet(DISCOVER, mac_for(1), 77)
    bad = [
        b"",
        b"\x01" * 100,
        good[:236] + b"nope" + good[240:],
        good[:241] + b"\xff" + good[242:],
    ]
    bad.append(good[:240] + bytes((53, 1, 1)) + bytes((55, 200)) + b"x" * 20)  # option overruns the packet
    bad.append(good[:240] + bytes((53, 1, 1)))  # no End option
    # larger than any DHCP message, on jumbo frames so it arrives whole
    for ns in (lab.server, lab.client):
        ns.run(["ip", "link", "set", "eth0", "mtu", "9500"])
    bad.append(good + bytes(9000))
    for data in bad:
        sock.sendto(data, ("255.255.255.255", 67))
    sock.sendto(good, ("255.255.255.255", 67))
    replies = collect(sock, 1, timeout=5)
    assert [p.xid for p, _src in replies] == [77]
    deadline = time.monotonic() + 5
    counted = ""
    while time.monotonic() < deadline:
        found = re.search(r'kiln_errors_total\{kind="malformed",service="dhcp"\} (\d+)', kiln.metrics())
        counted = found.group(1) if found else ""
        if counted == str(len(bad)):
            break
        time.sleep(0.1)
    assert counted == str(len(bad))
    sock.close()


def test_simultaneous_discovers_get_distinct_offers(lab: Lab) -> None:
    lab.start()
    lab.client.address("eth0", "10.50.0.250/24")
    sock = client_socket(lab.client, "eth0")
    clients = 90
    for n in range(clients):  # all sent before the first OFFER is read
        sock.sendto(request_packet(DISCOVER, mac_for(n), 1000 + n), ("255.255.255.255", 67))
    offers = collect(sock, clients, timeout=10)
    assert len(offers) == clients
    offered = {p.chaddr: p.yiaddr for p, _src in offers if p.message_type == OFFER}
    assert len(offered) == clients and len(set(offered.values())) == clients
    # a second DISCOVER from the same clients gets the same held offers
    for n in range(10):
        sock.sendto(request_packet(DISCOVER, mac_for(n), 5000 + n), ("255.255.255.255", 67))
    assert all(offered[p.chaddr] == p.yiaddr for p, _src in collect(sock, 10, timeout=5))
    # every client takes its offer: all ACKed, all distinct
    server_id = {54: bytes(map(int, SERVER.split(".")))}
    for n, (mac, address) in enumerate(offered.items()):
        sock.sendto(
            request_packet(REQUEST, mac, 2000 + n, {**server_id, 50: struct.pack("!I", address)}),
            ("255.255.255.255", 67),
        )
    acks = collect(sock, clients, timeout=10)
    assert sorted(p.message_type for p, _src in acks) == [ACK] * clients
    assert {p.chaddr: p.yiaddr for p, _src in acks} == offered
    sock.close()


def test_known_node_gets_its_reservation_and_hostname_and_wrong_address_is_naked(lab: Lab) -> None:
    with lab.db.session() as s:
        node = Node(name="node7")
        s.add(node)
        s.flush()
        s.add(NodeMac(mac=mac_for(7).hex(":"), node_id=node.id, primary=True))
        s.add(Reservation(mac=mac_for(7).hex(":"), network_id=1, address="10.50.0.77", node_id=node.id))
    lab.start(KILN_DHCP_DISCOVERY="false")
    lab.client.address("eth0", "10.50.0.250/24")
    sock = client_socket(lab.client, "eth0")
    sock.sendto(request_packet(DISCOVER, mac_for(7), 1), ("255.255.255.255", 67))
    sock.sendto(request_packet(DISCOVER, mac_for(8), 2), ("255.255.255.255", 67))  # unknown: no reply
    replies = collect(sock, 2, timeout=1.5)
    assert len(replies) == 1
    offer = replies[0][0]
    assert offer.yiaddr == 0x0A32004D and offer.options[12] == b"node7"
    sock.sendto(
        request_packet(REQUEST, mac_for(7), 3, {50: struct.pack("!I", 0x0A320063)}), ("255.255.255.255", 67)
    )
    (nak, _src), *_ = collect(sock, 1, timeout=3)
    assert nak.message_type == NAK
    sock.close()
