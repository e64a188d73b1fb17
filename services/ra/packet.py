"""ICMPv6 router solicitation in, router advertisement out (RFC 4861 §4.1, §4.2): bytes only, no I/O.

The advertisement Kiln sends configures nothing: no prefix, M and O flags clear, router lifetime 0 (not a
default router). It exists because iPXE's IPv6 autoconfiguration otherwise waits for one for ~13 s on
every boot before it runs the boot script; any advertisement ends that wait.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
OPT_SOURCE_LINK_ADDRESS = 1

_RA = struct.Struct("!BBHBBHII")  # type, code, checksum, cur hop limit, flags, lifetime, reachable, retrans


class MalformedPacket(ValueError):
    """Not an ICMPv6 router solicitation this server answers."""


@dataclass(frozen=True, slots=True)
class RouterSolicitation:
    source_mac: bytes | None


def parse_solicitation(data: bytes) -> RouterSolicitation:
    """The ICMPv6 message (as a raw ICMPv6 socket returns it, without the IPv6 header)."""
    if len(data) < 8:
        raise MalformedPacket("shorter than a router solicitation")
    if data[0] != ROUTER_SOLICITATION or data[1] != 0:
        raise MalformedPacket(f"ICMPv6 type {data[0]} code {data[1]} is not a router solicitation")
    source_mac = None
    pos = 8
    while pos < len(data):
        if pos + 2 > len(data):
            raise MalformedPacket("truncated option header")
        kind, blocks = data[pos], data[pos + 1]
        length = blocks * 8
        if blocks == 0 or pos + length > len(data):
            raise MalformedPacket("option length 0 or past the end")  # RFC 4861 §4.6: discard
        if kind == OPT_SOURCE_LINK_ADDRESS and length >= 8:
            source_mac = data[pos + 2 : pos + 8]
        pos += length
    return RouterSolicitation(source_mac=source_mac)


def build_advertisement(router_mac: bytes, *, hop_limit: int = 64) -> bytes:
    """A router advertisement that announces no prefix, no DHCPv6, and no default route."""
    if len(router_mac) != 6:
        raise ValueError("router_mac must be 6 bytes")
    header = _RA.pack(ROUTER_ADVERTISEMENT, 0, 0, hop_limit, 0, 0, 0, 0)
    # the checksum stays 0: the kernel fills it in for raw ICMPv6 sockets (RFC 3542 §3.1)
    return header + bytes((OPT_SOURCE_LINK_ADDRESS, 1)) + router_mac
