"""The router-advertisement responder against the Linux kernel's own router solicitations, in namespaces."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import Settings
from services.ra import server
from services.ra.packet import (
    ROUTER_ADVERTISEMENT,
    MalformedPacket,
    build_advertisement,
    parse_solicitation,
)
from tests.netns import Namespace, veth

pytestmark = pytest.mark.netns


def test_advertisement_configures_nothing_and_names_the_router_mac() -> None:
    ra = build_advertisement(bytes.fromhex("020000000001"))
    assert ra[0] == ROUTER_ADVERTISEMENT and ra[1] == 0
    assert ra[5] == 0  # M and O clear: no DHCPv6
    assert ra[6:8] == b"\0\0"  # router lifetime 0: not a default router
    assert ra[16:24] == bytes.fromhex("0101020000000001")  # source link-layer address option only
    assert len(ra) == 24  # no prefix information option


def test_solicitation_with_source_link_address_parses() -> None:
    rs = bytes((133, 0, 0, 0, 0, 0, 0, 0, 1, 1)) + bytes.fromhex("525400123456")
    assert parse_solicitation(rs).source_mac == bytes.fromhex("525400123456")


@given(st.binary(max_size=64))
@settings(max_examples=2000, deadline=None)
def test_any_bytes_parse_or_raise_malformed_packet(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        parse_solicitation(data)


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[tuple[Namespace, Namespace]]:
    srv = Namespace.create("rasrv")
    cli = Namespace.create("racli")
    try:
        for ns in (srv, cli):
            ns.run(
                [
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.dad_transmits=0",
                    "net.ipv6.conf.default.dad_transmits=0",
                ]
            )
        cli.run(["sysctl", "-qw", "net.ipv6.conf.default.router_solicitation_delay=0"])
        veth(srv, "eth0", cli, "eth0")
        yield srv, cli
    finally:
        srv.delete()
        cli.delete()


def test_kernel_router_solicitation_gets_an_advertisement_at_once(
    segment: tuple[Namespace, Namespace], settings: Settings
) -> None:
    srv, cli = segment
    settings.dhcp_interfaces = ["eth0"]
    listener = cli.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    listener.settimeout(0.2)
    stop = threading.Event()
    # the responder's socket must live in the server namespace: run serve() on a thread that entered it
    thread = threading.Thread(target=_serve_in, args=(srv, settings, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        got: tuple[bytes, int] | None = None
        while got is None and time.monotonic() < deadline:
            # bouncing the link makes the client's kernel solicit again (RFC 4861 §6.3.7)
            cli.run(["ip", "link", "set", "eth0", "down"])
            cli.run(["ip", "link", "set", "eth0", "up"])
            until = time.monotonic() + 2
            while time.monotonic() < until:
                try:
                    data, ancillary, _flags, _addr = listener.recvmsg(1500, socket.CMSG_SPACE(4))
                except TimeoutError:
                    continue
                if data and data[0] == ROUTER_ADVERTISEMENT:
                    hop_limit = int.from_bytes(ancillary[0][2], "little") if ancillary else -1
                    got = (data, hop_limit)
                    break
        assert got is not None, "no router advertisement within 10 s"
        data, hop_limit = got
        assert hop_limit == 255  # RFC 4861 §6.1.2: anything else is dropped by the client
        assert data[5] == 0 and data[6:8] == b"\0\0"
        server_mac = srv.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
        assert data[18:24] == bytes.fromhex(server_mac.replace(":", ""))
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _serve_in(ns: Namespace, settings: Settings, stop: threading.Event) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/var/run/netns/{ns.name}") as handle:
        assert libc.setns(handle.fileno(), 0x40000000) == 0
    server.serve(settings, None, stop)  # type: ignore[arg-type]
