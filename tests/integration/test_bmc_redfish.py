"""The Redfish driver against a real `sushy-emulator --fake` (its power changes land 1-11 s late)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from appliance.bmc.base import BMCTarget
from appliance.bmc.probe import DriverCache, resolve
from appliance.bmc.redfish import RedfishDriver
from appliance.errors import BMCAuthError, BMCError, BMCUnreachable, BMCUnsupported
from tests.bmcsim import SushySim, free_port

pytestmark = pytest.mark.xdist_group("bmc_redfish")


@pytest.fixture(scope="module")
def sushy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SushySim]:
    sim = SushySim(tmp_path_factory.mktemp("sushy")).start(systems=4, power_state="Off")
    yield sim
    sim.stop()


def _driver(sim: SushySim, index: int, *, password: str | None = None, timeout: float = 10) -> RedfishDriver:
    return RedfishDriver(
        BMCTarget.parse(sim.system_url(index), sim.username, password or sim.password, timeout=timeout)
    )


def _system(sim: SushySim, index: int) -> dict[str, Any]:
    """What the emulator itself says, read with a plain HTTP client."""
    rsp = requests.get(sim.system_url(index), auth=(sim.username, sim.password), timeout=5)
    rsp.raise_for_status()
    body: dict[str, Any] = rsp.json()
    return body


def _eventually(check: Callable[[], bool], seconds: float = 20.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.2)
    return time.monotonic() - started


def test_power_on_and_off_land_late_and_are_polled(sushy: SushySim) -> None:
    on, off = _driver(sushy, 0), _driver(sushy, 1)
    off.power_on()
    _eventually(lambda: off.power_state() == "on")
    # both changes are in flight at once: one wait of at most ~11 s, not two
    on.power_on()
    off.power_off()
    _eventually(lambda: on.power_state() == "on" and off.power_state() == "off")
    assert _system(sushy, 0)["PowerState"] == "On"
    assert _system(sushy, 1)["PowerState"] == "Off"


def test_pxe_boot_override_is_what_the_service_reports(sushy: SushySim) -> None:
    driver = _driver(sushy, 2)
    driver.set_boot_device("pxe", mode="uefi")
    boot = _system(sushy, 2)["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Pxe", "UEFI")
    assert driver.get_boot_device().device == "pxe"
    driver.set_boot_device("disk", persistent=True, mode="bios")
    boot = _system(sushy, 2)["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Hdd", "Legacy")
    setting = driver.get_boot_device()
    assert (setting.device, setting.mode) == ("disk", "bios")


def test_inventory_and_plain_http_is_reported_weak(sushy: SushySim) -> None:
    driver = _driver(sushy, 2)
    inv = driver.inventory()
    assert inv.manufacturer == "Sushy Emulator"
    assert inv.guid == sushy.uuids[2]
    assert inv.firmware == "1.00"
    report = driver.security()
    assert report.weak and "plain HTTP" in report.findings[0]


def test_lan_and_users_say_unsupported_when_the_service_has_no_such_resource(sushy: SushySim) -> None:
    driver = _driver(sushy, 3)
    with pytest.raises(BMCUnsupported, match="in-band"):
        driver.get_lan()
    with pytest.raises(BMCUnsupported, match="AccountService"):
        driver.set_user("kiln", "pw-123456")


def test_wrong_password_is_an_auth_error(sushy: SushySim) -> None:
    started = time.monotonic()
    with pytest.raises(BMCAuthError) as caught:
        _driver(sushy, 3, password="not-it").power_state()
    assert time.monotonic() - started < 3
    assert "user 'admin'" in caught.value.message and "password" in caught.value.message
    assert "not-it" not in caught.value.message


def test_closed_port_is_unreachable_within_the_timeout() -> None:
    target = BMCTarget.parse(f"http://127.0.0.1:{free_port()}", "admin", "pw", timeout=3)
    started = time.monotonic()
    with pytest.raises(BMCUnreachable):
        RedfishDriver(target).power_state()
    assert time.monotonic() - started < 3.5


def test_service_with_several_systems_needs_the_system_in_the_address(sushy: SushySim) -> None:
    with pytest.raises(BMCError, match="manages 4 systems"):
        RedfishDriver(BMCTarget.parse(sushy.url, sushy.username, sushy.password)).power_state()
    with pytest.raises(BMCError, match="no system 'nope'"):
        RedfishDriver(
            BMCTarget.parse(f"{sushy.url}/redfish/v1/Systems/nope", sushy.username, sushy.password)
        ).power_state()


def test_probe_finds_the_redfish_service_root_first(sushy: SushySim) -> None:
    resolved = resolve(BMCTarget.parse(f"127.0.0.1:{sushy.port}", sushy.username, sushy.password))
    assert (resolved.driver, resolved.scheme) == ("redfish", "http")
    cache = DriverCache()
    target = BMCTarget.parse(sushy.system_url(3), sushy.username, sushy.password)
    driver = cache.get(target)
    assert isinstance(driver, RedfishDriver) and cache.get(target) is driver
    assert driver.power_state() in ("on", "off")
    cache.close()


def test_password_stays_out_of_logs_at_debug_level(sushy: SushySim, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    driver = _driver(sushy, 3)
    driver.power_state()
    driver.get_boot_device()
    with pytest.raises(BMCAuthError):
        _driver(sushy, 3, password="wrong-Secret-77").power_state()
    assert caplog.records, "sushy logs its requests at DEBUG: the check must see them"
    assert sushy.password not in caplog.text and "wrong-Secret-77" not in caplog.text


def test_https_service_is_probed_first_and_its_tls_is_not_reported_weak(tmp_path: Path) -> None:
    sim = SushySim(tmp_path / "tls", tls=True).start(systems=1, power_state="On")
    try:
        resolved = resolve(BMCTarget.parse(f"127.0.0.1:{sim.port}", sim.username, sim.password))
        assert (resolved.driver, resolved.scheme) == ("redfish", "https")
        driver = RedfishDriver(resolved)  # one system: no system id needed
        assert driver.power_state() == "on"
        assert driver.security().findings == ()
        driver.close()
    finally:
        sim.stop()
