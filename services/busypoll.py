"""Busy-polling for a moment before sleeping, with a back-off so an idle or slow peer costs ~nothing.

Why: a lock-step exchange (a TFTP transfer, a DHCP client's DORA) answers within tens of microseconds
on a rack network, but a responder that sleeps in epoll_wait between datagrams pays a scheduler
wake-up per datagram, which on a virtual machine or a power-saving CPU is often longer than the
round trip itself. Polling the socket for up to `window` seconds after handling a datagram catches
the answer without that wake-up (measured in DESIGN-NOTES.md: TFTP throughput x2-3 here).

The back-off bounds the waste: a window that caught nothing makes the loop skip spinning for the next
1, 2, 4 ... `max_skip` wake-ups; a window that caught something resets it. A peer whose round trip is
longer than the window therefore costs about window / max_skip of CPU per datagram.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Events = list[tuple[int, int]]

DEFAULT_WINDOW = 200e-6  # seconds: several LAN round trips, a small fraction of a TFTP timeout
DEFAULT_MAX_SKIP = 64


class SpinPolicy:
    """Decides after each handled wake-up whether the next wait spins, and for how long.

    Use: after handling events call `armed(now)`; it returns the deadline to spin until (0.0 = sleep).
    While spinning, call `hit()` when a poll returns events before the deadline, `miss()` when the
    deadline passes without any.
    """

    __slots__ = ("_penalty", "_skip", "max_skip", "window")

    def __init__(self, window: float = DEFAULT_WINDOW, max_skip: int = DEFAULT_MAX_SKIP) -> None:
        if window < 0 or max_skip < 1:
            raise ValueError("window must be >= 0 and max_skip >= 1")
        self.window = window
        self.max_skip = max_skip
        self._skip = 0  # wake-ups left to handle without spinning
        self._penalty = 1  # skips imposed by the next miss

    def armed(self, now: float) -> float:
        if self._skip:
            self._skip -= 1
            return 0.0
        return now + self.window if self.window else 0.0

    def hit(self) -> None:
        self._penalty = 1

    def miss(self) -> None:
        self._skip = self._penalty
        self._penalty = min(self._penalty * 2, self.max_skip)


def wait(poll: Callable[[float], Events], policy: SpinPolicy, spin_until: float, timeout: float) -> Events:
    """One wait of an epoll loop: spin on `poll(0)` until `spin_until` (if set), then sleep in
    `poll(timeout)`. Returns the events."""
    if spin_until:
        monotonic = time.monotonic
        while True:
            events = poll(0)
            if events:
                policy.hit()
                return events
            if monotonic() >= spin_until:
                policy.miss()
                break
    return poll(timeout)
