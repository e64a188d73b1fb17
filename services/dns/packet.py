"""DNS queries as bytes → a small dataclass (sans-I/O), and the few header-only replies.

Only what the responder needs to decide is parsed here: header, the one question, and the EDNS OPT
record's UDP size. dnslib builds answers; it never parses client bytes, so every client packet goes
through this parser's bounds checks and the one MalformedPacket error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

OPCODE_QUERY = 0
RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 1, 2, 3, 4, 5
TYPE_OPT = 41
MAX_NAME = 255


class MalformedPacket(ValueError):
    """Not a DNS query this server can answer; the one error parsing raises."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    labels: tuple[bytes, ...]  # as sent: the answer echoes the client's spelling
    qtype: int
    qclass: int
    question_end: int  # offset just past the question: data[12:question_end] is the question
    edns_size: int | None  # the client's EDNS UDP payload size; None without an OPT record

    @property
    def name(self) -> str:
        """Lower-case name without the trailing dot (ASCII-only folding, RFC 4343)."""
        return b".".join(self.labels).lower().decode("latin-1")

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


def _read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """An uncompressed name (queries never compress their question) and the offset after it."""
    labels: list[bytes] = []
    length = 0
    end = len(data)
    while True:
        if offset >= end:
            raise MalformedPacket("name runs past the packet")
        size = data[offset]
        offset += 1
        if size == 0:
            break
        if size & 0xC0:
            raise MalformedPacket("compressed or extended label in a question")
        if offset + size > end:
            raise MalformedPacket("label runs past the packet")
        length += size + 1
        if length > MAX_NAME:
            raise MalformedPacket("name longer than 255 octets")
        labels.append(bytes(data[offset : offset + size]))
        offset += size
    return tuple(labels), offset


def _skip_name(data: bytes, offset: int) -> int:
    """Past a possibly compressed name in the additional section (only OPT's root name is expected)."""
    end = len(data)
    for _ in range(128):
        if offset >= end:
            raise MalformedPacket("name runs past the packet")
        size = data[offset]
        if size & 0xC0 == 0xC0:
            if offset + 2 > end:
                raise MalformedPacket("truncated pointer")
            return offset + 2
        if size & 0xC0:
            raise MalformedPacket("extended label type")
        offset += 1 + size
        if size == 0:
            return offset
    raise MalformedPacket("too many labels")


def parse_query(data: bytes) -> Query:
    """Any bytes → a Query, or MalformedPacket."""
    if len(data) < 12:
        raise MalformedPacket(f"{len(data)} bytes is shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise MalformedPacket(f"{qdcount} questions")
    labels, offset = _read_name(data, 12)
    if offset + 4 > len(data):
        raise MalformedPacket("question without type and class")
    qtype, qclass = _TYPE_CLASS.unpack_from(data, offset)
    question_end = offset + 4
    edns_size: int | None = None
    offset = question_end
    for _ in range(ancount + nscount + arcount):
        offset = _skip_name(data, offset)
        if offset + _RR_FIXED.size > len(data):
            raise MalformedPacket("record header runs past the packet")
        rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
        offset += _RR_FIXED.size + rdlength
        if offset > len(data):
            raise MalformedPacket("record data runs past the packet")
        if rtype == TYPE_OPT:
            if edns_size is not None:
                raise MalformedPacket("two OPT records")  # RFC 6891 §6.1.1: FORMERR
            edns_size = max(rclass, 512)  # RFC 6891 §6.2.3: values below 512 mean 512
    return Query(qid, flags, labels, qtype, qclass, question_end, edns_size)


def header_reply(data: bytes, query: Query | None, rcode: int) -> bytes:
    """A reply carrying only the header (and the question, when there is a parsed one): REFUSED etc."""
    qid = query.id if query else int.from_bytes(data[:2].rjust(2, b"\0"), "big")
    flags_in = query.flags if query else 0
    # QR=1, opcode and RD copied from the query (RFC 1035 §4.1.1), RA=0, rcode
    flags = 0x8000 | (flags_in & 0x7900) | rcode
    if query is None:
        return _HEADER.pack(qid, flags, 0, 0, 0, 0)
    return _HEADER.pack(qid, flags, 1, 0, 0, 0) + data[12 : query.question_end]


def reply_id(data: bytes) -> int:
    """The id of an upstream reply, or -1 when it is too short to be one."""
    if len(data) < 12:
        return -1
    return (data[0] << 8) | data[1]
