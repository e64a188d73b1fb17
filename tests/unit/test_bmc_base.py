"""Pure parts of the BMC layer: addresses, LAN argument checks, the retry policy."""

from __future__ import annotations

import time

import pytest

from appliance.bmc.base import BMCTarget, check_lan_args, retrying
from appliance.errors import BMCAuthError, BMCError, BMCUnreachable, BMCUnsupported, InvalidInput


def test_error_tree_marks_only_unreachable_as_retryable() -> None:
    assert issubclass(BMCAuthError, BMCError) and issubclass(BMCUnsupported, BMCError)
    assert BMCUnreachable("x").retryable
    assert not BMCAuthError("x").retryable and not BMCUnsupported("x").retryable


@pytest.mark.parametrize(
    ("address", "host", "port", "driver", "scheme", "system"),
    [
        ("10.0.0.5", "10.0.0.5", None, None, "https", None),
        ("10.0.0.5:6230", "10.0.0.5", 6230, None, "https", None),
        ("[fd00::5]:623", "fd00::5", 623, None, "https", None),
        ("bmc-r1-n4.kiln.lab", "bmc-r1-n4.kiln.lab", None, None, "https", None),
        ("https://10.0.0.5", "10.0.0.5", None, "redfish", "https", None),
        ("http://127.0.0.1:8000/redfish/v1/Systems/abc-1", "127.0.0.1", 8000, "redfish", "http", "abc-1"),
    ],
)
def test_bmc_addresses_parse(
    address: str, host: str, port: int | None, driver: str | None, scheme: str, system: str | None
) -> None:
    target = BMCTarget.parse(address, "kiln", "pw")
    assert (target.host, target.port, target.driver, target.scheme, target.system_id) == (
        host,
        port,
        driver,
        scheme,
        system,
    )


@pytest.mark.parametrize("address", ["", "ftp://x", "10.0.0.5:99999", "10.0.0.5:abc", "a b"])
def test_bad_bmc_addresses_are_invalid_input(address: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        BMCTarget.parse(address, "kiln", "pw")
    assert caught.value.field == "bmc_address"


def test_url_address_with_ipmi_driver_is_refused() -> None:
    with pytest.raises(InvalidInput):
        BMCTarget.parse("https://10.0.0.5", "kiln", "pw", driver="ipmi")


def test_target_repr_hides_the_password() -> None:
    target = BMCTarget.parse("10.0.0.5", "kiln", "hunter2-very-secret")
    assert "hunter2" not in repr(target) and "hunter2" not in target.describe()


def test_lan_arguments_are_checked_before_anything_is_sent() -> None:
    assert check_lan_args("static", "10.1.0.9", "255.255.255.0", "10.1.0.1") == (
        "10.1.0.9",
        "255.255.255.0",
        "10.1.0.1",
    )
    assert check_lan_args("dhcp", "ignored", None, None) == (None, None, None)
    with pytest.raises(InvalidInput, match="gateway"):
        check_lan_args("static", "10.1.0.9", "255.255.255.0", "10.2.0.1")
    with pytest.raises(InvalidInput):
        check_lan_args("static", "10.1.0.9", None, None)
    with pytest.raises(InvalidInput):
        check_lan_args("bootp", None, None, None)


def test_retry_only_retryable_errors_with_backoff() -> None:
    target = BMCTarget.parse("10.0.0.5", "kiln", "pw", timeout=5)
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise BMCUnreachable("no answer")
        return "on"

    assert retrying(target, "power status", flaky, backoff=0.05) == "on"
    assert len(calls) == 3
    # exponential: the second wait is about twice the first
    assert calls[2] - calls[1] >= 1.8 * 0.05

    auth_calls: list[int] = []

    def refused() -> str:
        auth_calls.append(1)
        raise BMCAuthError("bad password")

    with pytest.raises(BMCAuthError):
        retrying(target, "power status", refused, backoff=0.05)
    assert len(auth_calls) == 1


def test_retries_stop_at_the_deadline() -> None:
    target = BMCTarget.parse("10.0.0.5", "kiln", "pw", timeout=0.5)
    calls: list[int] = []

    def slow_failure() -> str:
        calls.append(1)
        time.sleep(0.3)  # stands for a BMC that takes 0.3 s to time out
        raise BMCUnreachable("no answer")

    started = time.monotonic()
    with pytest.raises(BMCUnreachable):
        retrying(target, "power status", slow_failure, attempts=5, backoff=0.05)
    # a second 0.3 s attempt would end past the 0.5 s deadline, so it is never started
    assert len(calls) == 1
    assert time.monotonic() - started < 0.5
