"""The TFTP packet module: round trips, option negotiation, and fuzzing of the parser."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tftp import packet


def test_rrq_with_options_round_trips_with_lowercased_option_names() -> None:
    raw = packet.build_rrq("boot/ipxe.efi", "octet", {"BLKSIZE": "1468", "tsize": "0"})
    assert packet.parse(raw) == packet.Request(
        packet.RRQ, "boot/ipxe.efi", "octet", {"blksize": "1468", "tsize": "0"}
    )


def test_mode_is_case_insensitive_and_unknown_modes_are_malformed() -> None:
    assert packet.parse(b"\x00\x01f\x00OCTET\x00").mode == "octet"  # type: ignore[union-attr]
    with pytest.raises(packet.MalformedPacket):
        packet.parse(b"\x00\x01f\x00binary\x00")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x00\x01",
        b"\x00\x01file",  # no NUL
        b"\x00\x01file\x00",  # no mode
        b"\x00\x01\x00octet\x00",  # empty name
        b"\x00\x01f\x00octet\x00blksize\x00",  # option without value
        b"\x00\x04\x00\x01\x00",  # ACK with trailing byte
        b"\x00\x07\x00\x00",  # unknown opcode
        b"\x00\x06a\x00",  # OACK option without value
    ],
)
def test_malformed_inputs_raise_the_one_error(raw: bytes) -> None:
    with pytest.raises(packet.MalformedPacket):
        packet.parse(raw)


def test_data_ack_error_oack_round_trip() -> None:
    assert packet.parse(packet.build_data(70000, b"abc")) == packet.Data(70000 & 0xFFFF, b"abc")
    assert packet.parse(packet.build_ack(7)) == packet.Ack(7)
    assert packet.parse(packet.build_error(2, "no")) == packet.Error(2, "no")
    assert packet.parse(b"\x00\x05\x00\x01no NUL") == packet.Error(1, "no NUL")
    assert packet.parse(packet.build_oack({"blksize": "1468"})) == packet.OptionAck({"blksize": "1468"})


def test_ack_block_fast_path_agrees_with_the_parser() -> None:
    assert packet.ack_block(packet.build_ack(65535)) == 65535
    assert packet.ack_block(b"\x00\x04\x00") == -1
    assert packet.ack_block(packet.build_data(1, b"")) == -1


def test_negotiation_answers_known_options_within_limits() -> None:
    nego = packet.negotiate(
        {"blksize": "1468", "tsize": "0", "timeout": "3", "windowsize": "4", "rollover": "0"}, 1234
    )
    assert (nego.blksize, nego.timeout, nego.windowsize) == (1468, 3.0, 4)
    assert nego.oack == {"blksize": "1468", "tsize": "1234", "timeout": "3", "windowsize": "4"}


def test_negotiation_caps_blksize_and_drops_bad_values() -> None:
    nego = packet.negotiate({"blksize": "99999", "timeout": "0", "windowsize": "x"}, 10, max_blksize=8192)
    assert nego.blksize == 8192
    assert nego.oack == {"blksize": "8192"}
    assert packet.negotiate({"blksize": "7"}, 10).oack == {}
    assert packet.negotiate({}, 10) == packet.Negotiated()


def _check(raw: bytes) -> None:
    try:
        result = packet.parse(raw)
    except packet.MalformedPacket:
        return
    assert isinstance(result, packet.Request | packet.Data | packet.Ack | packet.Error | packet.OptionAck)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_malformed_packet(raw: bytes) -> None:
    _check(raw)
    packet.ack_block(raw)


_VALID = [
    packet.build_rrq("undionly.kpxe", options={"blksize": "1468", "tsize": "0", "windowsize": "4"}),
    packet.build_wrq("x", "netascii"),
    packet.build_data(3, b"payload"),
    packet.build_ack(9),
    packet.build_error(1, "not found"),
    packet.build_oack({"tsize": "100"}),
]


# Each example mutates its base packet 50 times with a Random seeded by hypothesis: 15,000 mutated
# packets in about a second (drawing every flip through hypothesis cost ~10 ms an example here).
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.integers(0, 2**64).map(random.Random))
def test_mutated_valid_packets_parse_or_raise_malformed_packet(base: bytes, rnd: random.Random) -> None:
    for _ in range(50):
        raw = bytearray(base)
        for _ in range(rnd.randrange(1, 7)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        _check(bytes(raw[: rnd.randrange(len(raw) + 1)]))
