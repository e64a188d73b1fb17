"""Authoritative answers for the admin and reverse zones, built with dnslib (off the fast path)."""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import AAAA, EDNS0, NS, PTR, RR, SOA, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from services.dns import packet
from services.dns.records import TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_PTR, TYPE_SOA, ZoneData

TTL = 30  # short: the zone follows allocations within a second, downstream caches should not lag far
NEGATIVE_TTL = 30
SERVER_EDNS_SIZE = 1232  # RFC 9715 / DNS flag day 2020: avoids IP fragmentation
TYPE_ANY = 255
CLASS_IN, CLASS_ANY = 1, 255

_RDATA = {TYPE_A: A, TYPE_AAAA: AAAA, TYPE_NS: NS, TYPE_PTR: PTR}


@dataclass(frozen=True)
class Answer:
    wire: bytes
    # True when the answer carries the SOA (negative answers, SOA queries): a new serial changes it
    uses_soa: bool


def udp_limit(query: packet.Query) -> int:
    if query.edns_size is None:
        return 512
    return min(query.edns_size, SERVER_EDNS_SIZE)


def _soa(zone: ZoneData, apex: str, serial: int) -> RR:
    rdata = SOA(
        mname=f"ns.{zone.domain}.",
        rname=f"hostmaster.{zone.domain}.",
        times=(serial, 3600, 600, 86400, NEGATIVE_TTL),
    )
    return RR(f"{apex}.", TYPE_SOA, CLASS_IN, NEGATIVE_TTL, rdata)


def authoritative(
    query: packet.Query, zone: ZoneData, apex: str, serial: int, limit: int, ra: bool
) -> Answer:
    """The answer to `query` for a name inside `apex`, packed and truncated to `limit` bytes."""
    name = query.name
    owner = DNSLabel(list(query.labels))  # echo the client's spelling (0x20 case randomisation)
    header = DNSHeader(id=query.id, qr=1, aa=1, rd=int(query.rd), ra=int(ra))
    reply = DNSRecord(header, q=DNSQuestion(owner, query.qtype, query.qclass))
    rrsets = zone.names.get(name)
    uses_soa = False
    if query.qclass not in (CLASS_IN, CLASS_ANY):
        header.rcode = packet.RCODE_REFUSED
    elif rrsets is None:
        header.rcode = packet.RCODE_NXDOMAIN
    else:
        for qtype, values in sorted(rrsets.items()):
            if query.qtype in (qtype, TYPE_ANY):
                for value in values:
                    rdata = _RDATA[qtype](value if qtype in (TYPE_A, TYPE_AAAA) else value + ".")
                    reply.add_answer(RR(owner, qtype, CLASS_IN, TTL, rdata))
        if name == apex and query.qtype in (TYPE_SOA, TYPE_ANY):
            soa = _soa(zone, apex, serial)
            soa.rname = owner
            reply.add_answer(soa)
            uses_soa = True
    if header.rcode != packet.RCODE_REFUSED and not reply.rr:
        reply.add_auth(_soa(zone, apex, serial))
        uses_soa = True
    if query.edns_size is not None:
        reply.add_ar(EDNS0(udp_len=SERVER_EDNS_SIZE))
    wire = bytes(reply.pack())
    if len(wire) > limit:
        # RFC 1035 §4.2.1 / RFC 2181 §9: drop the whole answer and set TC; the client retries on TCP
        header.tc = 1
        reply.rr, reply.auth = [], []
        reply.ar = [r for r in reply.ar if r.rtype == packet.TYPE_OPT]
        wire = bytes(reply.pack())
    return Answer(wire, uses_soa)
