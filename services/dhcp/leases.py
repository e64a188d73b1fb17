"""Lease rows, written in batches: one multi-row upsert and one fsync'd commit per batch.

The writer bypasses the ORM on purpose: it runs once per batch of up to 64 ACKs on the DHCP hot path,
and builds the rows in the exact form SQLAlchemy reads back (`Lease` in appliance/models/ipam.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.db import Database

log = logging.getLogger(__name__)

_PACK_IP = struct.Struct("!I").pack
_inet_ntoa = socket.inet_ntoa


@dataclass(slots=True)
class LeaseRecord:
    """One row of the `leases` table to write (times are unix seconds)."""

    network_id: int
    mac: str
    address: int
    state: str
    starts: float
    ends: float
    client_id: str | None = None
    hostname: str | None = None
    relay: str | None = None
    client_arch: int | None = None
    vendor_class: str | None = None
    ipxe: bool = False


_UPSERT = (
    "INSERT INTO leases (network_id, mac, address, address_int, client_id, hostname, state, starts_at, "
    "ends_at, relay, client_arch, vendor_class, ipxe) VALUES {values} ON CONFLICT (network_id, address_int) "
    "DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id, hostname = excluded.hostname, "
    "state = excluded.state, starts_at = excluded.starts_at, ends_at = excluded.ends_at, "
    "relay = excluded.relay, client_arch = excluded.client_arch, vendor_class = excluded.vendor_class, "
    "ipxe = excluded.ipxe"
)


class LeaseWriter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None
        self._seconds: dict[int, str] = {}
        self._sqlite = db.is_sqlite
        placeholder = "?" if db.is_sqlite else "%s"
        self._row_marks = "(" + ", ".join([placeholder] * 13) + ")"
        self._upsert_sql: dict[int, str] = {}

    def _second(self, second: int) -> str:
        # the text form SQLAlchemy's SQLite DateTime writes and reads back; the seconds part is cached
        # because a batch's times fall within a second or two of each other
        if len(self._seconds) > 64:
            self._seconds.clear()
        text = self._seconds[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return text

    def _time(self, value: float) -> Any:
        if not self._sqlite:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        second = int(value)
        text = self._seconds.get(second) or self._second(second)
        return f"{text}.{int((value - second) * 1e6):06d}"

    def row(self, r: LeaseRecord) -> tuple[Any, ...]:
        starts, ends = r.starts, r.ends
        if self._sqlite:
            # _time() inlined: this runs for every ACK on the receive thread
            seconds = self._seconds
            s0, s1 = int(starts), int(ends)
            starts_v: Any = f"{seconds.get(s0) or self._second(s0)}.{int((starts - s0) * 1e6):06d}"
            ends_v: Any = f"{seconds.get(s1) or self._second(s1)}.{int((ends - s1) * 1e6):06d}"
        else:
            starts_v, ends_v = self._time(starts), self._time(ends)
        return (
            r.network_id, r.mac, _inet_ntoa(_PACK_IP(r.address)), r.address, r.client_id, r.hostname, r.state,
            starts_v, ends_v, r.relay, r.client_arch, r.vendor_class, r.ipxe,
        )  # fmt: skip

    def _upsert(self, count: int) -> str:
        sql = self._upsert_sql.get(count)
        if sql is None:
            sql = self._upsert_sql[count] = _UPSERT.format(values=", ".join([self._row_marks] * count))
        return sql

    def commit_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """`commit()` for rows already formatted by `row()`.

        One multi-row INSERT rather than executemany: each statement step releases and retakes the GIL,
        and under load the receive thread holds it, so 64 steps cost up to 64 thread switches.
        """
        if not rows:
            return
        # one row per address: PostgreSQL refuses to upsert the same key twice in one statement
        latest = {(row[0], row[3]): row for row in rows}
        params = list(itertools.chain.from_iterable(latest.values()))
        sql = self._upsert(len(latest))
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
            if self.db.is_sqlite:
                # SQLite checkpoints the WAL inside whichever COMMIT crosses 1,000 pages, fsyncing the
                # database file too: a stall for the ACKs waiting on that commit. `checkpoint()` does
                # it from the housekeeping thread instead.
                self._conn.cursor().execute("PRAGMA wal_autocheckpoint=0")
        conn = self._conn
        try:
            cursor = conn.cursor()
            if self._sqlite:
                # The engine opens SQLite in autocommit mode: the one statement is its own transaction
                # (it takes the write lock as it starts, so busy_timeout applies), and synchronous=FULL
                # makes its commit, at the end of the same step, the fsync the ACKs wait for. One call
                # instead of BEGIN/INSERT/COMMIT: one round through the sqlite3 module instead of three.
                cursor.execute(sql, params)
            else:
                cursor.execute(sql, params)
                conn.commit()
            cursor.close()
        except Exception:
            self._conn = None
            try:
                conn.invalidate()
            except Exception:
                log.debug("dhcp: closing a failed connection failed too", exc_info=True)
            raise

    def checkpoint(self) -> None:
        """Copy the WAL into the database off the ACK path (SQLite; PASSIVE never blocks the writer)."""
        if not self.db.is_sqlite:
            return
        conn = self.db.engine.raw_connection()
        try:
            conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
