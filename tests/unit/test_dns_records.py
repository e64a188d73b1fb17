"""The admin zone as built from the database: names, BMC names, PTRs, leases, reverse zones."""

from __future__ import annotations

from appliance import ipam
from appliance.db import Database
from services.dns.records import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_NS,
    TYPE_PTR,
    bmc_name,
    change_marker,
    fqdn,
    load_zone,
    reverse_zone,
)
from tests.integration.dns_fixtures import seed_zone


def test_names_are_made_valid_fqdns_under_the_domain() -> None:
    assert fqdn("N1", "kiln.lab") == "n1.kiln.lab"
    assert fqdn("n1.kiln.lab.", "kiln.lab") == "n1.kiln.lab"
    assert fqdn("n3.rack2", "kiln.lab") == "n3.rack2.kiln.lab"
    assert fqdn("bad name", "kiln.lab") is None
    assert fqdn("-x", "kiln.lab") is None
    assert fqdn("", "kiln.lab") is None
    assert bmc_name("n3.rack2.kiln.lab") == "n3-bmc.rack2.kiln.lab"


def test_reverse_zones_round_to_octet_and_nibble_boundaries() -> None:
    import ipaddress

    assert reverse_zone(ipaddress.ip_network("10.9.0.0/24")) == "0.9.10.in-addr.arpa"
    assert reverse_zone(ipaddress.ip_network("10.9.0.0/20")) == "9.10.in-addr.arpa"
    assert reverse_zone(ipaddress.ip_network("fd00:9::/64")).endswith("9.0.0.0.0.0.d.f.ip6.arpa")


def test_zone_has_nodes_bmcs_reservations_leases_and_ptrs(db: Database) -> None:
    seed_zone(db)
    with db.read_session() as s:
        zone = load_zone(s, "kiln.lab", "10.9.0.1")
    names = zone.names
    assert names["n1.kiln.lab"] == {TYPE_A: ["10.9.0.11"]}  # the lease that claimed "n1" is ignored
    assert names["n1-bmc.kiln.lab"] == {TYPE_A: ["10.10.0.11"]}
    assert names["n2.kiln.lab"] == {TYPE_A: ["10.9.0.12"], TYPE_AAAA: ["fd00:9::12"]}
    assert names["n3-bmc.rack2.kiln.lab"] == {TYPE_A: ["10.10.0.99"]}
    assert names["printer.kiln.lab"] == {TYPE_A: ["10.9.0.50"]}
    assert names["laptop.kiln.lab"] == {TYPE_A: ["10.9.0.60"]}
    assert len(names["big.kiln.lab"][TYPE_A]) == 40
    assert names["11.0.9.10.in-addr.arpa"] == {TYPE_PTR: ["n1.kiln.lab"]}
    assert names["11.0.10.10.in-addr.arpa"] == {TYPE_PTR: ["n1-bmc.kiln.lab"]}
    assert "61.0.9.10.in-addr.arpa" not in names
    assert names["disc.kiln.lab"] == {TYPE_A: ["10.9.0.62"]}  # lease of a node's MAC, no hostname
    assert names["62.0.9.10.in-addr.arpa"] == {TYPE_PTR: ["disc.kiln.lab"]}
    assert names["ns.kiln.lab"] == {TYPE_A: ["10.9.0.1"]}
    assert names["kiln.lab"] == {TYPE_NS: ["ns.kiln.lab"]}
    assert names["rack2.kiln.lab"] == {}  # empty non-terminal: NODATA, not NXDOMAIN
    assert set(zone.reverse_zones) >= {"0.9.10.in-addr.arpa", "0.10.10.in-addr.arpa"}


def test_change_marker_moves_on_allocation_and_release(db: Database) -> None:
    seeded = seed_zone(db)
    with db.read_session() as s:
        before = change_marker(s)
    with db.session() as s:
        alloc = ipam.allocate(s, seeded.host_range, hostname="new-host")
        alloc_id = alloc.id
    with db.read_session() as s:
        after = change_marker(s)
    assert after != before
    with db.session() as s:
        ipam.release(s, alloc_id)
    with db.read_session() as s:
        assert change_marker(s) not in (before, after)
