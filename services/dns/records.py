"""The admin zone's records, read from the database, and the cheap marker that says they changed.

Names (all lower-case, under settings.admin_domain):
  - a node's allocations (purpose host/dhcp) and reservations: `<node>.<domain>` (a node named
    `n1.rack2` becomes `n1.rack2.<domain>`; a name already ending in the domain is kept);
  - a node's BMC (allocations of purpose `bmc`, and `nodes.bmc_address` when it is an IP address):
    `<node>-bmc.<domain>`, the suffix added to the first label (`n1-bmc.rack2.<domain>`);
  - allocations and reservations without a node, by their `hostname`;
  - reservations and active DHCP leases of a MAC that belongs to a node (node_macs): the node's name;
  - other active leases by the hostname the client sent, only where no node/allocation/reservation
    already owns that name (a client must not be able to take over a node's name);
  - PTR for every address above, pointing at the first name that claimed it;
  - the apex: SOA and NS `ns.<domain>` with A/AAAA = settings.advertise_address.
Reverse zones: one per served network (networks table), rounded out to an octet (IPv4) or nibble
(IPv6) boundary; the server is authoritative for PTR names inside them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.models import Allocation, Event, Lease, Network, Node, NodeMac, Reservation

TYPE_A, TYPE_NS, TYPE_SOA, TYPE_PTR, TYPE_AAAA = 1, 2, 6, 12, 28
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ZoneData:
    domain: str
    serial: int = 0
    # fqdn (lower, no trailing dot) -> {qtype: [rdata text]}; empty dict = a name with no records
    names: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    reverse_zones: tuple[str, ...] = ()
    served: tuple[IPNetwork, ...] = ()

    def add(self, name: str, qtype: int, value: str) -> None:
        values = self.names.setdefault(name, {}).setdefault(qtype, [])
        if value not in values:
            values.append(value)

    def apex_of(self, name: str) -> str | None:
        """The zone this server is authoritative for that contains `name`, if any."""
        if name == self.domain or name.endswith("." + self.domain):
            return self.domain
        for zone in self.reverse_zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None


def fqdn(name: str, domain: str) -> str | None:
    """`name` as a valid lower-case name under `domain`, or None when it cannot be one."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    if name != domain and not name.endswith("." + domain):
        name = f"{name}.{domain}"
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def bmc_name(node_fqdn: str) -> str:
    first, _, rest = node_fqdn.partition(".")
    return f"{first}-bmc.{rest}"


def reverse_zone(net: IPNetwork) -> str:
    if net.version == 4:
        octets = max(1, net.prefixlen // 8)
        parts = str(net.network_address).split(".")[:octets]
        return ".".join(reversed(parts)) + ".in-addr.arpa"
    nibbles = max(1, net.prefixlen // 4)
    digits = net.network_address.exploded.replace(":", "")[:nibbles]
    return ".".join(reversed(digits)) + ".ip6.arpa"


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def change_marker(session: Session) -> tuple[Any, ...]:
    """One cheap row that changes whenever anything the zone is built from changes."""
    subqueries = [select(func.max(Event.id)).scalar_subquery()]
    for model in (Allocation, Reservation, Node, Network):
        subqueries += [
            select(func.count()).select_from(model).scalar_subquery(),
            select(func.max(model.updated_at)).scalar_subquery(),
        ]
    subqueries += [
        select(func.count()).select_from(NodeMac).scalar_subquery(),
        select(func.count()).select_from(Lease).scalar_subquery(),
        select(func.max(Lease.id)).scalar_subquery(),
        select(func.max(Lease.starts_at)).scalar_subquery(),
        select(func.max(Lease.ends_at)).scalar_subquery(),
    ]
    row = session.execute(select(*subqueries)).one()
    return tuple(row)


def _address(address: str) -> tuple[int, str, str] | None:
    """(record type, canonical text, reverse name) of an address, or None when it is not one."""
    try:
        # inet_pton/ntop: ~10x cheaper than ipaddress for the common IPv4 case (profiled on a
        # 5,000-node zone, where ipaddress parsing was most of the rebuild time)
        text = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, address))
    except OSError:
        ip = _ip(address)
        if ip is None:
            return None
        return (TYPE_A if ip.version == 4 else TYPE_AAAA), str(ip), ip.reverse_pointer
    octets = text.split(".")
    return TYPE_A, text, f"{octets[3]}.{octets[2]}.{octets[1]}.{octets[0]}.in-addr.arpa"


