"""The DNS query parser: what it accepts, what it refuses, and fuzzing (only MalformedPacket escapes)."""

from __future__ import annotations

import random
import struct

import pytest
from dnslib import EDNS0, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dns import packet


def _query(name: str = "n1.kiln.lab", qtype: str = "A", edns: int | None = None) -> bytes:
    record = DNSRecord.question(name, qtype)
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns))
    return bytes(record.pack())


def test_plain_query_parses_name_type_and_question_bounds() -> None:
    raw = _query("N1.Kiln.Lab", "AAAA")
    q = packet.parse_query(raw)
    assert q.labels == (b"N1", b"Kiln", b"Lab")
    assert q.name == "n1.kiln.lab"
    assert (q.qtype, q.qclass, q.edns_size) == (28, 1, None)
    assert raw[q.question_end :] == b""
    assert q.rd and not q.is_response and q.opcode == 0


def test_edns_payload_size_is_read_and_small_sizes_mean_512() -> None:
    assert packet.parse_query(_query(edns=4096)).edns_size == 4096
    assert packet.parse_query(_query(edns=100)).edns_size == 512


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 11,
        struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0),  # no question
        struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2,  # two questions
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05ab",  # label past the end
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer in question
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x00\x00\x01",  # no class
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
        + (b"\x3f" + b"a" * 63) * 5
        + b"\x00\x00\x01\x00\x01",  # > 255
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 1) + b"\x00\x00\x01\x00\x01",  # OPT missing
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 1)
        + b"\x00\x00\x01\x00\x01"
        + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05",
    ],
)
def test_malformed_queries_raise_the_one_error(raw: bytes) -> None:
    with pytest.raises(packet.MalformedPacket):
        packet.parse_query(raw)


def test_refused_reply_copies_id_rd_and_question() -> None:
    raw = _query("example.com")
    q = packet.parse_query(raw)
    reply = DNSRecord.parse(packet.header_reply(raw, q, packet.RCODE_REFUSED))
    assert (
        reply.header.id == q.id and reply.header.rcode == 5 and reply.header.rd == 1 and reply.header.qr == 1
    )
    assert str(reply.q.qname) == "example.com."


def _check(raw: bytes) -> None:
    try:
        q = packet.parse_query(raw)
    except packet.MalformedPacket:
        return
    assert 12 < q.question_end <= len(raw)
    packet.header_reply(raw, q, packet.RCODE_REFUSED)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_malformed_packet(raw: bytes) -> None:
    _check(raw)


_VALID = [
    _query(),
    _query("x.y.z", "PTR", edns=1232),
    _query("kiln.lab", "SOA"),
    _query("a" * 60 + ".b", "ANY"),
]


# Each example mutates its base packet 50 times with a Random seeded by hypothesis: 15,000 mutated
# packets in about a second (drawing every flip through hypothesis cost ~10 ms an example here).
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.integers(0, 2**64).map(random.Random))
def test_mutated_queries_parse_or_raise_malformed_packet(base: bytes, rnd: random.Random) -> None:
    for _ in range(50):
        raw = bytearray(base)
        for _ in range(rnd.randrange(1, 7)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        _check(bytes(raw[: rnd.randrange(len(raw) + 1)]))
