from __future__ import annotations

import ipaddress
import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from appliance import ipam
from appliance.db import Database
from appliance.errors import InvalidInput, RangeExhausted
from appliance.models import Allocation, Event, Network, Node


def _network(db: Database, first: str = "10.9.0.10", last: str = "10.9.0.250") -> int:
    with db.session() as s:
        net = Network(name="admin", cidr="10.9.0.0/24", gateway="10.9.0.1", dns_servers=["10.9.0.1"])
        ipam.validate_network(net)
        s.add(net)
        s.flush()
        rng = ipam.make_range(s, net, "hosts", "host", first, last)
        s.flush()
        return rng.id


def _allocate_one(url: str, range_id: int) -> str:
    db = Database(url)
    try:
        with db.session() as s:
            return ipam.allocate(s, range_id).address
    finally:
        db.dispose()


def test_allocation_gives_lowest_free_address_and_records_event(db: Database) -> None:
    range_id = _network(db)
    with db.session() as s:
        node = Node(name="n1")
        s.add(node)
        s.flush()
        a = ipam.allocate(s, range_id, node_id=node.id)
        b = ipam.allocate(s, range_id)
    assert (a.address, b.address) == ("10.9.0.10", "10.9.0.11")
    with db.session() as s:
        actions = s.scalars(select(Event.action)).all()
    assert actions.count("allocation.create") == 2


def test_range_outside_network_or_overlapping_is_refused(db: Database) -> None:
    _network(db)
    with db.session() as s:
        net = s.scalar(select(Network))
        assert net is not None
        with pytest.raises(InvalidInput) as outside:
            ipam.make_range(s, net, "x", "host", "10.9.1.1", "10.9.1.5")
        assert outside.value.field == "first"
        with pytest.raises(InvalidInput) as overlap:
            ipam.make_range(s, net, "y", "bmc", "10.9.0.200", "10.9.0.254")
        assert "overlaps" in overlap.value.message


def test_exhausted_range_gives_clear_error(db: Database) -> None:
    range_id = _network(db, "10.9.0.10", "10.9.0.12")
    with db.session() as s:
        for _ in range(3):
            ipam.allocate(s, range_id)
    with db.session() as s, pytest.raises(RangeExhausted, match=r"no free address"):
        ipam.allocate(s, range_id)


def test_200_concurrent_thread_allocations_are_distinct(db: Database) -> None:
    range_id = _network(db, "10.9.0.10", "10.9.0.250")
    with ThreadPoolExecutor(max_workers=16) as pool:
        addresses = list(pool.map(lambda _: _allocate_one(db.url, range_id), range(200)))
    assert len(set(addresses)) == 200
    ints = [int(ipaddress.ip_address(a)) for a in addresses]
    assert min(ints) >= int(ipaddress.ip_address("10.9.0.10"))
    assert max(ints) <= int(ipaddress.ip_address("10.9.0.250"))
    with db.session() as s:
        assert len(s.scalars(select(Allocation)).all()) == 200


def test_200_concurrent_process_allocations_are_distinct(db: Database) -> None:
    range_id = _network(db, "10.9.0.10", "10.9.0.250")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        addresses = pool.starmap(_allocate_one, [(db.url, range_id)] * 200)
    assert len(set(addresses)) == 200
    with db.session() as s:
        stored = s.scalars(select(Allocation.address)).all()
    assert sorted(stored) == sorted(addresses)
