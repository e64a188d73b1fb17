"""Encoders for the option values Kiln sends (RFC 2132, 3397, 4578; PXE 2.1; iPXE's option 175)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

SUBNET_MASK = 1
ROUTERS = 3
DNS_SERVERS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
MTU = 26
BROADCAST_ADDRESS = 28
NTP_SERVERS = 42
VENDOR_SPECIFIC = 43
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
MESSAGE = 56
RENEWAL_TIME = 58
REBINDING_TIME = 59
VENDOR_CLASS = 60
TFTP_SERVER_NAME = 66
BOOTFILE_NAME = 67
CLIENT_UUID = 97
DOMAIN_SEARCH = 119
RELAY_AGENT = 82
IPXE_ENCAP = 175

# iPXE encapsulated option 176 "no-pxedhcp": with it iPXE does not wait ~3 s for a proxyDHCP offer.
IPXE_NO_PXEDHCP = bytes((176, 1, 1))
# PXE 2.1 vendor option 43, sub-option 6 (discovery control) bit 3: boot the file named in this offer
# without a boot-server discovery round; a proxyDHCP offer must carry it or PXE ROMs try port 4011 menus.
PXE_DISCOVERY_CONTROL = bytes((6, 1, 8, 255))


def ip(value: int) -> bytes:
    return struct.pack("!I", value)


def ip_text(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ip_list(addresses: Iterable[str]) -> bytes:
    """Option bytes for a list of IPv4 addresses; IPv6 entries are skipped (they cannot be sent)."""
    out = b""
    for text in addresses:
        try:
            out += ipaddress.IPv4Address(text).packed
        except ValueError:
            continue
    return out


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def u16(value: int) -> bytes:
    return struct.pack("!H", value)


def text(value: str) -> bytes:
    return value.encode("ascii", "replace")


def domain_search(domains: Iterable[str]) -> bytes:
    """RFC 3397: DNS wire-format names, uncompressed (allowed, and simpler to get right)."""
    out = bytearray()
    for domain in domains:
        for label in domain.strip(".").split("."):
            raw = label.encode("ascii", "replace")[:63]
            if raw:
                out.append(len(raw))
                out += raw
        out.append(0)
    return bytes(out)
