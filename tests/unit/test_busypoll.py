"""The busy-poll back-off: a window that catches nothing makes the next 1, 2, 4 ... wake-ups sleep."""

from __future__ import annotations

import time

import pytest

from services import busypoll
from services.busypoll import SpinPolicy


def spins(policy: SpinPolicy, wakeups: int) -> list[bool]:
    return [bool(policy.armed(100.0)) for _ in range(wakeups)]


def test_armed_gives_a_deadline_one_window_ahead() -> None:
    assert SpinPolicy(window=0.001).armed(5.0) == pytest.approx(5.001)
    assert SpinPolicy(window=0).armed(5.0) == 0.0  # 0 disables


def test_misses_double_the_skipped_wakeups_up_to_the_cap_and_a_hit_resets() -> None:
    policy = SpinPolicy(window=0.001, max_skip=4)
    policy.miss()
    assert spins(policy, 2) == [False, True]
    policy.miss()
    assert spins(policy, 3) == [False, False, True]
    policy.miss()
    policy.miss()  # capped at 4
    assert spins(policy, 5) == [False] * 4 + [True]
    policy.hit()
    policy.miss()
    assert spins(policy, 2) == [False, True]


def test_wait_returns_what_a_spinning_poll_catches_without_sleeping() -> None:
    calls: list[float] = []

    def poll(timeout: float) -> list[tuple[int, int]]:
        calls.append(timeout)
        return [(7, 1)] if len(calls) == 3 else []

    policy = SpinPolicy(window=10.0)
    assert busypoll.wait(poll, policy, policy.armed(0.0) + 1e9, 0.05) == [(7, 1)]
    assert calls == [0, 0, 0]  # never slept
    assert spins(policy, 1) == [True]  # a hit keeps spinning


def test_wait_sleeps_after_an_empty_window_and_backs_off() -> None:
    calls: list[float] = []

    def poll(timeout: float) -> list[tuple[int, int]]:
        calls.append(timeout)
        return [(7, 1)] if timeout else []

    policy = SpinPolicy(window=0.0005)
    assert busypoll.wait(poll, policy, time.monotonic() + 0.0005, 0.05) == [(7, 1)]
    assert calls[-1] == 0.05 and set(calls[:-1]) == {0}
    assert spins(policy, 2) == [False, True]


def test_wait_without_a_window_sleeps_at_once() -> None:
    calls: list[float] = []
    busypoll.wait(lambda t: calls.append(t) or [], SpinPolicy(), 0.0, 0.05)
    assert calls == [0.05]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        SpinPolicy(window=-1)
    with pytest.raises(ValueError):
        SpinPolicy(max_skip=0)
