"""A reproducible `newc` cpio writer: the initramfs format the Linux kernel unpacks.

Written here rather than shelling out to cpio(1) so that every header field is fixed (mtime, uid, inode
numbers, order) and device nodes such as /dev/console can be added without root's mknod.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative, without a leading slash."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> Entry:
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> Entry:
        return cls(path, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_newc(out: BinaryIO, entries: list[Entry], *, mtime: int = 0) -> None:
    """Write `entries` sorted by path so the same inputs always give the same bytes."""
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        _write_one(out, entry, ino, mtime)
    _write_one(out, Entry(TRAILER, 0), 0, 0)


def _write_one(out: BinaryIO, entry: Entry, ino: int, mtime: int) -> None:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        nlink,
        mtime,
        len(entry.data),
        0,  # dev major
        0,  # dev minor
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # check (unused by newc)
    )
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    out.write(header)
    out.write(name)
    out.write(_pad(len(header) + len(name)))
    out.write(entry.data)
    out.write(_pad(len(entry.data)))
