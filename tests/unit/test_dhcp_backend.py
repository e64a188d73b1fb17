from __future__ import annotations

import struct
import time
from pathlib import Path

from sqlalchemy import select

from appliance import ipam
from appliance.db import Database
from appliance.models import Lease, Network, Node, NodeMac, Reservation
from services.dhcp.backend import DatabaseBackend
from services.dhcp.leases import LeaseRecord
from services.dhcp.packet import ACK, DECLINE, DISCOVER, INFORM, NAK, OFFER, REQUEST, Packet, encode, parse
from services.dhcp.responder import Interface, Responder, ResponderConfig

SERVER = 0x0A090001
IFACE = Interface("eth0", SERVER)
CONFIG = ResponderConfig(
    advertise=None, web_port=8080, uefi_loader="ipxe.efi", lease_seconds=600, domain="kiln.lab"
)


def _network(db: Database, first: str = "10.9.0.10", last: str = "10.9.0.12") -> int:
    with db.session() as s:
        net = Network(name="admin", cidr="10.9.0.0/24", gateway="10.9.0.1", interface="eth0")
        s.add(net)
        s.flush()
        ipam.make_range(s, net, "pool", "dynamic", first, last)
        return net.id


def _backend(db: Database, *, discovery: bool = True) -> DatabaseBackend:
    backend = DatabaseBackend(db, discovery=discovery)
    backend.start()
    return backend


def _mac(n: int) -> str:
    return f"52:54:00:00:00:{n:02x}"


def _packet(kind: int, n: int, opts: dict[int, bytes] | None = None, **fields: int) -> Packet:
    raw = Packet(
        op=1, xid=n, chaddr=bytes.fromhex(_mac(n).replace(":", "")), options={53: bytes((kind,))}, **fields
    )
    raw.options.update(opts or {})
    return parse(encode(raw))


def test_commit_writes_lease_rows_readable_by_the_orm_and_replaces_by_address(db: Database) -> None:
    net_id = _network(db)
    backend = _backend(db)
    now = time.time()
    backend.commit(
        [LeaseRecord(net_id, _mac(1), 0x0A09000A, "active", now, now + 600, client_arch=7, ipxe=True)]
    )
    backend.commit([LeaseRecord(net_id, _mac(2), 0x0A09000A, "active", now, now + 60, hostname="n2")])
    with db.read_session() as s:
        leases = s.scalars(select(Lease)).all()
    assert len(leases) == 1
    lease = leases[0]
    assert (lease.mac, lease.address, lease.hostname, lease.ipxe) == (_mac(2), "10.9.0.10", "n2", False)
    assert round((lease.ends_at - lease.starts_at).total_seconds()) == 60
    backend.close()
    restarted = _backend(db)
    network = restarted.network_for("eth0", SERVER, 0)
    assert network is not None
    # the restarted backend knows the lease: another client cannot claim the address
    assert restarted.claim(network, _mac(3), 0x0A09000A, time.time(), time.time() + 600) is None
    restarted.close()


def test_offers_are_held_per_client_and_pool_exhaustion_gives_none(sqlite_db: Database) -> None:
    _network(sqlite_db)
    backend = _backend(sqlite_db)
    network = backend.network_for("eth0", SERVER, 0)
    assert network is not None
    now = time.time()
    offers = [backend.allocate(network, _mac(n), None, now) for n in range(3)]
    assert [o.address for o in offers if o] == [0x0A09000A, 0x0A09000B, 0x0A09000C]
    again = backend.allocate(network, _mac(1), None, now)
    assert again is not None and again.address == 0x0A09000B
    assert backend.allocate(network, _mac(9), None, now) is None
    # another client cannot take a held address, its owner can
    assert backend.claim(network, _mac(9), 0x0A09000A, now, now + 60) is None
    assert backend.claim(network, _mac(0), 0x0A09000A, now, now + 600) is not None
    # once offers expire, their addresses are free again
    later = now + 120
    backend.expire_offers(later)
    freed = backend.allocate(network, _mac(9), None, later)
    assert freed is not None and freed.address in (0x0A09000B, 0x0A09000C)


def test_unknown_mac_gets_nothing_without_discovery_but_known_node_does(sqlite_db: Database) -> None:
    _network(sqlite_db)
    with sqlite_db.session() as s:
        node = Node(name="n5")
        s.add(node)
        s.flush()
        s.add(NodeMac(mac=_mac(5), node_id=node.id))
    backend = _backend(sqlite_db, discovery=False)
    network = backend.network_for("eth0", SERVER, 0)
    assert network is not None
    assert backend.allocate(network, _mac(4), None, time.time()) is None
    assert backend.allocate(network, _mac(5), None, time.time()) is not None


def test_refresh_picks_up_a_new_reservation(sqlite_db: Database) -> None:
    net_id = _network(sqlite_db)
    backend = _backend(sqlite_db)
    network = backend.network_for("eth0", SERVER, 0)
    assert network is not None and backend.lookup(network, _mac(6)) is None
    assert backend.refresh() is False
    with sqlite_db.session() as s:
        s.add(Reservation(mac=_mac(6), network_id=net_id, address="10.9.0.66", hostname="six"))
    assert backend.refresh() is True
    network = backend.network_for("eth0", SERVER, 0)
    assert network is not None
    binding = backend.lookup(network, _mac(6))
    assert binding is not None and binding.address == 0x0A090042 and binding.hostname == "six"


