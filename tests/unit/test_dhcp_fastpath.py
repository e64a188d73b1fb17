"""`Responder.answer()` (the fast path) gives byte for byte what `Responder.handle()` gives."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest

from appliance import ipam
from appliance.db import Database
from appliance.models import Network, Reservation
from services.dhcp.backend import DatabaseBackend
from services.dhcp.packet import (
    DECLINE,
    DISCOVER,
    INFORM,
    RELEASE,
    REQUEST,
    Packet,
    encode,
    parse,
    parse_fields,
)
from services.dhcp.responder import Interface, Outgoing, Responder, ResponderConfig

SERVER = 0x0A090001
IFACE = Interface("eth0", SERVER)
CONFIG = ResponderConfig(
    advertise=None, web_port=8080, uefi_loader="ipxe.efi", lease_seconds=600, domain="kiln.lab"
)
GOLDEN = Path(__file__).parent.parent / "data" / "dhcp"


def _setup(db: Database) -> None:
    with db.session() as s:
        net = Network(name="admin", cidr="10.9.0.0/24", gateway="10.9.0.1", interface="eth0")
        relayed = Network(name="rack", cidr="10.8.0.0/24", dns_servers=["10.8.0.53"], mtu=9000)
        s.add_all([net, relayed])
        s.flush()
        # small pools, so clients run out and get NAKs
        ipam.make_range(s, net, "pool", "dynamic", "10.9.0.10", "10.9.0.14")
        ipam.make_range(s, relayed, "pool", "dynamic", "10.8.0.10", "10.8.0.12")
        s.add(Reservation(network_id=net.id, mac="52:54:00:00:00:07", address="10.9.0.77", hostname="seven"))


def _responder(db: Database) -> Responder:
    backend = DatabaseBackend(db, discovery=True)
    backend.start()
    return Responder(backend, CONFIG)


def _outgoing(out: Outgoing | None) -> tuple[object, ...] | None:
    return None if out is None else (out.data, out.destination, out.lease, out.kind)


def _random_packet(rng: random.Random) -> bytes:
    client = rng.randrange(1, 10)
    kind = rng.choice([DISCOVER] * 4 + [REQUEST] * 5 + [DECLINE, RELEASE, INFORM])
    opts: dict[int, bytes] = {53: bytes((kind,))}
    address = rng.choice([0x0A09000A + rng.randrange(6), 0x0A090077, 0x0A08000B, 0x0B000001, 0])
    if rng.random() < 0.7:
        opts[50] = struct.pack("!I", address)
    if rng.random() < 0.5:
        opts[54] = struct.pack("!I", rng.choice([SERVER, SERVER, 0x0A090063]))
    if rng.random() < 0.3:
        opts[61] = b"\x01" + bytes(5) + bytes((client,))
    if rng.random() < 0.3:
        opts[12] = rng.choice([b"host-a", b"x" * 40])
    if rng.random() < 0.3:
        opts[60] = rng.choice([b"MSFT 5.0", b"PXEClient:Arch:00000:UNDI:002001", b"HTTPClient:Arch:00016"])
    if rng.random() < 0.1:
        opts[93] = b"\x00\x07"
    if rng.random() < 0.1:
        opts[77] = rng.choice([b"iPXE", b"\x04iPXE", b"other"])
    if rng.random() < 0.1:
        opts[82] = b"\x01\x04port"
    if rng.random() < 0.6:
        # with and without the domain search list (119), which is sent only when asked for
        opts[55] = rng.choice([bytes((1, 3, 6, 15, 119)), bytes((1, 28, 2, 3, 15, 6, 12))])
    fields = {
        "ciaddr": rng.choice([0, 0, address]),
        "giaddr": rng.choice([0, 0, 0, 0x0A080002]),
        "flags": rng.choice([0, 0x8000]),
        "htype": 1,
    }
    chaddr = bytes.fromhex(f"5254000000{client:02x}")
    return encode(Packet(op=1, xid=rng.randrange(1 << 32), chaddr=chaddr, options=opts, **fields))


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_answers_exactly_like_the_general_path(sqlite_db: Database, seed: int) -> None:
    _setup(sqlite_db)
    general, fast = _responder(sqlite_db), _responder(sqlite_db)
    rng = random.Random(seed)
    now = time.time()
    packets = [_random_packet(rng) for _ in range(600)]
    packets += [path.read_bytes() for path in sorted(GOLDEN.glob("*.bin"))]
    answered = 0
    for data in packets:
        now += rng.random()
        expected = general.handle(parse(data), IFACE, now)
        got = fast.answer(*parse_fields(data), IFACE, now)
        assert _outgoing(got) == _outgoing(expected), parse(data)
        answered += expected is not None
    assert answered > 200


def test_plain_discover_and_request_never_build_a_packet(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(sqlite_db)
    responder = _responder(sqlite_db)

    def general(*_args: object) -> None:
        raise AssertionError("took the general path")

    monkeypatch.setattr(responder, "handle", general)
    chaddr = bytes.fromhex("525400000001")
    discover = encode(Packet(op=1, xid=1, chaddr=chaddr, giaddr=0x0A080002, options={53: bytes((DISCOVER,))}))
    offer = responder.answer(*parse_fields(discover), IFACE, time.time())
    assert offer is not None and offer.data is not None
    address = parse(offer.data).yiaddr
    request = encode(
        Packet(
            op=1,
            xid=1,
            chaddr=chaddr,
            giaddr=0x0A080002,
            options={53: bytes((REQUEST,)), 54: struct.pack("!I", SERVER), 50: struct.pack("!I", address)},
        )
    )
    ack = responder.answer(*parse_fields(request), IFACE, time.time())
    assert ack is not None and ack.lease is not None and ack.lease.address == address == 0x0A08000A
    assert ack.destination == ("10.8.0.2", 67)


@pytest.mark.parametrize("requested", [True, False])
def test_domain_search_list_goes_only_to_clients_that_ask_for_it(
    sqlite_db: Database, requested: bool
) -> None:
    _setup(sqlite_db)
    responder = _responder(sqlite_db)
    prl = bytes((1, 3, 6, 15, 119)) if requested else bytes((1, 3, 6, 15))
    for mac, vendor in (("525400000031", None), ("525400000032", b"PXEClient:Arch:00000:UNDI:002001")):
        opts = {53: bytes((DISCOVER,)), 55: prl, **({60: vendor} if vendor else {})}
        discover = encode(Packet(op=1, xid=3, chaddr=bytes.fromhex(mac), options=opts))
        offer = responder.answer(*parse_fields(discover), IFACE, time.time())  # fast and general path
        assert offer is not None and offer.data is not None
        sent = parse(offer.data).options
        assert (119 in sent) is requested
        assert sent[15] == b"kiln.lab"  # the domain name itself is always there
