"""DHCPv4 messages: bytes in, a small dataclass out, and back (RFC 2131, 2132, 3396).

Pure: no sockets, no database, no clock. Anything that is not a well-formed BOOTP/DHCP message raises the
one `MalformedPacket` error, so a responder needs one `except` to count and drop bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from appliance.errors import KilnError

# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file, cookie
_HEADER = struct.Struct("!BBBBIHHIIII16s64s128s4s")
HEADER_SIZE = _HEADER.size  # 240, options follow
HEADER_STRUCT = _HEADER
MAGIC = b"c\x82Sc"
# No client sends more than a jumbo frame's worth; larger datagrams are refused before any work.
MAX_PACKET = 9000
# BOOTP clients (and some PXE ROMs) drop replies shorter than the original BOOTP size (RFC 1542).
MIN_REPLY = 300

BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

OPT_PAD = 0
OPT_END = 255
OPT_REQUESTED_ADDRESS = 50
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_MAX_MESSAGE_SIZE = 57
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_USER_CLASS = 77
OPT_RELAY_AGENT = 82
OPT_CLIENT_ARCH = 93
OPT_CLIENT_NDI = 94
OPT_CLIENT_UUID = 97
OPT_IPXE = 175
OPT_HOSTNAME = 12

# Options whose length is fixed by RFC 2132; a wrong length is a malformed packet, checked once here so
# the accessors below can never fail.
_FIXED_LENGTH = {
    OPT_MESSAGE_TYPE: 1,
    OPT_REQUESTED_ADDRESS: 4,
    OPT_SERVER_ID: 4,
    OPT_MAX_MESSAGE_SIZE: 2,
    OPT_OVERLOAD: 1,
}


_FIXED_ITEMS = tuple(_FIXED_LENGTH.items())


class MalformedPacket(KilnError):
    """The bytes are not a DHCP message this server can read."""

    status = 400


@dataclass(slots=True)
class Packet:
    """One DHCP message. Addresses are 32-bit integers (cheap to compare, hash and pack)."""

    op: int
    xid: int
    chaddr: bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: int = 0
    yiaddr: int = 0
    siaddr: int = 0
    giaddr: int = 0
    sname: bytes = b""
    file: bytes = b""
    # code -> value, in the order they are written; split/concatenated per RFC 3396 on the wire
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value else None

    @property
    def mac(self) -> str:
        return self.chaddr.hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def requested_address(self) -> int | None:
        value = self.options.get(OPT_REQUESTED_ADDRESS)
        return int.from_bytes(value, "big") if value else None

    @property
    def server_id(self) -> int | None:
        value = self.options.get(OPT_SERVER_ID)
        return int.from_bytes(value, "big") if value else None

    @property
    def client_arch(self) -> int | None:
        """The first architecture of option 93 (RFC 4578); clients list their preferred one first."""
        value = self.options.get(OPT_CLIENT_ARCH)
        return int.from_bytes(value[:2], "big") if value else None

    @property
    def vendor_class(self) -> str:
        return self.options.get(OPT_VENDOR_CLASS, b"").decode("ascii", "replace")

    @property
    def is_ipxe(self) -> bool:
        # iPXE sends the 4 raw bytes "iPXE" (no RFC 3004 inner length); accept both forms.
        user_class = self.options.get(OPT_USER_CLASS, b"")
        return user_class == b"iPXE" or user_class[1:5] == b"iPXE"

    @property
    def hostname(self) -> str | None:
        value = self.options.get(OPT_HOSTNAME)
        return value.decode("ascii", "replace") if value else None

    @property
    def client_id(self) -> str | None:
        value = self.options.get(OPT_CLIENT_ID)
        return value.hex() if value else None


def _read_options(data: bytes, start: int, end: int, into: dict[int, bytes], *, need_end: bool) -> None:
    i = start
    while i < end:
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket(f"option {code} has no length byte")
        stop = i + 2 + data[i + 1]
        if stop > end:
            raise MalformedPacket(f"option {code} overruns the packet")
        # RFC 3396: a repeated option is one long option split in pieces
        previous = into.get(code)
        into[code] = data[i + 2 : stop] if previous is None else previous + data[i + 2 : stop]
        i = stop
    if need_end:
        raise MalformedPacket("options do not end with the End option")


Header = tuple[int, int, int, int, int, int, int, int, int, int, int, bytes, bytes, bytes, bytes]


def parse_fields(data: bytes) -> tuple[Header, dict[int, bytes]]:
    """The header fields (as `_HEADER` unpacks them, with overloaded sname/file emptied) and the
    options of the DHCP message in `data`, validated as `parse()` does; or MalformedPacket.

    The fast path answers from these without building a `Packet`."""
    size = len(data)
    if size < HEADER_SIZE + 1:
        raise MalformedPacket(f"{size} bytes is too short for a DHCP message")
    if size > MAX_PACKET:
        raise MalformedPacket(f"{size} bytes is larger than any DHCP message")
    header: Header = _HEADER.unpack_from(data)
    if header[14] != MAGIC:
        raise MalformedPacket("wrong magic cookie")
    if header[0] not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"unknown op {header[0]}")
    if header[2] > 16:
        raise MalformedPacket(f"hardware address length {header[2]} is over 16")
    options: dict[int, bytes] = {}
    _read_options(data, HEADER_SIZE, size, options, need_end=True)
    overload = options.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            raise MalformedPacket("bad option overload value")
        sname, file = header[12], header[13]
        # The overloaded fields are read once each and an option 52 inside them is ignored, so a
        # packet cannot make the parser loop (RFC 2131 §4.1: file first, then sname).
        extra: dict[int, bytes] = {}
        if overload[0] & 1:
            _read_options(file, 0, len(file), extra, need_end=False)
        if overload[0] & 2:
            _read_options(sname, 0, len(sname), extra, need_end=False)
        extra.pop(OPT_OVERLOAD, None)
        for code, piece in extra.items():
            options[code] = options.get(code, b"") + piece
        header = (
            *header[:12],
            sname if not overload[0] & 2 else b"",
            file if not overload[0] & 1 else b"",
            header[14],
        )
    for code, length in _FIXED_ITEMS:
        value = options.get(code)
        if value is not None and len(value) != length:
            raise MalformedPacket(f"option {code} must be {length} bytes, not {len(value)}")
    message_type = options.get(OPT_MESSAGE_TYPE)
    if message_type is not None and not 1 <= message_type[0] <= 18:
        raise MalformedPacket(f"unknown DHCP message type {message_type[0]}")
    arch = options.get(OPT_CLIENT_ARCH)
    if arch is not None and (len(arch) < 2 or len(arch) % 2):
        raise MalformedPacket("client architecture option is not a list of 16-bit values")
    return header, options


def packet_from(header: Header, options: dict[int, bytes]) -> Packet:
    """The `Packet` of fields `parse_fields()` returned."""
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        _cookie,
    ) = header
    # positional: this runs for every packet, and keyword construction costs measurably more
    return Packet(
        op,
        xid,
        chaddr[:hlen],
        htype,
        hops,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        sname.split(b"\0", 1)[0] if sname[:1] != b"\0" else b"",
        file.split(b"\0", 1)[0] if file[:1] != b"\0" else b"",
        options,
    )


def parse(data: bytes) -> Packet:
    """The DHCP message in `data`, or MalformedPacket."""
    return packet_from(*parse_fields(data))


def encode_options(options: dict[int, bytes], tail: bytes = b"") -> bytes:
    """Options in wire form, long values split into 255-byte pieces (RFC 3396), then `tail` (options
    already in wire form), then End."""
    out = bytearray()
    for code, value in options.items():
        size = len(value)
        if size <= 255:
            out.append(code)
            out.append(size)
            out += value
            continue
        for i in range(0, size, 255):
            piece = value[i : i + 255]
            out.append(code)
            out.append(len(piece))
            out += piece
    out += tail
    out.append(OPT_END)
    return bytes(out)


def encode(packet: Packet, tail: bytes = b"") -> bytes:
    """The wire form of `packet` (plus `tail`, options already encoded), padded to the BOOTP minimum."""
    if len(packet.chaddr) > 16 or len(packet.sname) > 63 or len(packet.file) > 127:
        raise ValueError("chaddr, sname or file is too long for its field")
    data = _HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        packet.ciaddr,
        packet.yiaddr,
        packet.siaddr,
        packet.giaddr,
        packet.chaddr,
        packet.sname,
        packet.file,
        MAGIC,
    ) + encode_options(packet.options, tail)
    if len(data) < MIN_REPLY:
        data += bytes(MIN_REPLY - len(data))
    return data
