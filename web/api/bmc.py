"""/nodes/<id>/power and /nodes/<id>/bmc: power control and a node's BMC settings.

The BMC password is write-only: PUT /bmc takes it and stores it encrypted (appliance.bmc.credentials);
no answer ever carries it, only `password_set`.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from pydantic import Field

from appliance import nodes
from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.power import PowerResult, power_nodes
from appliance.bmc.probe import DriverCache
from appliance.errors import (
    BMCAuthError,
    BMCError,
    BMCUnreachable,
    BMCUnsupported,
    Conflict,
    KilnError,
)
from appliance.models import Node
from web.api.access import actor
from web.api.endpoint import endpoint, expected_version, read_session, write_session
from web.api.schemas import VERSION_FIELD, Out, Strict, Timestamp
from web.context import kiln

bp = Blueprint("bmc", __name__)

PowerAction = Literal["on", "off", "soft", "cycle", "reset", "netboot"]
_ERRORS: dict[str, type[BMCError]] = {
    "BMCAuthError": BMCAuthError,
    "BMCUnreachable": BMCUnreachable,
    "BMCUnsupported": BMCUnsupported,
}


class PowerQuery(Strict):
    refresh: bool = Field(False, description="ask the BMC now instead of answering the last recorded state")


class PowerIn(Strict):
    action: PowerAction = Field(
        description="on, off (hard), soft (ACPI shutdown), cycle, reset, or netboot (PXE next, then cycle)"
    )


class PowerOut(Out):
    node_id: int
    name: str
    power_state: str | None
    power_checked_at: Timestamp | None
    action: str | None = None
    seconds: float | None = None


class BmcIn(Strict):
    address: str | None = Field(None, description="host, host:port or a Redfish URL; empty string clears")
    driver: Literal["ipmi", "redfish", "auto"] | None = Field(None, description="auto: probe (Redfish first)")
    username: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=128, description="write-only; stored encrypted")
    version: int | None = VERSION_FIELD


class BmcOut(Out):
    node_id: int
    name: str
    address: str | None
    driver: str | None
    username: str | None
    password_set: bool
    version: int


def _drivers() -> DriverCache:
    """This app's BMC sessions, kept across requests: one session per BMC, not one per API call."""
    cache: DriverCache = current_app.extensions.setdefault("kiln_bmc_drivers", DriverCache())
    return cache


def _power_out(node: Node, result: PowerResult | None = None) -> PowerOut:
    return PowerOut(
        node_id=node.id,
        name=node.name,
        power_state=node.power_state,
        power_checked_at=node.power_checked_at,
        action=result.action if result else None,
        seconds=round(result.seconds, 3) if result else None,
    )


def _run(node_id: int, action: str) -> PowerResult:
    with read_session() as s:
        nodes.get_node(s, node_id)  # 404 before any BMC traffic
    state = kiln()
    (result,) = power_nodes(state.db, state.settings, [node_id], action, cache=_drivers(), actor=actor())
    if not result.ok:
        message = result.error or "BMC operation failed"
        if result.error_kind in _ERRORS:
            raise _ERRORS[result.error_kind](message)
        if result.error_kind == "InvalidInput":
            raise Conflict(message, field="bmc_address")
        if result.error_kind == "ConfigError":
            raise KilnError(message)
        raise BMCError(message)
    return result


@endpoint(bp, "GET", "/nodes/<int:node_id>/power", query=PowerQuery, response=PowerOut, summary="Power state")
def power_get(node_id: int, query: PowerQuery) -> PowerOut:
    """The state the power-state poller recorded, or (`refresh=true`) the BMC's answer now."""
    result = _run(node_id, "status") if query.refresh else None
    with read_session() as s:
        return _power_out(nodes.get_node(s, node_id), result)


@endpoint(bp, "PUT", "/nodes/<int:node_id>/power", body=PowerIn, response=PowerOut, summary="Power action")
def power_put(node_id: int, body: PowerIn) -> PowerOut:
    """Power the node on/off/soft/cycle/reset through its BMC. BMC failures answer 502 (refused
    credentials, unsupported) or 504 (unreachable) with a message the operator can act on."""
    result = _run(node_id, body.action)
    with read_session() as s:
        return _power_out(nodes.get_node(s, node_id), result)


def _bmc_out(node: Node) -> BmcOut:
    return BmcOut(
        node_id=node.id,
        name=node.name,
        address=node.bmc_address,
        driver=node.bmc_driver,
        username=node.bmc_username,
        password_set=node.bmc_password_enc is not None,
        version=node.version,
    )


@endpoint(bp, "GET", "/nodes/<int:node_id>/bmc", response=BmcOut, summary="A node's BMC settings")
def bmc_get(node_id: int) -> BmcOut:
    with read_session() as s:
        return _bmc_out(nodes.get_node(s, node_id))


@endpoint(
    bp,
    "PUT",
    "/nodes/<int:node_id>/bmc",
    body=BmcIn,
    response=BmcOut,
    role="admin",
    summary="Set BMC settings",
)
def bmc_put(node_id: int, body: BmcIn) -> BmcOut:
    """Fields left out keep their value; `password` is stored encrypted and never answered."""
    expected = expected_version(body)
    with write_session() as s:
        node = nodes.get_node(s, node_id, for_update=True)
        if expected is not None and expected != node.version:
            raise Conflict(f"node {node.name} changed since version {expected} (now {node.version})")
        set_node_bmc(
            s,
            kiln().settings,
            node,
            address=body.address,
            username=body.username,
            password=body.password,
            driver="" if body.driver == "auto" else body.driver,
            actor=actor(),
        )
        s.flush()
        return _bmc_out(node)
