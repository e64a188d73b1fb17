"""Where DHCP answers come from: the Backend protocol and its database implementation.

The database backend keeps an in-memory index (networks, reservations, node allocations, leases, held
offers) so a packet never waits on a query. The index of configuration is reloaded when the database
changes (`refresh()`); leases are loaded once at start and then kept by this process, which is the only
writer of leases for the networks it serves (DESIGN §7: each appliance serves its own racks).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select

from appliance import events
from appliance.db import Database
from appliance.models import Allocation, Lease, Network, Node, NodeMac, Range, Reservation, Router
from services.dhcp.leases import LeaseRecord, LeaseWriter

log = logging.getLogger(__name__)

# How long an offered address stays reserved for its client (iPXE ignores NAK: never offer it twice).
OFFER_HOLD_SECONDS = 30.0
# A declined address (someone else answers ARP for it) is kept out of the pool this long.
DECLINE_HOLD_SECONDS = 600.0
_ACTIVE_STATES = ("active", "declined")


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """What the responder needs of a network, precomputed."""

    id: int
    name: str
    address: int
    netmask: int
    broadcast: int
    interface: str | None
    routers: tuple[str, ...]
    dns_servers: tuple[str, ...]
    domain: str | None
    ntp_servers: tuple[str, ...]
    mtu: int | None
    pools: tuple[tuple[int, int], ...]

    def contains(self, address: int) -> bool:
        return address & self.netmask == self.address


@dataclass(slots=True)
class Binding:
    """An address for a client: fixed (reservation or node allocation) or from the dynamic pool.

    Not frozen (nothing changes one): a frozen dataclass's __init__ costs four times as much, and two
    are made per DORA."""

    network: NetworkInfo
    address: int
    hostname: str | None = None
    fixed: bool = False


class Backend(Protocol):
    def network_for(self, interface: str, local_address: int, giaddr: int) -> NetworkInfo | None: ...

    def lookup(self, network: NetworkInfo, mac: str) -> Binding | None:
        """The fixed binding of `mac` on `network` (reservation or node allocation), if any."""

    def allocate(self, network: NetworkInfo, mac: str, requested: int | None, now: float) -> Binding | None:
        """An address to offer `mac`, held for it; None when it may not be served or nothing is free."""

    def claim(self, network: NetworkInfo, mac: str, address: int, now: float, ends: float) -> Binding | None:
        """Bind `address` to `mac` until `ends` (in memory, before commit); None: NAK."""

    def commit(self, records: Sequence[LeaseRecord]) -> None:
        """Write lease rows durably (one fsync'd transaction); raises if they are not written."""

    def release(self, network: NetworkInfo, mac: str, address: int, state: str, now: float) -> bool:
        """The client gave `address` back (state 'released') or found it in use ('declined')."""

    def undo(self, records: Sequence[LeaseRecord]) -> None:
        """Forget in-memory bindings whose commit failed."""

    def forget_offer(self, network: NetworkInfo, mac: str) -> None:
        """The client took another server's offer: free what was held for it."""


@dataclass
class _Index:
    """Configuration snapshot: replaced as a whole on refresh, never mutated."""

    networks: list[NetworkInfo] = field(default_factory=list)
    by_interface: dict[str, NetworkInfo] = field(default_factory=dict)
    fixed: dict[tuple[int, str], Binding] = field(default_factory=dict)
    taken: dict[int, frozenset[int]] = field(default_factory=dict)
    known_macs: frozenset[str] = frozenset()
    # relay address -> network, filled as relays are seen (the only cache in a snapshot)
    by_relay: dict[int, NetworkInfo | None] = field(default_factory=dict)


def _fingerprint_query() -> Any:
    """What changes when the configuration the index is built from changes: counts, highest ids and
    latest updates. One statement of scalar subqueries, built once: this runs every second in the DHCP
    process, and each statement costs a GIL hand-off that the busy receive loop pays for."""
    columns: list[Any] = []
    for model in (Network, Range, Reservation, Allocation, Node):
        columns += [
            select(func.count()).select_from(model).scalar_subquery(),
            select(func.max(model.id)).scalar_subquery(),
            select(func.max(model.updated_at)).scalar_subquery(),
        ]
    for key in (Router.id, NodeMac.mac):
        columns += [
            select(func.count()).select_from(key.class_).scalar_subquery(),
            select(func.max(key)).scalar_subquery(),
        ]
    return select(*columns)


_FINGERPRINT = _fingerprint_query()


def _ipv4(text: str | None) -> int | None:
    try:
        return int(ipaddress.IPv4Address(text)) if text else None
    except ValueError:
        return None


def _epoch(value: dt.datetime) -> float:
    # SQLite hands back naive datetimes that were written as UTC
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


class DatabaseBackend:
    """The Backend over Kiln's database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, *, discovery: bool) -> None:
        self.db = db
        self.discovery = discovery
        self.generation = 0
        self._index = _Index()
        self._fingerprint: tuple[Any, ...] = ()
        self._lock = threading.Lock()
        # (network id, address) -> (mac, ends, state); (network id, mac) -> address. Tuples, not lists:
        # the cyclic GC stops tracking them, so 100,000s of leases do not slow every collection.
        self._leases: dict[tuple[int, int], tuple[str, float, str]] = {}
        self._lease_of: dict[tuple[int, str], int] = {}
        self._offers: dict[tuple[int, int], tuple[str, float]] = {}
        self._offer_of: dict[tuple[int, str], int] = {}
        self._cursor: dict[tuple[int, int], int] = {}
        self.writer = LeaseWriter(db)

    # -- loading ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh(force=True)
        with self.db.read_session() as session:
            rows = session.execute(
                select(Lease.network_id, Lease.mac, Lease.address_int, Lease.state, Lease.ends_at)
            )
            for network_id, mac, address, state, ends_at in rows:
                self._leases[(network_id, address)] = (mac, _epoch(ends_at), state)
                self._lease_of[(network_id, mac)] = address
        log.info("dhcp: %d leases loaded", len(self._leases))

    def _read_fingerprint(self) -> tuple[Any, ...]:
        with self.db.read_session() as session:
            return tuple(session.execute(_FINGERPRINT).one())

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the configuration index if the database changed; True when it did."""
        fingerprint = self._read_fingerprint()
        if fingerprint == self._fingerprint and not force:
            return False
        index = self._load_index()
        self._index, self._fingerprint = index, fingerprint
        self.generation += 1
        log.info("dhcp: index loaded: %d networks, %d fixed bindings", len(index.networks), len(index.fixed))
        return True

    def _load_index(self) -> _Index:
        index = _Index()
        with self.db.read_session() as session:
            pools: dict[int, list[tuple[int, int]]] = {}
            for rng in session.scalars(
                select(Range).where(Range.kind == "dynamic").order_by(Range.first_int)
            ):
                pools.setdefault(rng.network_id, []).append((rng.first_int, rng.last_int))
            routers: dict[int, list[str]] = {}
            for router in session.scalars(select(Router).order_by(Router.pref)):
                routers.setdefault(router.network_id, []).append(router.address)
            networks: dict[int, NetworkInfo] = {}
            taken: dict[int, set[int]] = {}
            for net in session.scalars(select(Network)):
                parsed = ipaddress.ip_network(net.cidr, strict=False)
                if parsed.version != 4:
                    continue
                gateways = ([net.gateway] if net.gateway else []) + routers.get(net.id, [])
                info = NetworkInfo(
                    id=net.id,
                    name=net.name,
                    address=int(parsed.network_address),
                    netmask=int(parsed.netmask),
                    broadcast=int(parsed.broadcast_address),
                    interface=net.interface,
                    routers=tuple(dict.fromkeys(gateways)),
                    dns_servers=tuple(net.dns_servers or ()),
                    domain=net.domain,
                    ntp_servers=tuple(net.ntp_servers or ()),
                    mtu=net.mtu,
                    pools=tuple(pools.get(net.id, ())),
                )
                networks[net.id] = info
                index.networks.append(info)
                if net.interface:
                    index.by_interface.setdefault(net.interface, info)
                taken[net.id] = {info.address, info.broadcast}
                taken[net.id].update(a for a in map(_ipv4, gateways) if a is not None)
            node_names = {i: n for i, n in session.execute(select(Node.id, Node.name))}
            node_of_mac = {m: i for m, i in session.execute(select(NodeMac.mac, NodeMac.node_id))}
            macs_of_node: dict[int, list[str]] = {}
            for mac, node_id in node_of_mac.items():
                macs_of_node.setdefault(node_id, []).append(mac.lower())
            for alloc in session.scalars(select(Allocation)):
                if alloc.network_id not in networks:
                    continue
                taken[alloc.network_id].add(alloc.address_int)
                if alloc.purpose == "bmc":
                    continue
                hostname = alloc.hostname or node_names.get(alloc.node_id or -1)
                owners = [alloc.mac.lower()] if alloc.mac else macs_of_node.get(alloc.node_id or -1, [])
                for mac in owners:
                    binding = Binding(networks[alloc.network_id], alloc.address_int, hostname, fixed=True)
                    index.fixed.setdefault((alloc.network_id, mac), binding)
            for res in session.scalars(select(Reservation)):
                address = _ipv4(res.address)
                if res.network_id not in networks or address is None:
                    continue
                taken[res.network_id].add(address)
                hostname = res.hostname or node_names.get(res.node_id or -1)
                # a reservation is the operator's explicit word: it wins over an allocation
                index.fixed[(res.network_id, res.mac.lower())] = Binding(
                    networks[res.network_id], address, hostname, fixed=True
                )
            index.taken = {net_id: frozenset(addresses) for net_id, addresses in taken.items()}
            index.known_macs = frozenset(m.lower() for m in node_of_mac)
        return index

    # -- lookups (hot path) ---------------------------------------------------------------------------

    def network_for(self, interface: str, local_address: int, giaddr: int) -> NetworkInfo | None:
        index = self._index
        if giaddr:
            try:
                return index.by_relay[giaddr]
            except KeyError:
                found_by_relay = next((n for n in index.networks if n.contains(giaddr)), None)
                if len(index.by_relay) < 65536:
                    index.by_relay[giaddr] = found_by_relay
                return found_by_relay
        found = index.by_interface.get(interface)
        if found is not None:
            return found
        return next((n for n in index.networks if n.contains(local_address)), None)

    def lookup(self, network: NetworkInfo, mac: str) -> Binding | None:
        return self._index.fixed.get((network.id, mac))

    def _free_for(self, network_id: int, address: int, mac: str, now: float, taken: frozenset[int]) -> bool:
        if address in taken:
            return False
        lease = self._leases.get((network_id, address))
        if lease is not None and lease[0] != mac and lease[1] > now and lease[2] in _ACTIVE_STATES:
            return False
        offer = self._offers.get((network_id, address))
        return offer is None or offer[0] == mac or offer[1] <= now

    def _in_pool(self, network: NetworkInfo, address: int) -> bool:
        # a plain loop: any() over a generator costs a frame per call, on every packet
        for first, last in network.pools:  # noqa: SIM110
            if first <= address <= last:
                return True
        return False

    def allocate(self, network: NetworkInfo, mac: str, requested: int | None, now: float) -> Binding | None:
        index = self._index
        fixed = index.fixed.get((network.id, mac))
        if fixed is not None:
            return fixed
        if not self.discovery and mac not in index.known_macs:
            return None
        taken = index.taken.get(network.id, frozenset())
        net_id = network.id
        with self._lock:
            chosen = None
            for candidate in (
                self._lease_of.get((net_id, mac)),
                self._offer_of.get((net_id, mac)),
                requested,
            ):
                if (
                    candidate is not None
                    and self._in_pool(network, candidate)
                    and self._free_for(net_id, candidate, mac, now, taken)
                ):
                    chosen = candidate
                    break
            if chosen is None:
                chosen = self._next_free(network, mac, now, taken)
                if chosen is None:
                    return None
            self._offers[(net_id, chosen)] = (mac, now + OFFER_HOLD_SECONDS)
            self._offer_of[(net_id, mac)] = chosen
        return Binding(network, chosen)

    def _next_free(self, network: NetworkInfo, mac: str, now: float, taken: frozenset[int]) -> int | None:
        # A cursor per pool makes the common case (a fresh pool filling up) O(1) instead of a scan from
        # the first address for every client; it wraps to find addresses freed by expiry or release.
        for number, (first, last) in enumerate(network.pools):
            key = (network.id, number)
            start = self._cursor.get(key, first)
            size = last - first + 1
            for step in range(size):
                candidate = first + (start - first + step) % size
                if self._free_for(network.id, candidate, mac, now, taken):
                    self._cursor[key] = candidate + 1 if candidate < last else first
                    return candidate
        return None

    def claim(self, network: NetworkInfo, mac: str, address: int, now: float, ends: float) -> Binding | None:
        index = self._index
        fixed = index.fixed.get((network.id, mac))
        if fixed is not None:
            return fixed if fixed.address == address else None
        if not self.discovery and mac not in index.known_macs:
            return None
        net_id = network.id
        with self._lock:
            if not self._in_pool(network, address) or not self._free_for(
                net_id, address, mac, now, index.taken.get(net_id, frozenset())
            ):
                return None
            self._bind(net_id, mac, address, ends, "active")
            if self._offer_of.pop((net_id, mac), None) is not None:
                self._offers.pop((net_id, address), None)
        return Binding(network, address)

    def _bind(self, net_id: int, mac: str, address: int, ends: float, state: str) -> None:
        previous = self._lease_of.get((net_id, mac))
        if previous is not None and previous != address:
            old = self._leases.get((net_id, previous))
            if old is not None and old[0] == mac:
                self._leases[(net_id, previous)] = (mac, old[1], "released")
        lease = self._leases.get((net_id, address))
        if lease is not None and lease[0] != mac:
            self._lease_of.pop((net_id, lease[0]), None)
        self._leases[(net_id, address)] = (mac, ends, state)
        self._lease_of[(net_id, mac)] = address

    def release(self, network: NetworkInfo, mac: str, address: int, state: str, now: float) -> bool:
        with self._lock:
            lease = self._leases.get((network.id, address))
            if state == "declined":
                # the address is in use by someone we do not know: keep it out of the pool for a while
                self._leases[(network.id, address)] = (mac, now + DECLINE_HOLD_SECONDS, "declined")
                self._lease_of.pop((network.id, mac), None)
                return True
            if lease is None or lease[0] != mac:
                return False
            self._leases[(network.id, address)] = (mac, now, state)
            return True

    def forget_offer(self, network: NetworkInfo, mac: str) -> None:
        """The client took another server's offer: free what we held for it."""
        with self._lock:
            address = self._offer_of.pop((network.id, mac), None)
            if address is not None:
                self._offers.pop((network.id, address), None)

    def undo(self, records: Sequence[LeaseRecord]) -> None:
        with self._lock:
            for record in records:
                lease = self._leases.get((record.network_id, record.address))
                if lease is not None and lease[0] == record.mac and record.state == "active":
                    del self._leases[(record.network_id, record.address)]
                    self._lease_of.pop((record.network_id, record.mac), None)

    def expire_offers(self, now: float) -> int:
        """Drop offers nobody took (called off the hot path)."""
        with self._lock:
            stale = [key for key, (_mac, until) in self._offers.items() if until <= now]
            for key in stale:
                mac, _until = self._offers.pop(key)
                if self._offer_of.get((key[0], mac)) == key[1]:
                    del self._offer_of[(key[0], mac)]
        return len(stale)

    # -- durable writes ---------------------------------------------------------------------------------

    def row(self, record: LeaseRecord) -> tuple[Any, ...]:
        return self.writer.row(record)

    def commit(self, records: Sequence[LeaseRecord]) -> None:
        self.writer.commit_rows([self.writer.row(r) for r in records])

    def commit_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.writer.commit_rows(rows)

    def record_event(self, action: str, message: str, data: dict[str, Any]) -> None:
        with self.db.session() as session:
            events.record(session, action, subject_type="dhcp", actor="dhcp", message=message, data=data)

    def close(self) -> None:
        self.writer.close()
