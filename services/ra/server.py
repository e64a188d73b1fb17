"""The router-advertisement responder (`kiln.services:ra`): one raw ICMPv6 socket per DHCP interface.

It answers each router solicitation with services.ra.packet's empty advertisement, to the all-nodes
group, so iPXE's IPv6 autoconfiguration ends in milliseconds instead of timing out after ~13 s.
"""

from __future__ import annotations

import fcntl
import logging
import select
import socket
import struct
import threading

from prometheus_client import Counter

from appliance.config import Settings
from appliance.db import Database
from services.ra.packet import ROUTER_SOLICITATION, MalformedPacket, build_advertisement, parse_solicitation

log = logging.getLogger(__name__)

ANSWERED = Counter("kiln_ra_advertisements_total", "Router advertisements sent in answer to a solicitation")
MALFORMED = Counter("kiln_ra_malformed_packets_total", "ICMPv6 packets dropped as not a valid solicitation")

ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
ICMP6_FILTER = 1  # <netinet/icmp6.h>, socket level IPPROTO_ICMPV6
SIOCGIFHWADDR = 0x8927


def _icmp6_filter_only(kind: int) -> bytes:
    # struct icmp6_filter: 256 bits, a set bit BLOCKS that type
    words = [0xFFFFFFFF] * 8
    words[kind >> 5] &= ~(1 << (kind & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


def _mac_of(sock: socket.socket, interface: str) -> bytes:
    # SIOCGIFHWADDR on the socket itself, not /sys: sysfs shows the namespace it was mounted in
    request = struct.pack("256s", interface.encode()[:15])
    return fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)[18:24]


def open_socket(interface: str) -> socket.socket:
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _icmp6_filter_only(ROUTER_SOLICITATION))
    group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("=I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    # RFC 4861 §6.1.2: receivers drop neighbour discovery messages whose hop limit is not 255
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    sock.setblocking(False)
    return sock


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Answer router solicitations on settings.dhcp_interfaces until `stop` is set."""
    del db
    if not settings.dhcp_interfaces:
        log.warning("ra: no interface configured (dhcp.interfaces); not answering")
        stop.wait()
        return
    sockets: dict[socket.socket, tuple[str, int, bytes]] = {}
    for interface in settings.dhcp_interfaces:
        try:
            sock = open_socket(interface)
        except OSError as exc:
            log.error("ra: cannot listen on %s: %s", interface, exc)
            continue
        sockets[sock] = (
            interface,
            socket.if_nametoindex(interface),
            build_advertisement(_mac_of(sock, interface)),
        )
    log.info("ra: ready on %s", ", ".join(name for name, _, _ in sockets.values()) or "no interface")
    try:
        while not stop.is_set():
            readable, _, _ = select.select(list(sockets), [], [], 0.25)
            for sock in readable:
                _answer(sock, *sockets[sock])
    finally:
        for sock in sockets:
            sock.close()


def _answer(sock: socket.socket, interface: str, index: int, advertisement: bytes) -> None:
    for _ in range(64):
        try:
            data, source = sock.recvfrom(1500)
        except BlockingIOError:
            return
        try:
            parse_solicitation(data)
        except MalformedPacket as exc:
            MALFORMED.inc()
            log.debug("ra: dropped packet from %s on %s: %s", source[0], interface, exc)
            continue
        try:
            sock.sendto(advertisement, (ALL_NODES, 0, 0, index))
        except OSError as exc:
            # e.g. the interface's link-local address is still tentative (DAD); the client solicits again
            log.info("ra: cannot answer %s on %s yet: %s", source[0], interface, exc)
            continue
        ANSWERED.inc()
