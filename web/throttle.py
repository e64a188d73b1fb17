"""Failed-login throttling, per client address and per username, with exponential back-off.

Policy: the first FREE_FAILURES failures of a key cost nothing; each further failure locks the key for
2, 4, 8... seconds (capped at MAX_LOCK). While a key is locked, logins for it are answered 429 with
Retry-After *before* the password is checked, so a guesser cannot spend the appliance's CPU on argon2.
A success clears the username's and the address's counters.

The counters are in memory, per web process: a restart forgets them, and with N gunicorn workers a
guesser gets at most N times the budget — acceptable for a rack appliance, where the alternative (a
write per failed attempt) would let the same guesser load the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 5
MAX_LOCK = 300.0
FORGET_AFTER = 3600.0
MAX_KEYS = 10_000


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again (0: go ahead)."""
        now = self._clock()
        with self._lock:
            waits = [r.locked_until - now for k in keys if (r := self._records.get(k)) is not None]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._records) > MAX_KEYS:
                self._forget(now)
            for key in keys:
                record = self._records.setdefault(key, _Record())
                record.failures += 1
                record.last = now
                if record.failures > FREE_FAILURES:
                    record.locked_until = now + min(2.0 ** (record.failures - FREE_FAILURES), MAX_LOCK)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def _forget(self, now: float) -> None:
        stale = [k for k, r in self._records.items() if now - r.last > FORGET_AFTER and r.locked_until < now]
        for key in stale:
            del self._records[key]
