"""Request and response models of /api/v2. The same classes validate requests and feed the OpenAPI document.

Conventions: `<Thing>In` creates (and replaces, for PUT), `<Thing>Patch` changes some fields (all
optional), `<Thing>Out` is what the API answers. Out models list their fields explicitly, so a secret
column added to a table later (a password hash, an encrypted BMC password) never leaks by default.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from appliance.models import RANGE_KINDS, USER_ROLES
from web.api.paging import ListQuery

NodeState = Literal["new", "discovered", "annealing", "ready", "error", "off"]
RangeKind = Literal["dhcp", "host", "bmc", "dynamic"]
Role = Literal["admin", "operator", "readonly"]
BootenvKind = Literal["discovery", "local", "installer", "image"]
assert set(RangeKind.__args__) == set(RANGE_KINDS) and set(Role.__args__) == set(USER_ROLES)  # type: ignore[attr-defined]


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; Kiln stores UTC everywhere, so say so on the wire
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


Timestamp = Annotated[dt.datetime, AfterValidator(_utc)]
VERSION_FIELD = Field(
    None, description="the version you read; 409 if the object changed since (If-Match does the same)"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---- nodes


class NodeMacIn(Strict):
    mac: str = Field(description="any common spelling; stored as aa:bb:cc:dd:ee:ff")
    interface: str | None = Field(None, max_length=32)
    primary: bool = False


class NodeMacOut(Out):
    mac: str
    interface: str | None
    primary: bool


class NodeIn(Strict):
    name: str = Field(description="DNS-safe: lower-case letters, digits, '-', dot-separated labels")
    description: str = ""
    state: NodeState = "new"
    system_uuid: str | None = Field(None, description="DMI system UUID")
    bootenv: str = "discovery"
    alive: bool = True
    available: bool = True
    hint: dict[str, Any] = Field(default_factory=dict)
    bmc_driver: Literal["ipmi", "redfish"] | None = None
    bmc_address: str | None = None
    bmc_username: str | None = None
    macs: list[str | NodeMacIn] = Field(default_factory=list, description="MACs as strings or objects")
    target_role: str | None = Field(
        None,
        description="anneal the node only up to this role and its parents; null: every node-role may run",
    )
    version: int | None = VERSION_FIELD


class NodePatch(Strict):
    name: str | None = None
    description: str | None = None
    state: NodeState | None = None
    system_uuid: str | None = None
    bootenv: str | None = None
    alive: bool | None = None
    available: bool | None = None
    hint: dict[str, Any] | None = None
    bmc_driver: Literal["ipmi", "redfish"] | None = None
    bmc_address: str | None = None
    bmc_username: str | None = None
    macs: list[str | NodeMacIn] | None = Field(None, description="replaces the node's MACs")
    target_role: str | None = Field(
        None,
        description="anneal the node only up to this role and its parents; null: every node-role may run",
    )
    version: int | None = VERSION_FIELD


class NodeSummaryOut(Out):
    """A node in a list: everything but its inventory (tens of KB per node once discovered)."""

    id: int
    name: str
    description: str
    state: str
    system_uuid: str | None
    bootenv: str
    alive: bool
    available: bool
    admin: bool
    deployment_id: int | None
    hint: dict[str, Any]
    bmc_driver: str | None
    bmc_address: str | None
    bmc_username: str | None
    power_state: str | None
    last_boot_step: str | None
    macs: list[NodeMacOut]
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class NodeOut(NodeSummaryOut):
    inventory: dict[str, Any] = Field(description="what discovery reported")
    target_role: str | None = Field(
        None, description="the node anneals only up to this role and its parents; null: everything"
    )


class NodeQuery(ListQuery):
    name: str | None = Field(None, description="exact name")
    state: NodeState | None = None
    mac: str | None = Field(None, description="a MAC of the node, any spelling")
    q: str | None = Field(None, max_length=64, description="search: part of the name or of a MAC")


# ---- networks, ranges, allocations


class NetworkIn(Strict):
    name: str
    cidr: str = Field(description="e.g. 10.0.0.0/24")
    category: str = "admin"
    conduit: str = "1g0"
    vlan: int | None = Field(None, ge=0, le=4094)
    gateway: str | None = None
    dns_servers: list[str] = Field(default_factory=list)
    domain: str | None = None
    interface: str | None = None
    ntp_servers: list[str] = Field(default_factory=list)
    mtu: int | None = Field(None, ge=576, le=9216)
    version: int | None = VERSION_FIELD


class NetworkPatch(Strict):
    name: str | None = None
    cidr: str | None = None
    category: str | None = None
    conduit: str | None = None
    vlan: int | None = Field(None, ge=0, le=4094)
    gateway: str | None = None
    dns_servers: list[str] | None = None
    domain: str | None = None
    interface: str | None = None
    ntp_servers: list[str] | None = None
    mtu: int | None = Field(None, ge=576, le=9216)
    version: int | None = VERSION_FIELD


class NetworkOut(Out):
    id: int
    name: str
    cidr: str
    category: str
    conduit: str
    vlan: int | None
    gateway: str | None
    dns_servers: list[str]
    domain: str | None
    interface: str | None
    ntp_servers: list[str]
    mtu: int | None
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class NetworkQuery(ListQuery):
    name: str | None = None
    category: str | None = None


class RangeIn(Strict):
    name: str
    kind: RangeKind
    first: str
    last: str
    version: int | None = VERSION_FIELD


class FlatRangeIn(RangeIn):
    network_id: int


class RangePatch(Strict):
    name: str | None = None
    kind: RangeKind | None = None
    first: str | None = None
    last: str | None = None
    version: int | None = VERSION_FIELD


class RangeOut(Out):
    id: int
    network_id: int
    name: str
    kind: str
    first: str
    last: str
    size: int
    used: int
    version: int


class RangeQuery(ListQuery):
    network_id: int | None = None
    kind: RangeKind | None = None


class AllocationIn(Strict):
    range_id: int
    node_id: int | None = None
    mac: str | None = None
    hostname: str | None = None
    address: str | None = Field(
        None, description="a specific free address of the range; lowest free if omitted"
    )


class AllocationOut(Out):
    id: int
    network_id: int
    range_id: int
    node_id: int | None
    mac: str | None
    address: str
    hostname: str | None
    purpose: str
    created_at: Timestamp


class AllocationQuery(ListQuery):
    network_id: int | None = None
    range_id: int | None = None
    node_id: int | None = None


# ---- bootenvs


class BootenvIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: BootenvKind = "installer"
    description: str = ""
    kernel: str | None = None
    initrd: str | None = None
    kernel_args: str = ""
    template: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    version: int | None = VERSION_FIELD


class BootenvPatch(Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: BootenvKind | None = None
    description: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    kernel_args: str | None = None
    template: str | None = None
    data: dict[str, Any] | None = None
    version: int | None = VERSION_FIELD


class BootenvOut(Out):
    id: int
    name: str
    kind: str
    description: str
    kernel: str | None
    initrd: str | None
    kernel_args: str
    template: str | None
    data: dict[str, Any]
    version: int


# ---- users and tokens


class UserIn(Strict):
    username: str
    password: str = Field(min_length=8, max_length=1024)
    role: Role = "readonly"
    email: str | None = None
    disabled: bool = False


class UserPatch(Strict):
    password: str | None = Field(None, min_length=8, max_length=1024)
    role: Role | None = None
    email: str | None = None
    disabled: bool | None = None
    version: int | None = VERSION_FIELD


class UserOut(Out):
    id: int
    username: str
    role: str
    email: str | None
    disabled: bool
    version: int
    created_at: Timestamp


class TokenIn(Strict):
    name: str = Field("", max_length=64)
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    user_id: int | None = Field(None, description="admins may issue tokens for another user")


class TokenOut(Out):
    id: int
    user_id: int
    name: str
    prefix: str = Field(description="the first characters of the token, to recognise it")
    created_at: Timestamp
    expires_at: Timestamp | None
    last_used_at: Timestamp | None = Field(None, description="last use, to the minute (null: never used)")


class NewTokenOut(TokenOut):
    token: str = Field(description="the token itself: shown this once, never again")


class TokenQuery(ListQuery):
    user_id: int | None = None


# ---- events


class EventOut(Out):
    id: int
    at: Timestamp
    actor: str
    action: str
    subject_type: str
    subject_id: int | None
    message: str
    data: dict[str, Any]


class EventQuery(ListQuery):
    action: str | None = Field(None, description="exact action, or a prefix ending in '.', e.g. 'node.'")
    subject_type: str | None = None
    subject_id: int | None = None
    actor: str | None = None
    since: int | None = Field(None, ge=0, description="only events with an id greater than this")
