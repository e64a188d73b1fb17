from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dhcp import bootfile, options
from services.dhcp.packet import (
    DISCOVER,
    MAGIC,
    OFFER,
    MalformedPacket,
    Packet,
    encode,
    encode_options,
    parse,
)

DATA = Path(__file__).parent.parent / "data" / "dhcp"
GOLDEN = {path.name: path.read_bytes() for path in sorted(DATA.glob("*.bin"))}


def _request(opts: dict[int, bytes], **fields: int) -> bytes:
    return encode(Packet(op=1, xid=0x1234, chaddr=bytes.fromhex("525400aabbcc"), options=opts, **fields))


def _ipxe_discover(arch: int = 0) -> Packet:
    # what BIOS iPXE sends (LAB.md): arch 0, PXEClient vendor class, raw "iPXE" user class, 175, UUID
    return parse(
        _request(
            {
                53: bytes([DISCOVER]),
                93: struct.pack("!H", arch),
                60: b"PXEClient:Arch:00000:UNDI:002001",
                77: b"iPXE",
                175: bytes((177, 5, 1, 0x10, 0xEC, 0x81, 0x23)),
                97: bytes(17),
            }
        )
    )


def test_golden_packets_from_real_clients_parse() -> None:
    assert set(GOLDEN) >= {
        "dhclient_discover.bin",
        "nmap_discover.bin",
        "perfdhcp_discover.bin",
        "ipxe_bios_discover.bin",
    }
    for name, data in GOLDEN.items():
        packet = parse(data)
        assert packet.message_type == DISCOVER, name
        assert len(packet.chaddr) == 6
        assert packet.options[55], name


def test_perfdhcp_discover_fields() -> None:
    packet = parse(GOLDEN["perfdhcp_discover.bin"])
    assert packet.mac == "00:0c:01:02:03:04"
    assert packet.client_id == "01000c01020304"
    assert list(packet.options[55]) == [1, 28, 2, 3, 15, 6, 12]


def test_encode_then_parse_gives_back_the_same_packet() -> None:
    for data in GOLDEN.values():
        packet = parse(data)
        assert parse(encode(packet)) == packet


def test_reply_is_padded_to_bootp_minimum_and_starts_with_header() -> None:
    data = encode(Packet(op=2, xid=7, chaddr=b"\x01" * 6, yiaddr=0x0A000005, options={53: bytes([OFFER])}))
    assert len(data) == 300
    assert data[236:240] == MAGIC
    assert data[16:20] == bytes((10, 0, 0, 5))


def test_long_option_is_split_and_concatenated_again() -> None:
    long_value = bytes(range(256)) * 2
    wire = encode_options({119: long_value})
    assert wire[0] == 119 and wire[1] == 255
    packet = parse(_request({53: bytes([DISCOVER]), 119: long_value}))
    assert packet.options[119] == long_value


def test_overloaded_file_field_options_are_read() -> None:
    data = bytearray(_request({53: bytes([DISCOVER]), 52: b"\x01"}))
    data[108:116] = bytes((12, 4)) + b"node" + b"\xff" + b"\0"
    packet = parse(bytes(data))
    assert packet.hostname == "node"
    assert packet.file == b""


def test_overload_inside_overloaded_field_does_not_loop() -> None:
    data = bytearray(_request({53: bytes([DISCOVER]), 52: b"\x03"}))
    data[108:112] = bytes((52, 1, 3, 255))
    data[44:48] = bytes((52, 1, 3, 255))
    assert parse(bytes(data)).message_type == DISCOVER


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (GOLDEN["dhclient_discover.bin"][:200], "too short"),
        (GOLDEN["dhclient_discover.bin"][:236] + b"abcd\xff", "magic"),
        (GOLDEN["perfdhcp_discover.bin"][:243] + b"\x37\xf0\x01", "overruns"),
        (GOLDEN["perfdhcp_discover.bin"][:-1], "End"),
        (GOLDEN["perfdhcp_discover.bin"] + bytes(10000), "larger"),
        (b"\x03" + GOLDEN["perfdhcp_discover.bin"][1:], "op"),
        (_request({53: b"\x01\x01"}), "option 53"),
        (_request({53: b"\x63"}), "message type"),
        (_request({53: b"\x01", 50: b"\x0a\x00"}), "option 50"),
        (_request({53: b"\x01", 93: b"\x00"}), "architecture"),
        (_request({53: b"\x01", 52: b"\x07"}), "overload"),
    ],
)
def test_bad_packets_raise_malformed_packet(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse(data)


def test_hardware_address_length_over_16_is_malformed() -> None:
    data = bytearray(GOLDEN["dhclient_discover.bin"])
    data[2] = 17
    with pytest.raises(MalformedPacket, match="hardware address"):
        parse(bytes(data))


def test_ipxe_user_class_raw_and_rfc3004_forms() -> None:
    assert _ipxe_discover().is_ipxe
    assert parse(_request({53: b"\x01", 77: b"\x04iPXE"})).is_ipxe
    assert not parse(_request({53: b"\x01", 77: b"gPXE"})).is_ipxe


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        ({93: b"\x00\x00", 60: b"PXEClient:Arch:00000:UNDI:002001"}, "undionly.kpxe"),
        ({93: b"\x00\x07", 60: b"PXEClient:Arch:00007:UNDI:003016"}, "snponly.efi"),
        ({93: b"\x00\x06"}, "snponly.efi"),
        ({93: b"\x00\x09"}, "snponly.efi"),
        ({93: b"\x00\x0b"}, "ipxe-arm64.efi"),
        (
            {93: b"\x00\x10", 60: b"HTTPClient:Arch:00016:UNDI:003000"},
            "http://10.1.0.1:8080/boot/snponly.efi",
        ),
        ({93: b"\x00\x07", 77: b"iPXE"}, "http://10.1.0.1:8080/boot/ipxe?mac=${net0/mac}"),
    ],
)
def test_boot_file_follows_client_architecture(opts: dict[int, bytes], expected: str) -> None:
    packet = parse(_request({53: b"\x01", **opts}))
    choice = bootfile.choose(packet, advertise="10.1.0.1", web_port=8080, uefi_loader="snponly.efi")
    assert choice is not None
    assert choice.filename == expected
    assert choice.vendor_class == ("HTTPClient" if b"HTTPClient" in opts.get(60, b"") else None)


