"""What to answer to a DHCP message: RFC 2131 state handling, options, boot information.

No sockets here: `Responder.handle()` takes a parsed packet and the interface it came in on and returns
an `Outgoing` (bytes and where to send them, and the lease row that must be committed first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.dhcp import bootfile, options
from services.dhcp.backend import Backend, NetworkInfo
from services.dhcp.leases import LeaseRecord
from services.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    DECLINE,
    DISCOVER,
    HEADER_SIZE,
    HEADER_STRUCT,
    INFORM,
    MAGIC,
    MIN_REPLY,
    NAK,
    OFFER,
    OPT_CLIENT_UUID,
    OPT_END,
    OPT_RELAY_AGENT,
    RELEASE,
    REQUEST,
    Header,
    Packet,
    encode,
    encode_options,
    packet_from,
)

log = logging.getLogger(__name__)

BROADCAST = "255.255.255.255"
_TYPE_VALUE = {kind: bytes((kind,)) for kind in range(1, 19)}
_PACK_HEADER = HEADER_STRUCT.pack
_OFFER_OPTION = bytes((53, 1, OFFER))
_ACK_OPTION = bytes((53, 1, ACK))
_DOMAIN_SEARCH = options.DOMAIN_SEARCH  # an int: `in` on the parameter request list bytes
# vendor classes of netbooting clients (bootfile.is_netboot_client); they take the general path
_NETBOOT_VENDORS = (b"PXEClient", b"HTTPClient")
# relay agent information (echoed), client architecture and user class (netboot): the general path
_GENERAL_OPTIONS = frozenset({OPT_RELAY_AGENT, 93, 77})
SERVER_PORT = 67
CLIENT_PORT = 68
_BROADCAST_DESTINATION = (BROADCAST, CLIENT_PORT)


@dataclass(frozen=True, slots=True)
class Interface:
    """A served interface: its name and its own IPv4 address (the server identifier on it)."""

    name: str
    address: int


@dataclass(slots=True)
class Outgoing:
    data: bytes | None
    destination: tuple[str, int]
    # written durably before `data` is sent (ACK) or with nothing to send (RELEASE, DECLINE)
    lease: LeaseRecord | None = None
    kind: int = 0


@dataclass(frozen=True)
class ResponderConfig:
    advertise: str | None  # None: the receiving interface's address
    web_port: int
    uefi_loader: str
    lease_seconds: int
    domain: str
    proxy: bool = False


class Responder:
    def __init__(self, backend: Backend, config: ResponderConfig) -> None:
        self.backend = backend
        self.config = config
        # per (network id, server id): the options every reply on it carries, as a dict and pre-encoded,
        # with the NetworkInfo they were made from (a refreshed index brings new objects)
        self._static: dict[tuple[int, int, bool], tuple[NetworkInfo, dict[int, bytes], bytes]] = {}
        self._text: dict[int, str] = {}
        self._proxy_mode = config.proxy
        # fast path: per (network id, server id) the bytes after the header of an OFFER and of an ACK;
        # per relay address where its replies go
        self._tails: dict[tuple[int, int, bool], tuple[NetworkInfo, bytes, bytes]] = {}
        self._relay_destination: dict[int, tuple[str, int]] = {}
        self._lease_seconds = config.lease_seconds

    # -- entry points -----------------------------------------------------------------------------------

    def answer(self, header: Header, opts: dict[int, bytes], iface: Interface, now: float) -> Outgoing | None:
        """`handle()` for the fields `packet.parse_fields()` returned, byte for byte the same answer.

        The common case, a DISCOVER or a successful REQUEST from a client that is not netbooting and
        not relayed with option 82, is answered here without building a request or a reply `Packet`:
        the reply header is packed in one call and the network's options are appended pre-encoded.
        Everything else (and every NAK) goes to `handle()`; a REQUEST is sent there only before
        anything changed in the backend, so it decides afresh.
        """
        kind_value = opts.get(53)
        if (
            kind_value is None
            or header[0] != BOOTREQUEST
            or self._proxy_mode
            or not opts.keys().isdisjoint(_GENERAL_OPTIONS)
            or opts.get(60, b"").startswith(_NETBOOT_VENDORS)
        ):
            return self.handle(packet_from(header, opts), iface, now)
        kind = kind_value[0]
        if kind != DISCOVER and kind != REQUEST:
            return self.handle(packet_from(header, opts), iface, now)
        giaddr = header[10]
        network = self.backend.network_for(iface.name, iface.address, giaddr)
        if network is None:
            return None
        chaddr = header[11][: header[2]]
        mac = chaddr.hex(":")
        requested = opts.get(50)
        ciaddr = header[7]
        if kind == DISCOVER:
            binding = self.backend.allocate(
                network, mac, int.from_bytes(requested, "big") if requested else None, now
            )
            if binding is None:
                return None
            ends = 0.0
            kind = OFFER
            option = _OFFER_OPTION
        else:
            server_id = opts.get(54)
            if server_id is not None:
                if int.from_bytes(server_id, "big") != iface.address:
                    return self.handle(packet_from(header, opts), iface, now)
                address = (int.from_bytes(requested, "big") if requested else 0) or ciaddr
            elif ciaddr:
                address = ciaddr
            else:
                address = int.from_bytes(requested, "big") if requested else 0
            if not address or address & network.netmask != network.address:
                return self.handle(packet_from(header, opts), iface, now)
            ends = now + self._lease_seconds
            binding = self.backend.claim(network, mac, address, now, ends)
            if binding is None:
                return self.handle(packet_from(header, opts), iface, now)
            kind = ACK
            option = _ACK_OPTION
        hostname = binding.hostname
        # the domain search list (119) only for clients that ask for it (iPXE, dhclient do), like ISC and Kea
        search = _DOMAIN_SEARCH in opts.get(55, b"")
        data = _PACK_HEADER(
            BOOTREPLY, header[1], len(chaddr), 0, header[4], 0, header[6], ciaddr, binding.address, 0,
            giaddr, chaddr, b"", b"", MAGIC,
        )  # fmt: skip
        if hostname:
            wire = self._static_options(network, iface.address, search)[1]
            data += option + encode_options({options.HOSTNAME: options.text(hostname)}, wire)
            if len(data) < MIN_REPLY:
                data += bytes(MIN_REPLY - len(data))
        else:
            tails = self._tails.get((network.id, iface.address, search))
            if tails is None or tails[0] is not network:
                tails = self._make_tails(network, iface.address, search)
            data += tails[1] if kind == OFFER else tails[2]
        if giaddr:
            destination = self._relay_destination.get(giaddr) or self._to_relay(giaddr)
        elif ciaddr:
            destination = (self._ip_text(ciaddr), CLIENT_PORT)
        else:
            destination = _BROADCAST_DESTINATION
        if kind == OFFER:
            return Outgoing(data, destination, None, OFFER)
        client_id = opts.get(61)
        sent_name = opts.get(12)
        record = LeaseRecord(
            network.id,
            mac,
            binding.address,
            "active",
            now,
            ends,
            client_id.hex() if client_id else None,
            hostname or (sent_name.decode("ascii", "replace") if sent_name else None),
            self._ip_text(giaddr) if giaddr else None,
            None,
            opts.get(60, b"").decode("ascii", "replace") or None,
            False,
        )
        return Outgoing(data, destination, record, ACK)

    def handle(self, packet: Packet, iface: Interface, now: float) -> Outgoing | None:
        kind = packet.message_type
        if packet.op != BOOTREQUEST or kind is None:
            return None
        if self.config.proxy:
            return self._proxy(packet, iface, kind)
        network = self.backend.network_for(iface.name, iface.address, packet.giaddr)
        if network is None:
            return None
        mac = packet.mac
        if kind == DISCOVER:
            binding = self.backend.allocate(network, mac, packet.requested_address, now)
            if binding is None:
                return None
            return self._reply(packet, iface, network, OFFER, binding.address, binding.hostname)
        if kind == REQUEST:
            return self._request(packet, iface, network, now)
        if kind == DECLINE:
            return self._give_back(packet, iface, network, packet.requested_address, "declined", now)
        if kind == RELEASE:
            return self._give_back(packet, iface, network, packet.ciaddr, "released", now)
        if kind == INFORM:
            return self._reply(packet, iface, network, ACK, 0, None, lease=False)
        return None

    def _request(self, packet: Packet, iface: Interface, network: NetworkInfo, now: float) -> Outgoing | None:
        server_id = packet.server_id
        if server_id is not None:
            # SELECTING: the client answers one server's offer and tells the others by broadcast
            if server_id != iface.address:
                self.backend.forget_offer(network, packet.mac)
                return None
            address = packet.requested_address or packet.ciaddr
        elif packet.ciaddr:
            address = packet.ciaddr  # RENEWING (unicast) or REBINDING (broadcast)
        else:
            address = packet.requested_address or 0  # INIT-REBOOT
        if not address:
            return None
        if not network.contains(address):
            return self._nak(packet, iface, "address not on this network")
        ends = now + self.config.lease_seconds
        mac = packet.mac
        binding = self.backend.claim(network, mac, address, now, ends)
        if binding is None:
            return self._nak(packet, iface, "address not available")
        reply = self._reply(packet, iface, network, ACK, binding.address, binding.hostname)
        reply.lease = LeaseRecord(
            network.id,
            mac,
            binding.address,
            "active",
            now,
            ends,
            packet.client_id,
            binding.hostname or packet.hostname,
            self._ip_text(packet.giaddr) if packet.giaddr else None,
            packet.client_arch,
            packet.vendor_class or None,
            packet.is_ipxe,
        )
        return reply

    def _give_back(
        self,
        packet: Packet,
        iface: Interface,
        network: NetworkInfo,
        address: int | None,
        state: str,
        now: float,
    ) -> Outgoing | None:
        if not address or (packet.server_id is not None and packet.server_id != iface.address):
            return None
        if not self.backend.release(network, packet.mac, address, state, now):
            return None
        ends = now + (600 if state == "declined" else 0)
        record = LeaseRecord(network.id, packet.mac, address, state, now, ends)
        kind = DECLINE if state == "declined" else RELEASE
        return Outgoing(None, ("", 0), lease=record, kind=kind)

    # -- replies ----------------------------------------------------------------------------------------

    def _destination(self, packet: Packet, kind: int) -> tuple[str, int]:
        if packet.giaddr:
            return self._ip_text(packet.giaddr), SERVER_PORT
        if kind != NAK and packet.ciaddr:
            return self._ip_text(packet.ciaddr), CLIENT_PORT
        # A client without an address cannot answer ARP; broadcasting avoids injecting ARP entries.
        return BROADCAST, CLIENT_PORT

    def _nak(self, packet: Packet, iface: Interface, why: str) -> Outgoing:
        log.debug("dhcp: NAK %s xid=%08x: %s", packet.mac, packet.xid, why)
        reply = Packet(
            op=BOOTREPLY,
            xid=packet.xid,
            chaddr=packet.chaddr,
            htype=packet.htype,
            flags=packet.flags | (BROADCAST_FLAG if packet.giaddr else 0),
            giaddr=packet.giaddr,
            options={53: bytes((NAK,)), 54: options.ip(iface.address), 56: options.text(why)},
        )
        if OPT_RELAY_AGENT in packet.options:
            reply.options[OPT_RELAY_AGENT] = packet.options[OPT_RELAY_AGENT]
        return Outgoing(encode(reply), self._destination(packet, NAK), kind=NAK)

    def _ip_text(self, address: int) -> str:
        text = self._text.get(address)
        if text is None:
            if len(self._text) > 4096:
                self._text.clear()
            text = self._text[address] = options.ip_text(address)
        return text

    def _make_tails(
        self, network: NetworkInfo, server_id: int, search: bool
    ) -> tuple[NetworkInfo, bytes, bytes]:
        """What follows the header of an OFFER and of an ACK without a host name on `network`: message
        type, the network's options, End, and the padding up to the BOOTP minimum (fast path)."""
        if len(self._tails) > 1024:
            self._tails.clear()
        wire = self._static_options(network, server_id, search)[1] + bytes((OPT_END,))
        pad = bytes(max(0, MIN_REPLY - HEADER_SIZE - len(_OFFER_OPTION) - len(wire)))
        tails = (network, _OFFER_OPTION + wire + pad, _ACK_OPTION + wire + pad)
        self._tails[(network.id, server_id, search)] = tails
        return tails

    def _to_relay(self, giaddr: int) -> tuple[str, int]:
        if len(self._relay_destination) > 4096:
            self._relay_destination.clear()
        destination = self._relay_destination[giaddr] = (self._ip_text(giaddr), SERVER_PORT)
        return destination

    def _static_options(
        self, network: NetworkInfo, server_id: int, search: bool
    ) -> tuple[dict[int, bytes], bytes]:
        key = (network.id, server_id, search)
        cached = self._static.get(key)
        if cached is not None and cached[0] is network:
            return cached[1], cached[2]
        if len(self._static) > 1024:
            self._static.clear()
        advertise = self.config.advertise or options.ip_text(server_id)
        lease = self.config.lease_seconds
        static: dict[int, bytes] = {
            options.SERVER_ID: options.ip(server_id),
            options.LEASE_TIME: options.u32(lease),
            options.RENEWAL_TIME: options.u32(lease // 2),
            options.REBINDING_TIME: options.u32(lease * 7 // 8),
            options.SUBNET_MASK: options.ip(network.netmask),
        }
        if network.routers:
            static[options.ROUTERS] = options.ip_list(network.routers)
        static[options.DNS_SERVERS] = options.ip_list(network.dns_servers or (advertise,))
        domain = network.domain or self.config.domain
        static[options.DOMAIN_NAME] = options.text(domain)
        static[options.BROADCAST_ADDRESS] = options.ip(network.broadcast)
        if network.ntp_servers:
            static[options.NTP_SERVERS] = options.ip_list(network.ntp_servers)
        if network.mtu:
            static[options.MTU] = options.u16(network.mtu)
        if search:
            static[options.DOMAIN_SEARCH] = options.domain_search([domain])
        wire = encode_options(static)[:-1]
        self._static[key] = (network, static, wire)
        return static, wire

    def _reply(
        self,
        packet: Packet,
        iface: Interface,
        network: NetworkInfo,
        kind: int,
        address: int,
        hostname: str | None,
        *,
        lease: bool = True,
    ) -> Outgoing:
        opts: dict[int, bytes] = {53: _TYPE_VALUE[kind]}
        search = _DOMAIN_SEARCH in packet.options.get(55, b"")
        static, wire = self._static_options(network, iface.address, search)
        if not lease:
            # INFORM: configuration only, never a lease time (RFC 2131 §3.4)
            opts.update((k, v) for k, v in static.items() if k not in (51, 58, 59))
            wire = b""
        if hostname:
            opts[options.HOSTNAME] = options.text(hostname)
        # positional (op, xid, chaddr, htype, hops, secs, flags, ciaddr, yiaddr, siaddr, giaddr, sname,
        # file, options): this runs for every OFFER and ACK
        reply = Packet(
            BOOTREPLY, packet.xid, packet.chaddr, packet.htype, 0, 0, packet.flags, packet.ciaddr, address, 0,
            packet.giaddr, b"", b"", opts,
        )  # fmt: skip
        self._boot(packet, reply, iface)
        if OPT_RELAY_AGENT in packet.options:
            opts[OPT_RELAY_AGENT] = packet.options[OPT_RELAY_AGENT]
        return Outgoing(encode(reply, wire), self._destination(packet, kind), kind=kind)

    def _boot(self, packet: Packet, reply: Packet, iface: Interface) -> bool:
        """Add boot information for a netbooting client; False for any other client."""
        if not bootfile.is_netboot_client(packet):
            return False
        advertise = self.config.advertise or options.ip_text(iface.address)
        choice = bootfile.choose(
            packet, advertise=advertise, web_port=self.config.web_port, uefi_loader=self.config.uefi_loader
        )
        if choice is None:
            return False
        opts = reply.options
        reply.siaddr = options.ip_int(advertise)
        name = options.text(choice.filename)
        if len(name) <= 127:
            reply.file = name
        if not choice.over_http:
            opts[options.TFTP_SERVER_NAME] = options.text(advertise)
        opts[options.BOOTFILE_NAME] = name
        if choice.vendor_class:
            opts[options.VENDOR_CLASS] = options.text(choice.vendor_class)
        # OVMF's PXE DECLINEs a full-server ACK that echoes option 97 ("Lease is denied upon entering
        # bound"); dnsmasq does not echo it either. PXE 2.1 proxy offers do carry it.
        if self.config.proxy and OPT_CLIENT_UUID in packet.options:
            opts[OPT_CLIENT_UUID] = packet.options[OPT_CLIENT_UUID]
        if packet.is_ipxe and not self.config.proxy:
            opts[options.IPXE_ENCAP] = options.IPXE_NO_PXEDHCP
        return True

    # -- proxyDHCP --------------------------------------------------------------------------------------

    def _proxy(self, packet: Packet, iface: Interface, kind: int) -> Outgoing | None:
        """Boot information only, no address: another server on the segment owns addresses (PXE 2.1)."""
        if kind not in (DISCOVER, REQUEST, INFORM) or not bootfile.is_netboot_client(packet):
            return None
        if kind == REQUEST and packet.server_id not in (None, iface.address):
            return None
        reply = Packet(
            op=BOOTREPLY,
            xid=packet.xid,
            chaddr=packet.chaddr,
            htype=packet.htype,
            flags=packet.flags,
            ciaddr=packet.ciaddr,
            giaddr=packet.giaddr,
            options={53: bytes((OFFER if kind == DISCOVER else ACK,)), 54: options.ip(iface.address)},
        )
        if not self._boot(packet, reply, iface):
            return None
        reply.options.setdefault(options.VENDOR_CLASS, b"PXEClient")
        reply.options[options.VENDOR_SPECIFIC] = options.PXE_DISCOVERY_CONTROL
        return Outgoing(encode(reply), self._destination(packet, OFFER), kind=kind)
