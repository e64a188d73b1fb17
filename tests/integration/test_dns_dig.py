"""Kiln's DNS server queried with dig: every record type, negative answers, REFUSED, forwarding to a
dnsmasq upstream, TCP and truncation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.db import Database, create_database
from tests.integration.dns_fixtures import RunningDns, dig, run_dns, seed_zone, start_dnsmasq_upstream

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from start_dnsmasq_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def zone_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = create_database(f"sqlite:///{tmp_path_factory.mktemp('dnsdb') / 'kiln.db'}")
    seed_zone(db)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def dns(zone_db: Database, upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDns]:
    tmp = tmp_path_factory.mktemp("dns")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_CONFIG", str(tmp / "absent.toml"))
        settings = Settings(
            state_dir=tmp,
            database_url="sqlite://",
            admin_domain="kiln.lab",
            advertise_address="10.9.0.1",
            dns_bind="127.0.0.1",
            dns_port=0,
            dns_upstreams=[f"127.0.0.1:{upstream}"],
            dns_allow_recursion_from=["127.0.0.1/32"],
        )
    yield from run_dns(settings, zone_db)


def _status(out: str) -> str:
    match = re.search(r"status: (\w+)", out)
    assert match, out
    return match.group(1)


def _flags(out: str) -> set[str]:
    match = re.search(r";; flags: ([a-z ]+);", out)
    assert match, out
    return set(match.group(1).split())


def test_a_record_of_a_node_is_authoritative(dns: RunningDns) -> None:
    out = dig(dns.port, "n1.kiln.lab", "A")
    assert _status(out) == "NOERROR"
    assert "aa" in _flags(out)
    assert re.search(r"^n1\.kiln\.lab\.\s+\d+\s+IN\s+A\s+10\.9\.0\.11$", out, re.M), out


def test_bmc_has_its_own_name(dns: RunningDns) -> None:
    assert dig(dns.port, "n1-bmc.kiln.lab", "+short").split() == ["10.10.0.11"]
    assert dig(dns.port, "n3-bmc.rack2.kiln.lab", "+short").split() == ["10.10.0.99"]


def test_aaaa_record(dns: RunningDns) -> None:
    assert dig(dns.port, "n2.kiln.lab", "AAAA", "+short").split() == ["fd00:9::12"]


@pytest.mark.parametrize(
    ("address", "name"),
    [("10.9.0.11", "n1.kiln.lab."), ("10.10.0.11", "n1-bmc.kiln.lab."), ("fd00:9::12", "n2.kiln.lab.")],
)
def test_ptr_records_point_back_at_the_names(dns: RunningDns, address: str, name: str) -> None:
    assert dig(dns.port, "-x", address, "+short").split() == [name]


def test_soa_and_ns_at_the_apex(dns: RunningDns) -> None:
    soa = dig(dns.port, "kiln.lab", "SOA", "+short").split()
    assert soa[:2] == ["ns.kiln.lab.", "hostmaster.kiln.lab."]
    assert dig(dns.port, "kiln.lab", "NS", "+short").split() == ["ns.kiln.lab."]
    assert dig(dns.port, "ns.kiln.lab", "+short").split() == ["10.9.0.1"]
    assert dig(dns.port, "0.9.10.in-addr.arpa", "SOA", "+short").split()[0] == "ns.kiln.lab."


def test_unknown_name_is_nxdomain_with_the_soa(dns: RunningDns) -> None:
    out = dig(dns.port, "nobody.kiln.lab")
    assert _status(out) == "NXDOMAIN"
    assert re.search(r"^kiln\.lab\.\s+\d+\s+IN\s+SOA\s+ns\.kiln\.lab\.", out, re.M), out
    assert _status(dig(dns.port, "-x", "10.9.0.250")) == "NXDOMAIN"


def test_known_name_without_the_type_is_nodata(dns: RunningDns) -> None:
    out = dig(dns.port, "n1.kiln.lab", "AAAA")
    assert _status(out) == "NOERROR"
    assert "ANSWER: 0" in out and "AUTHORITY: 1" in out
    assert _status(dig(dns.port, "rack2.kiln.lab")) == "NOERROR"  # empty non-terminal


def test_answer_echoes_the_question_spelling(dns: RunningDns) -> None:
    out = dig(dns.port, "N1.KiLn.LaB", "A")
    assert re.search(r"^N1\.KiLn\.LaB\.\s+\d+\s+IN\s+A\s+10\.9\.0\.11$", out, re.M), out


def test_lease_and_reservation_hostnames_resolve_but_cannot_take_a_node_name(dns: RunningDns) -> None:
    assert dig(dns.port, "laptop.kiln.lab", "+short").split() == ["10.9.0.60"]
    assert dig(dns.port, "printer.kiln.lab", "+short").split() == ["10.9.0.50"]
    assert dig(dns.port, "n1.kiln.lab", "+short").split() == ["10.9.0.11"]
    # a discovered node's lease (no hostname sent) is named after the node that owns the MAC
    assert dig(dns.port, "disc.kiln.lab", "+short").split() == ["10.9.0.62"]


def test_other_names_are_forwarded_to_the_upstream(dns: RunningDns) -> None:
    out = dig(dns.port, "upstream.example.test")
    assert _status(out) == "NOERROR"
    assert "ra" in _flags(out)  # recursion available to this client; the answer is the upstream's own
    assert dig(dns.port, "upstream.example.test", "+short").split() == ["192.0.2.7"]


def test_forwarding_works_over_tcp(dns: RunningDns) -> None:
    out = dig(dns.port, "big.example.test", "TXT", "+tcp")
    assert _status(out) == "NOERROR"
    assert out.count("chunk") == 30


def test_recursion_from_outside_the_served_networks_is_refused(dns: RunningDns) -> None:
    # 127.0.0.2 is on loopback but outside dns_allow_recursion_from (127.0.0.1/32) and every network
    out = dig(dns.port, "upstream.example.test", source="127.0.0.2")
    assert _status(out) == "REFUSED"
    # the admin zone still answers anyone: Kiln is authoritative for it
    assert dig(dns.port, "n1.kiln.lab", "+short", source="127.0.0.2").split() == ["10.9.0.11"]


def test_tcp_queries_are_answered(dns: RunningDns) -> None:
    out = dig(dns.port, "n1.kiln.lab", "+tcp")
    assert _status(out) == "NOERROR"
    assert "10.9.0.11" in out
    out = dig(dns.port, "n1.kiln.lab", "+tcp", "+keepopen", "n2.kiln.lab")
    assert "10.9.0.11" in out and "10.9.0.12" in out


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(dns: RunningDns) -> None:
    truncated = dig(dns.port, "big.kiln.lab", "+noedns", "+ignore")
    assert "tc" in _flags(truncated)
    assert "ANSWER: 0" in truncated
    # dig retries over TCP by itself when it sees TC
    full = dig(dns.port, "big.kiln.lab", "+noedns", "+short").split()
    assert sorted(full) == sorted(f"10.9.0.{100 + i}" for i in range(40))
    # with EDNS (1232 bytes) the 40 records fit and no retry is needed
    edns = dig(dns.port, "big.kiln.lab", "+bufsize=1232", "+ignore")
    assert "tc" not in _flags(edns) and "ANSWER: 40" in edns


def test_upstream_failure_becomes_servfail(
    zone_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.dns_fixtures import free_port

    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(
        state_dir=tmp_path,
        dns_bind="127.0.0.1",
        dns_port=0,
        dns_upstreams=[f"127.0.0.1:{free_port()}"],  # nobody listens there
        dns_allow_recursion_from=["127.0.0.0/8"],
    )
    for running in run_dns(settings, zone_db):
        out = dig(running.port, "upstream.example.test")
        assert _status(out) == "SERVFAIL"


def test_wildcard_bind_answers_from_the_address_that_was_asked(
    zone_db: Database, upstream: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dig sends from 127.0.0.1 to 127.0.0.2; routing alone would answer from 127.0.0.1, and dig drops
    # an answer from an unexpected source. Both the fast path and a forwarded answer must come back
    # from 127.0.0.2.
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(
        state_dir=tmp_path,
        dns_bind="0.0.0.0",
        dns_port=0,
        dns_upstreams=[f"127.0.0.1:{upstream}"],
        dns_allow_recursion_from=["127.0.0.0/8"],
    )
    for running in run_dns(settings, zone_db):
        for _ in range(2):  # the second answer comes from the fast path
            assert dig(running.port, "n1.kiln.lab", "+short", server="127.0.0.2").split() == ["10.9.0.11"]
        assert dig(running.port, "upstream.example.test", "+short", server="127.0.0.2").split() == [
            "192.0.2.7"
        ]
        assert "10.9.0.11" in dig(running.port, "n1.kiln.lab", "+short", "+tcp", server="127.0.0.2")


def test_ipv6_bind_answers_over_udp_and_tcp(
    zone_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings(state_dir=tmp_path, dns_bind="::1", dns_port=0)
    for running in run_dns(settings, zone_db):
        assert dig(running.port, "n2.kiln.lab", "AAAA", "+short", server="::1").split() == ["fd00:9::12"]
        assert dig(running.port, "n1.kiln.lab", "+short", "+tcp", server="::1").split() == ["10.9.0.11"]
        # ::1 is outside every served network and the allow list
        assert _status(dig(running.port, "upstream.example.test", server="::1")) == "REFUSED"