def test_responder_dora_inform_and_decline(sqlite_db: Database) -> None:
    _network(sqlite_db)
    responder = Responder(_backend(sqlite_db), CONFIG)
    now = time.time()
    offer = responder.handle(_packet(DISCOVER, 1), IFACE, now)
    assert offer is not None and offer.data is not None and offer.lease is None
    parsed = parse(offer.data)
    assert parsed.message_type == OFFER and parsed.yiaddr == 0x0A09000A
    assert parsed.options[1] == bytes((255, 255, 255, 0)) and parsed.options[3] == bytes((10, 9, 0, 1))
    assert parsed.options[54] == struct.pack("!I", SERVER) and parsed.options[51] == struct.pack("!I", 600)
    assert 67 not in parsed.options  # not a netboot client
    assert offer.destination == ("255.255.255.255", 68)
    request = _packet(REQUEST, 1, {54: struct.pack("!I", SERVER), 50: struct.pack("!I", parsed.yiaddr)})
    ack = responder.handle(request, IFACE, now)
    assert ack is not None and ack.data is not None and parse(ack.data).message_type == ACK
    assert ack.lease is not None and ack.lease.address == parsed.yiaddr and ack.lease.state == "active"
    # another client asking for that address is refused
    stolen = _packet(REQUEST, 2, {50: struct.pack("!I", parsed.yiaddr)})
    nak = responder.handle(stolen, IFACE, now)
    assert nak is not None and nak.data is not None and parse(nak.data).message_type == NAK
    # INFORM: configuration, no lease time, unicast to the client
    inform = responder.handle(_packet(INFORM, 3, ciaddr=0x0A090063), IFACE, now)
    assert inform is not None and inform.data is not None
    assert 51 not in parse(inform.data).options and inform.destination == ("10.9.0.99", 68)
    decline = responder.handle(
        _packet(DECLINE, 1, {54: struct.pack("!I", SERVER), 50: struct.pack("!I", parsed.yiaddr)}), IFACE, now
    )
    assert decline is not None and decline.data is None
    assert decline.lease is not None and decline.lease.state == "declined"


def test_relayed_discover_is_answered_to_the_relay_with_option_82(sqlite_db: Database) -> None:
    _network(sqlite_db)
    responder = Responder(_backend(sqlite_db), CONFIG)
    packet = _packet(DISCOVER, 1, {82: b"\x01\x04port"}, giaddr=0x0A090002)
    out = responder.handle(packet, Interface("eth9", 0x0B000001), time.time())
    assert out is not None and out.data is not None
    assert out.destination == ("10.9.0.2", 67)
    assert parse(out.data).options[82] == b"\x01\x04port"


def test_proxy_mode_gives_boot_information_only_to_netboot_clients(sqlite_db: Database) -> None:
    _network(sqlite_db)
    config = ResponderConfig(
        advertise="10.9.0.5",
        web_port=80,
        uefi_loader="snponly.efi",
        lease_seconds=600,
        domain="x",
        proxy=True,
    )
    responder = Responder(_backend(sqlite_db), config)
    assert responder.handle(_packet(DISCOVER, 1), IFACE, time.time()) is None
    pxe = _packet(DISCOVER, 2, {93: b"\x00\x07", 60: b"PXEClient:Arch:00007:UNDI:003016", 97: bytes(17)})
    out = responder.handle(pxe, IFACE, time.time())
    assert out is not None and out.data is not None
    offer = parse(out.data)
    assert offer.yiaddr == 0 and offer.file == b"snponly.efi" and offer.siaddr == 0x0A090005
    assert offer.options[60] == b"PXEClient" and offer.options[43] == bytes((6, 1, 8, 255))
    assert offer.options[97] == bytes(17) and 175 not in offer.options


def test_renewing_and_rebinding_client_keeps_its_address_and_is_answered_unicast(sqlite_db: Database) -> None:
    _network(sqlite_db)
    responder = Responder(_backend(sqlite_db), CONFIG)
    now = time.time()
    offer = responder.handle(_packet(DISCOVER, 1), IFACE, now)
    assert offer is not None and offer.data is not None
    address = parse(offer.data).yiaddr
    select_ = _packet(REQUEST, 1, {54: struct.pack("!I", SERVER), 50: struct.pack("!I", address)})
    assert responder.handle(select_, IFACE, now) is not None
    # RENEWING (unicast) and REBINDING (broadcast) both carry ciaddr and no server identifier
    for later in (now + 300, now + 530):
        renew = responder.handle(_packet(REQUEST, 1, ciaddr=address), IFACE, later)
        assert renew is not None and renew.data is not None and renew.lease is not None
        assert parse(renew.data).message_type == ACK and parse(renew.data).yiaddr == address
        assert renew.destination == ("10.9.0.10", 68)
        assert renew.lease.ends == later + 600
    # another client rebinding onto that address is refused
    other = responder.handle(_packet(REQUEST, 2, ciaddr=address), IFACE, now + 540)
    assert other is not None and other.data is not None and parse(other.data).message_type == NAK


def test_offer_to_real_ipxe_carries_script_url_and_no_pxedhcp(sqlite_db: Database) -> None:
    _network(sqlite_db)
    responder = Responder(_backend(sqlite_db), CONFIG)
    data = (Path(__file__).parent.parent / "data" / "dhcp" / "ipxe_uefi_discover.bin").read_bytes()
    out = responder.handle(parse(data), IFACE, time.time())
    assert out is not None and out.data is not None
    offer = parse(out.data)
    assert offer.options[67] == b"http://10.9.0.1:8080/boot/ipxe?mac=${net0/mac}"
    assert offer.options[175] == bytes((176, 1, 1))
    assert 97 not in offer.options  # OVMF DECLINEs a full-server lease that echoes the client UUID
    assert offer.siaddr == SERVER