def test_plain_client_gets_no_boot_file() -> None:
    packet = parse(GOLDEN["dhclient_discover.bin"])
    assert bootfile.choose(packet, advertise="10.1.0.1", web_port=80, uefi_loader="ipxe.efi") is None
    assert not bootfile.is_netboot_client(packet)
    assert bootfile.is_netboot_client(_ipxe_discover())


def test_domain_search_is_dns_wire_format() -> None:
    assert options.domain_search(["kiln.lab", "lab."]) == b"\x04kiln\x03lab\x00\x03lab\x00"


# The fuzz tests drive the pure parser directly (no sockets). Hypothesis draws the seeds and shrinks a
# failure; each example then feeds several packets through the parser so 100,000+ packets take seconds.
def _fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )


def _parse_or_malformed(data: bytes) -> None:
    try:
        packet = parse(data)
    except MalformedPacket:
        return
    # anything that parses must also survive the accessors the responder uses
    _ = (packet.message_type, packet.mac, packet.requested_address, packet.server_id, packet.client_arch)
    _ = (packet.vendor_class, packet.is_ipxe, packet.hostname, packet.client_id)


_HEADERS = [data[:240] for data in GOLDEN.values()]
assert len(_HEADERS) == 5


@_fuzz(5_000)
@given(st.binary(min_size=0, max_size=700))
def test_fuzz_random_bytes_raise_only_malformed_packet(data: bytes) -> None:
    # 7 packets per example (35,000 in all): raw bytes, bytes with the magic cookie in place, and random
    # options behind each real client's header (so option parsing, not just the cookie check, sees them)
    _parse_or_malformed(data)
    _parse_or_malformed(data[:236].ljust(236, b"\x01") + MAGIC + data[236:])
    for header in _HEADERS:
        _parse_or_malformed(header + data)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(4)
        position = rng.randint(0, len(out))
        if kind == 0 and position < len(out):
            out[position] = rng.randrange(256)
        elif kind == 1:
            out[position:position] = rng.randbytes(rng.randint(1, 12))
        elif kind == 2:
            del out[position : position + rng.randint(1, 40)]
        else:
            out = out[:position]
    return bytes(out)


@_fuzz(1_700)  # x 40 mutations = 68,000 packets
@given(st.sampled_from(sorted(GOLDEN)), st.integers(0, 2**32))
def test_fuzz_mutated_real_packets_raise_only_malformed_packet(name: str, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        _parse_or_malformed(_mutate(GOLDEN[name], rng))


@pytest.mark.parametrize(("name", "arch"), [("ipxe_bios_discover.bin", 0), ("ipxe_uefi_discover.bin", 7)])
def test_real_ipxe_discover_is_recognised_and_gets_the_script_url(name: str, arch: int) -> None:
    packet = parse(GOLDEN[name])
    assert packet.is_ipxe and packet.client_arch == arch
    assert packet.vendor_class.startswith(f"PXEClient:Arch:0000{arch}")
    assert {60, 77, 93, 97, 175} <= set(packet.options)
    choice = bootfile.choose(packet, advertise="10.1.0.1", web_port=8080, uefi_loader="ipxe.efi")
    assert choice is not None and choice.filename == "http://10.1.0.1:8080/boot/ipxe?mac=${net0/mac}"
