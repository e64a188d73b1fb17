"""/networks, their /ranges (nested and flat) and /allocations of addresses."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import ipam, networks, nodes
from appliance.errors import NotFound
from appliance.models import Allocation, Network, Range
from web.api.access import actor
from web.api.endpoint import changes, endpoint, expected_version, read_session, write_session
from web.api.paging import ListQuery, page_of, paginate
from web.api.schemas import (
    AllocationIn,
    AllocationOut,
    AllocationQuery,
    FlatRangeIn,
    NetworkIn,
    NetworkOut,
    NetworkPatch,
    NetworkQuery,
    RangeIn,
    RangeOut,
    RangePatch,
    RangeQuery,
)

bp = Blueprint("networks", __name__)


def _range_out(session: Session, rng: Range) -> RangeOut:
    use = ipam.usage(session, rng)
    return RangeOut(
        id=rng.id,
        network_id=rng.network_id,
        name=rng.name,
        kind=rng.kind,
        first=rng.first,
        last=rng.last,
        size=use.size,
        used=use.used,
        version=rng.version,
    )


# ---- networks


@endpoint(bp, "GET", "/networks", query=NetworkQuery, response=page_of(NetworkOut), summary="List networks")
def networks_get(query: NetworkQuery) -> dict[str, Any]:
    stmt = select(Network)
    if query.name is not None:
        stmt = stmt.where(Network.name == query.name)
    if query.category is not None:
        stmt = stmt.where(Network.category == query.category)
    with read_session() as s:
        return paginate(s, stmt, Network.id, query, NetworkOut.model_validate)


@endpoint(
    bp, "POST", "/networks", body=NetworkIn, response=NetworkOut, status=201, summary="Create a network"
)
def network_post(body: NetworkIn) -> NetworkOut:
    fields = changes(body)
    with write_session() as s:
        network = networks.create_network(s, fields.pop("name"), fields.pop("cidr"), actor=actor(), **fields)
        return NetworkOut.model_validate(network)


@endpoint(bp, "GET", "/networks/<int:network_id>", response=NetworkOut, summary="Show a network")
def network_get(network_id: int) -> NetworkOut:
    with read_session() as s:
        return NetworkOut.model_validate(networks.get_network(s, network_id))


@endpoint(
    bp, "PUT", "/networks/<int:network_id>", body=NetworkIn, response=NetworkOut, summary="Replace a network"
)
def network_put(network_id: int, body: NetworkIn) -> NetworkOut:
    return _update_network(network_id, body)


@endpoint(
    bp,
    "PATCH",
    "/networks/<int:network_id>",
    body=NetworkPatch,
    response=NetworkOut,
    summary="Change a network",
)
def network_patch(network_id: int, body: NetworkPatch) -> NetworkOut:
    return _update_network(network_id, body)


def _update_network(network_id: int, body: NetworkIn | NetworkPatch) -> NetworkOut:
    with write_session() as s:
        network = networks.update_network(
            s, network_id, changes(body), expected_version=expected_version(body), actor=actor()
        )
        return NetworkOut.model_validate(network)


@endpoint(
    bp,
    "DELETE",
    "/networks/<int:network_id>",
    status=204,
    summary="Delete a network, its ranges and allocations",
)
def network_delete(network_id: int) -> None:
    with write_session() as s:
        networks.delete_network(s, network_id, expected_version=expected_version(), actor=actor())


# ---- ranges


@endpoint(
    bp,
    "GET",
    "/networks/<int:network_id>/ranges",
    query=ListQuery,
    response=page_of(RangeOut),
    summary="List a network's ranges",
)
def network_ranges_get(network_id: int, query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        networks.get_network(s, network_id)
        stmt = select(Range).where(Range.network_id == network_id)
        return paginate(s, stmt, Range.id, query, lambda r: _range_out(s, r))


@endpoint(
    bp,
    "POST",
    "/networks/<int:network_id>/ranges",
    body=RangeIn,
    response=RangeOut,
    status=201,
    summary="Add a range to a network",
)
def network_range_post(network_id: int, body: RangeIn) -> RangeOut:
    with write_session() as s:
        rng = networks.create_range(s, network_id, body.name, body.kind, body.first, body.last, actor=actor())
        return _range_out(s, rng)


@endpoint(
    bp, "GET", "/ranges", query=RangeQuery, response=page_of(RangeOut), summary="List ranges of all networks"
)
def ranges_get(query: RangeQuery) -> dict[str, Any]:
    stmt = select(Range)
    if query.network_id is not None:
        stmt = stmt.where(Range.network_id == query.network_id)
    if query.kind is not None:
        stmt = stmt.where(Range.kind == query.kind)
    with read_session() as s:
        return paginate(s, stmt, Range.id, query, lambda r: _range_out(s, r))


@endpoint(bp, "POST", "/ranges", body=FlatRangeIn, response=RangeOut, status=201, summary="Add a range")
def range_post(body: FlatRangeIn) -> RangeOut:
    with write_session() as s:
        rng = networks.create_range(
            s, body.network_id, body.name, body.kind, body.first, body.last, actor=actor()
        )
        return _range_out(s, rng)


@endpoint(bp, "GET", "/ranges/<int:range_id>", response=RangeOut, summary="Show a range with its usage")
def range_get(range_id: int) -> RangeOut:
    with read_session() as s:
        return _range_out(s, networks.get_range(s, range_id))


@endpoint(bp, "PUT", "/ranges/<int:range_id>", body=RangeIn, response=RangeOut, summary="Replace a range")
def range_put(range_id: int, body: RangeIn) -> RangeOut:
    return _update_range(range_id, body)


@endpoint(bp, "PATCH", "/ranges/<int:range_id>", body=RangePatch, response=RangeOut, summary="Change a range")
def range_patch(range_id: int, body: RangePatch) -> RangeOut:
    return _update_range(range_id, body)


def _update_range(range_id: int, body: RangeIn | RangePatch) -> RangeOut:
    with write_session() as s:
        rng = networks.update_range(
            s, range_id, changes(body), expected_version=expected_version(body), actor=actor()
        )
        return _range_out(s, rng)


@endpoint(bp, "DELETE", "/ranges/<int:range_id>", status=204, summary="Delete a range and its allocations")
def range_delete(range_id: int) -> None:
    with write_session() as s:
        networks.delete_range(s, range_id, expected_version=expected_version(), actor=actor())


# ---- allocations


@endpoint(
    bp,
    "GET",
    "/allocations",
    query=AllocationQuery,
    response=page_of(AllocationOut),
    summary="List allocations",
)
def allocations_get(query: AllocationQuery) -> dict[str, Any]:
    stmt = select(Allocation)
    for column, value in (
        (Allocation.network_id, query.network_id),
        (Allocation.range_id, query.range_id),
        (Allocation.node_id, query.node_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    with read_session() as s:
        return paginate(s, stmt, Allocation.id, query, AllocationOut.model_validate)


@endpoint(
    bp,
    "POST",
    "/allocations",
    body=AllocationIn,
    response=AllocationOut,
    status=201,
    summary="Allocate an address from a range",
)
def allocation_post(body: AllocationIn) -> AllocationOut:
    """The lowest free address of the range, or `address` if it is free; 409 when the range is full."""
    with write_session() as s:
        if body.node_id is not None:
            nodes.get_node(s, body.node_id)
        mac = nodes.normalize_mac(body.mac) if body.mac else None
        networks.get_range(s, body.range_id)
        allocation = ipam.allocate(
            s,
            body.range_id,
            node_id=body.node_id,
            mac=mac,
            hostname=body.hostname,
            address=body.address,
            actor=actor(),
        )
        return AllocationOut.model_validate(allocation)


@endpoint(bp, "GET", "/allocations/<int:allocation_id>", response=AllocationOut, summary="Show an allocation")
def allocation_get(allocation_id: int) -> AllocationOut:
    with read_session() as s:
        allocation = s.get(Allocation, allocation_id)
        if allocation is None:
            raise NotFound(f"allocation {allocation_id} not found", field="id")
        return AllocationOut.model_validate(allocation)


@endpoint(bp, "DELETE", "/allocations/<int:allocation_id>", status=204, summary="Release an allocation")
def allocation_delete(allocation_id: int) -> None:
    with write_session() as s:
        ipam.release(s, allocation_id, actor=actor())