def _address_records(zone: ZoneData, claimed: list[tuple[str, str]], owners: dict[str, str]) -> None:
    for name, address in claimed:
        parsed = _address(address)
        if parsed is None:
            continue
        qtype, text, reverse = parsed
        zone.add(name, qtype, text)
        owners.setdefault(reverse, name)


def load_zone(
    session: Session, domain: str, advertise_address: str, extra_served: Iterable[str] = ()
) -> ZoneData:
    domain = domain.strip(".").lower()
    zone = ZoneData(domain)
    owners: dict[str, str] = {}  # reverse name -> fqdn
    # Columns, not ORM objects: a node row carries its inventory JSON, and loading thousands of them
    # took seconds; these four narrow queries keep a 5,000-node rebuild well inside the 1 s budget.
    node_names: dict[int, str | None] = {}
    claimed: list[tuple[str, str]] = []
    bmc_claims: list[tuple[str, str]] = []
    for node_id, node_name, bmc_address in session.execute(select(Node.id, Node.name, Node.bmc_address)):
        base = node_names[node_id] = fqdn(node_name, domain)
        if base and _ip(bmc_address):
            bmc_claims.append((bmc_name(base), str(bmc_address)))
    allocations = select(Allocation.hostname, Allocation.node_id, Allocation.purpose, Allocation.address)
    for hostname, owner_id, purpose, address in session.execute(allocations.order_by(Allocation.id)):
        name: str | None = None
        if hostname:
            name = fqdn(hostname, domain)
        elif owner_id is not None and (base := node_names.get(owner_id)):
            name = bmc_name(base) if purpose == "bmc" else base
        if name:
            claimed.append((name, address))
    claimed += bmc_claims
    # A MAC that belongs to a node names the node's reservations and leases, whatever hostname the
    # DHCP client sent: a discovered node is reachable by its name from its first lease on.
    node_of_mac = {
        mac.lower(): node_id for mac, node_id in session.execute(select(NodeMac.mac, NodeMac.node_id))
    }
    reservations = select(Reservation.node_id, Reservation.mac, Reservation.hostname, Reservation.address)
    for reserved_for, mac, hostname, address in session.execute(reservations.order_by(Reservation.id)):
        owner = reserved_for if reserved_for is not None else node_of_mac.get(mac.lower())
        name = node_names.get(owner) if owner is not None else None
        if not name and hostname:
            name = fqdn(hostname, domain)
        if name:
            claimed.append((name, address))
    _address_records(zone, claimed, owners)

    now = dt.datetime.now(dt.UTC)
    taken_names = {n for n in node_names.values() if n}
    taken_names |= {bmc_name(n) for n in taken_names}
    leased: list[tuple[str, str]] = []
    leases = select(Lease.mac, Lease.hostname, Lease.address, Lease.ends_at).where(Lease.state == "active")
    for mac, hostname, address, ends_at in session.execute(leases.order_by(Lease.id)):
        ends = ends_at if ends_at.tzinfo else ends_at.replace(tzinfo=dt.UTC)
        if ends <= now:
            continue
        owner = node_of_mac.get(mac.lower())
        owner_name = node_names.get(owner) if owner is not None else None
        if owner_name:
            _address_records(zone, [(owner_name, address)], owners)
            continue
        # a client-chosen name never takes a name that a node, allocation or reservation owns
        name = fqdn(hostname or "", domain)
        if name and name not in zone.names and name not in taken_names:
            leased.append((name, address))
    _address_records(zone, leased, owners)

    served: list[IPNetwork] = []
    for cidr in [*session.scalars(select(Network.cidr)), *extra_served]:
        try:
            served.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    zone.served = tuple(served)
    zone.reverse_zones = tuple(sorted({reverse_zone(net) for net in served}, key=len, reverse=True))
    for rname, target in owners.items():
        if zone.apex_of(rname) is not None:
            zone.add(rname, TYPE_PTR, target)

    ns = f"ns.{domain}"
    ns_ip = _ip(advertise_address)
    if ns_ip is not None:
        zone.add(ns, TYPE_A if ns_ip.version == 4 else TYPE_AAAA, str(ns_ip))
    for apex in (domain, *zone.reverse_zones):
        zone.add(apex, TYPE_NS, ns)
    _add_empty_non_terminals(zone)
    return zone


def _add_empty_non_terminals(zone: ZoneData) -> None:
    # RFC 8020: a name that exists only as the parent of another must answer NOERROR/NODATA, not
    # NXDOMAIN, or resolvers drop everything below it.
    for name in list(zone.names):
        apex = zone.apex_of(name)
        if apex is None:
            continue
        parent = name
        while parent != apex and "." in parent:
            parent = parent.split(".", 1)[1]
            zone.names.setdefault(parent, {})
