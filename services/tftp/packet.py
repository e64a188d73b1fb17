"""TFTP packets as bytes ⇄ dataclasses (sans-I/O: no sockets, no clock, no files).

RFC 1350 (RRQ/WRQ/DATA/ACK/ERROR), RFC 2347 (OACK and option syntax), RFC 2348 blksize,
RFC 2349 timeout/tsize, RFC 7440 windowsize.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

# RFC 1350 error codes (8 is RFC 2347's option-negotiation refusal)
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL_OP = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349
MIN_WINDOW, MAX_WINDOW = 1, 65535  # RFC 7440
MODES = ("octet", "netascii", "mail")

_HEADER = struct.Struct("!HH")


class MalformedPacket(ValueError):
    """The bytes are not a TFTP packet this server understands; the one error parsing raises."""


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ. `options` keeps the client's order, names lower-cased (RFC 2347: case-insensitive)."""

    opcode: int
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OptionAck


def _strings(body: bytes) -> list[str]:
    """NUL-terminated strings; the body must end with a NUL (RFC 1350 §5)."""
    if not body or body[-1] != 0:
        raise MalformedPacket("strings not NUL-terminated")
    try:
        # netascii is 7-bit, but firmware sends 8-bit file names now and then; latin-1 never fails
        # and round-trips every byte, so a strange name is refused by the path check, not here.
        return body[:-1].decode("latin-1").split("\0")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise MalformedPacket("undecodable strings") from exc


def _parse_request(opcode: int, body: bytes) -> Request:
    parts = _strings(body)
    if len(parts) < 2:
        raise MalformedPacket("request without mode")
    filename, mode = parts[0], parts[1].lower()
    if not filename:
        raise MalformedPacket("empty file name")
    if mode not in MODES:
        raise MalformedPacket(f"unknown mode {mode!r}")
    rest = parts[2:]
    # Some clients pad the option list with an extra NUL; tolerate one empty trailing string.
    if rest and rest[-1] == "" and len(rest) % 2 == 1:
        rest = rest[:-1]
    if len(rest) % 2:
        raise MalformedPacket("option without value")
    options: dict[str, str] = {}
    for i in range(0, len(rest), 2):
        name = rest[i].lower()
        if not name:
            raise MalformedPacket("empty option name")
        options.setdefault(name, rest[i + 1])
    return Request(opcode, filename, mode, options)


def parse(data: bytes) -> Packet:
    """Any bytes → one packet, or MalformedPacket."""
    if len(data) < 4:
        raise MalformedPacket(f"{len(data)} bytes is shorter than any TFTP packet")
    opcode, second = _HEADER.unpack_from(data)
    if opcode in (RRQ, WRQ):
        return _parse_request(opcode, data[2:])
    if opcode == DATA:
        return Data(second, bytes(data[4:]))
    if opcode == ACK:
        if len(data) != 4:
            raise MalformedPacket("ACK with trailing bytes")
        return Ack(second)
    if opcode == ERROR:
        body = data[4:]
        # RFC 1350 says NUL-terminated; several clients omit the NUL, which costs nothing to accept.
        message = body[:-1] if body.endswith(b"\0") else body
        return Error(second, message.split(b"\0", 1)[0].decode("latin-1"))
    if opcode == OACK:
        parts = _strings(data[2:])
        if len(parts) % 2:
            raise MalformedPacket("OACK option without value")
        return OptionAck({parts[i].lower(): parts[i + 1] for i in range(0, len(parts), 2)})
    raise MalformedPacket(f"unknown opcode {opcode}")


def ack_block(data: bytes) -> int:
    """Hot path: the block number of an ACK, or -1 for anything that is not a well-formed ACK."""
    if len(data) == 4 and data[0] == 0 and data[1] == ACK:
        return (data[2] << 8) | data[3]
    return -1


def build_rrq(filename: str, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    return _build_request(RRQ, filename, mode, options)


def build_wrq(filename: str, mode: str = "octet", options: dict[str, str] | None = None) -> bytes:
    return _build_request(WRQ, filename, mode, options)


def _build_request(opcode: int, filename: str, mode: str, options: dict[str, str] | None) -> bytes:
    parts = [filename, mode]
    for name, value in (options or {}).items():
        parts += [name, value]
    return struct.pack("!H", opcode) + b"".join(p.encode("latin-1") + b"\0" for p in parts)


def data_header(block: int) -> bytes:
    return _HEADER.pack(DATA, block & 0xFFFF)


def build_data(block: int, payload: bytes) -> bytes:
    return _HEADER.pack(DATA, block & 0xFFFF) + payload


def build_ack(block: int) -> bytes:
    return _HEADER.pack(ACK, block & 0xFFFF)


def build_error(code: int, message: str) -> bytes:
    return _HEADER.pack(ERROR, code) + message.encode("latin-1", "replace") + b"\0"


def build_oack(options: dict[str, str]) -> bytes:
    return struct.pack("!H", OACK) + b"".join(
        name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0" for name, value in options.items()
    )


@dataclass(frozen=True)
class Negotiated:
    """What a transfer uses after option negotiation, and the OACK options to send (empty: no OACK)."""

    blksize: int = DEFAULT_BLKSIZE
    timeout: float | None = None
    windowsize: int = 1
    oack: dict[str, str] = field(default_factory=dict)


def _int_option(value: str) -> int | None:
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def negotiate(options: dict[str, str], file_size: int, *, max_blksize: int = MAX_BLKSIZE) -> Negotiated:
    """RFC 2347: answer only the options we understand, with values we accept; ignore the rest.

    A malformed or out-of-range value drops that option (the client then falls back to RFC 1350
    defaults) rather than failing the transfer: firmware that sends `blksize 1` still gets its file.
    """
    blksize, timeout, windowsize = DEFAULT_BLKSIZE, None, 1
    oack: dict[str, str] = {}
    for name, raw in options.items():
        value = _int_option(raw)
        if value is None:
            continue
        if name == "blksize" and value >= MIN_BLKSIZE:
            # RFC 2348: the server may answer with a smaller size than asked, never a larger one
            blksize = min(value, max_blksize, MAX_BLKSIZE)
            oack[name] = str(blksize)
        elif name == "tsize":
            # RFC 2349: on a read request the client sends 0 and the server answers the size
            oack[name] = str(file_size)
        elif name == "timeout" and MIN_TIMEOUT <= value <= MAX_TIMEOUT:
            timeout = float(value)
            oack[name] = str(value)
        elif name == "windowsize" and MIN_WINDOW <= value <= MAX_WINDOW:
            windowsize = value
            oack[name] = str(value)
    return Negotiated(blksize, timeout, windowsize, oack)
