"""The zone follows the database within a second, and no packet can crash the responder."""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from dnslib import EDNS0, DNSRecord
from prometheus_client import REGISTRY

from appliance import ipam
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Node
from services.dns import server as dns_server
from tests.integration.dns_fixtures import RunningDns, Seeded, dig, free_port, run_dns, seed_zone

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def seeded(db: Database) -> Seeded:
    return seed_zone(db)


@pytest.fixture
def dns(settings: Settings, db: Database, seeded: Seeded) -> Iterator[RunningDns]:
    settings = settings.model_copy(update={"dns_bind": "127.0.0.1", "dns_port": 0})
    yield from run_dns(settings, db)


@pytest.fixture
def sqlite_dns(settings: Settings, sqlite_db: Database) -> Iterator[RunningDns]:
    seed_zone(sqlite_db)
    settings = settings.model_copy(update={"dns_bind": "127.0.0.1", "dns_port": 0})
    yield from run_dns(settings, sqlite_db)


def _ask(port: int, name: str, qtype: str = "A") -> DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(DNSRecord.question(name, qtype).pack(), ("127.0.0.1", port))
        return DNSRecord.parse(sock.recv(4096))


def _wait_until(port: int, name: str, qtype: str, want: list[str], since: float) -> float:
    while True:
        reply = _ask(port, name, qtype)
        if sorted(str(rr.rdata) for rr in reply.rr) == sorted(want):
            return time.monotonic() - since
        assert time.monotonic() - since < 3, f"{name} still answers {reply.rr}"
        time.sleep(0.01)


def test_new_allocation_and_release_are_visible_within_one_second(
    dns: RunningDns, db: Database, seeded: Seeded
) -> None:
    # asked before it exists: the NXDOMAIN lands in the fast-path cache and must be dropped
    assert _ask(dns.port, "fresh.kiln.lab").header.rcode == 3
    assert _ask(dns.port, "fresh.kiln.lab").header.rcode == 3
    started = time.monotonic()
    with db.session() as s:
        node = Node(name="fresh")
        s.add(node)
        s.flush()
        alloc = ipam.allocate(s, seeded.host_range, node_id=node.id, address="10.9.0.77")
        alloc_id = alloc.id
    assert _wait_until(dns.port, "fresh.kiln.lab", "A", ["10.9.0.77"], started) < 1.0
    assert _wait_until(dns.port, "77.0.9.10.in-addr.arpa", "PTR", ["fresh.kiln.lab."], started) < 1.0

    started = time.monotonic()
    with db.session() as s:
        ipam.release(s, alloc_id)
    assert _wait_until(dns.port, "fresh.kiln.lab", "A", [], started) < 1.0


def test_changed_address_replaces_the_cached_answer(dns: RunningDns, db: Database, seeded: Seeded) -> None:
    for _ in range(3):  # warm the fast path
        assert [str(rr.rdata) for rr in _ask(dns.port, "n2.kiln.lab").rr] == ["10.9.0.12"]
    started = time.monotonic()
    with db.session() as s:
        ipam.allocate(s, seeded.host_range, node_id=seeded.node_ids["n2"], address="10.9.0.13")
    assert _wait_until(dns.port, "n2.kiln.lab", "A", ["10.9.0.12", "10.9.0.13"], started) < 1.0
    # an unrelated name kept its cached answer and is still right
    assert [str(rr.rdata) for rr in _ask(dns.port, "n1.kiln.lab").rr] == ["10.9.0.11"]


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _mutations(rng: random.Random, count: int) -> Iterator[bytes]:
    bases = [
        DNSRecord.question("n1.kiln.lab").pack(),
        DNSRecord.question("example.test", "TXT").pack(),
        DNSRecord.question("big.kiln.lab", "ANY").pack(),
    ]
    q = DNSRecord.question("n2.kiln.lab", "AAAA")
    q.add_ar(EDNS0(udp_len=4096))
    bases.append(q.pack())
    for i in range(count):
        if i % 4 == 0:
            yield rng.randbytes(rng.randrange(0, 120))
            continue
        raw = bytearray(rng.choice(bases))
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        yield bytes(raw[: rng.randrange(len(raw) + 1)])


def test_fuzzed_queries_never_crash_the_responder(sqlite_dns: RunningDns) -> None:
    dns = sqlite_dns
    errors_before = _counter("kiln_dns_internal_errors_total")
    malformed_before = _counter("kiln_dns_malformed_packets_total")
    rng = random.Random(1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n, raw in enumerate(_mutations(rng, 20_000)):
            sock.sendto(raw, ("127.0.0.1", dns.port))
            if n % 200 == 199:
                # drain answers and keep the offered load below what the socket buffer holds
                time.sleep(0.002)
                try:
                    while True:
                        sock.recv(65535)
                except BlockingIOError:
                    pass
    # TCP: garbage, a length prefix longer than what follows, then a clean close
    for payload in (os.urandom(3000), struct.pack("!H", 500) + os.urandom(10), b"\x00"):
        with socket.create_connection(("127.0.0.1", dns.port), timeout=2) as tcp:
            tcp.sendall(payload)
    deadline = time.monotonic() + 5
    while "10.9.0.11" not in dig(dns.port, "n1.kiln.lab", "+short"):
        assert time.monotonic() < deadline, "the responder stopped answering"
    assert _counter("kiln_dns_internal_errors_total") == errors_before
    assert _counter("kiln_dns_malformed_packets_total") - malformed_before > 5000
    assert "10.9.0.11" in dig(dns.port, "n1.kiln.lab", "+tcp", "+short")


def test_serve_entry_point_answers_until_stopped(settings: Settings, sqlite_db: Database) -> None:
    seed_zone(sqlite_db)
    port = free_port()
    settings = settings.model_copy(update={"dns_bind": "127.0.0.1", "dns_port": port})
    stop = threading.Event()
    thread = threading.Thread(target=dns_server.serve, args=(settings, sqlite_db, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "10.9.0.11" not in dig(port, "n1.kiln.lab", "+short"):
            assert time.monotonic() < deadline, "serve() did not answer"
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
