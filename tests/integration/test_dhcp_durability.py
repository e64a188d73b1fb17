"""Leases are durable: kill -9 the server in the middle of a perfdhcp run, restart it, and every ACK
that left the server is in the database, with no address given to two clients; on PostgreSQL too."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.db import create_database
from appliance.models import Lease
from services.dhcp.packet import ACK, DISCOVER, REQUEST, MalformedPacket, parse
from tests.integration.dhcp_lab import KilnDhcp, client_socket, collect, mac_for, request_packet, seed_network
from tests.netns import Namespace, veth
from tests.pgserver import PostgresServer

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("dhcp")]


class AckSniffer:
    """Every DHCPACK that reaches the client namespace, as (mac, address), from a packet socket."""

    def __init__(self, ns: Namespace, ifname: str) -> None:
        self.sock = ns.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind((ifname, 0x0800))
        self.sock.settimeout(0.2)
        self.acks: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING or data[9] != 17:
                continue
            header = (data[0] & 0x0F) * 4
            if int.from_bytes(data[header : header + 2], "big") != 67:
                continue
            try:
                packet = parse(data[header + 8 :])
            except MalformedPacket:
                continue
            if packet.op == 2 and packet.message_type == ACK:
                self.acks.append((packet.mac, packet.yiaddr))

    def stop(self) -> list[tuple[str, int]]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return list(self.acks)


def test_kill_9_during_perfdhcp_loses_no_acked_lease_and_gives_no_address_twice(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = Namespace.create("kdks")
    request.addfinalizer(server.delete)
    client = Namespace.create("kdkc")
    request.addfinalizer(client.delete)
    veth(server, "eth0", client, "eth0")
    server.address("eth0", "10.50.0.1/16")
    client.address("eth0", "10.50.0.2/16")
    db = create_database(f"sqlite:///{tmp_path / 'kiln.db'}")
    request.addfinalizer(db.dispose)
    seed_network(db, "admin", "10.50.0.0/16", ("10.50.1.0", "10.50.200.0"), interface="eth0")
    kiln = KilnDhcp(server, tmp_path, db.url, ["eth0"], env={"KILN_ADVERTISE_ADDRESS": "10.50.0.1"}).start()
    request.addfinalizer(kiln.stop)
    sniffer = AckSniffer(client, "eth0")
    # many distinct clients, some of them coming back (-R): the kill lands mid-run
    perfdhcp = ["perfdhcp", "-4", "-l", "eth0", "-r", "1500", "-R", "5000"]
    perf = client.popen([*perfdhcp, "-p", "6"], stdout=(tmp_path / "perfdhcp.log").open("w"))
    request.addfinalizer(perf.kill)
    deadline = time.monotonic() + 4
    while len(sniffer.acks) < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    kiln.kill()
    # ACKs already on the wire still arrive: wait until the count settles, then every one of them must
    # be in the database before anything restarts (a restarted server could hand a lost address to
    # the same client again and hide the loss)
    settled = -1
    while settled != len(sniffer.acks):
        settled = len(sniffer.acks)
        time.sleep(0.3)
    before = settled
    assert before >= 200
    with db.read_session() as s:
        committed = {addr: mac for mac, addr in s.execute(select(Lease.mac, Lease.address_int))}
    lost = [(mac, addr) for mac, addr in sniffer.acks[:before] if committed.get(addr) != mac]
    assert not lost, f"{len(lost)} ACKed leases were not committed when the server died, e.g. {lost[:3]}"
    perf.wait(timeout=60)
    # restarted, the server reloads its leases; the same clients (and new ones) come back
    kiln.start()
    client.run([*perfdhcp, "-p", "2", "-W", "1000000"], check=False, timeout=60)
    acks = sniffer.stop()
    assert len(acks) > before + 200, "the restarted server answered too little"
    with db.read_session() as s:
        rows = {addr: mac for mac, addr in s.execute(select(Lease.mac, Lease.address_int))}
    missing = [(mac, addr) for mac, addr in acks if rows.get(addr) != mac]
    assert not missing, f"{len(missing)} ACKed leases are not in the database, e.g. {missing[:3]}"
    owners: dict[int, set[str]] = {}
    for mac, addr in acks:
        owners.setdefault(addr, set()).add(mac)
    assert all(len(macs) == 1 for macs in owners.values()), "an address was ACKed to two clients"


def test_leases_land_in_postgresql_when_kiln_runs_on_it(
    tmp_path: Path, request: pytest.FixtureRequest, postgres: PostgresServer
) -> None:
    server = Namespace.create("kdps")
    request.addfinalizer(server.delete)
    client = Namespace.create("kdpc")
    request.addfinalizer(client.delete)
    veth(server, "eth0", client, "eth0")
    server.address("eth0", "10.50.0.1/24")
    client.address("eth0", "10.50.0.250/24")
    url = postgres.create_database(f"kiln_dhcp_{os.getpid()}_{time.monotonic_ns()}")
    db = create_database(url)
    request.addfinalizer(db.dispose)
    seed_network(db, "admin", "10.50.0.0/24", ("10.50.0.100", "10.50.0.199"), interface="eth0")
    kiln = KilnDhcp(server, tmp_path, url, ["eth0"]).start()
    request.addfinalizer(kiln.stop)
    sock = client_socket(client, "eth0")
    clients = 40
    for n in range(clients):
        sock.sendto(request_packet(DISCOVER, mac_for(n), n), ("255.255.255.255", 67))
    offers = {p.chaddr: p.yiaddr for p, _src in collect(sock, clients, timeout=10)}
    assert len(offers) == clients
    for n, (mac, address) in enumerate(offers.items()):
        opts = {54: bytes((10, 50, 0, 1)), 50: struct.pack("!I", address)}
        sock.sendto(request_packet(REQUEST, mac, 100 + n, opts), ("255.255.255.255", 67))
    acks = collect(sock, clients, timeout=10)
    sock.close()
    assert sorted(p.message_type for p, _src in acks) == [ACK] * clients
    with db.read_session() as s:
        rows = {addr: mac for mac, addr in s.execute(select(Lease.mac, Lease.address_int))}
    assert rows == {address: mac.hex(":") for mac, address in offers.items()}
