"""The IPMI driver against real OpenIPMI `ipmi_sim` BMCs, every change checked back with `ipmitool -C 3`."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from appliance.bmc.base import BMCTarget
from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.ipmi import IPMIDriver
from appliance.bmc.power import PowerPoller, power_nodes
from appliance.bmc.power import serve as power_serve
from appliance.bmc.probe import DriverCache, resolve
from appliance.cli import main
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import BMCAuthError, BMCUnreachable, InvalidInput
from appliance.models import Event, Node
from tests.bmcsim import IPMISimFarm, SimBMC, free_port

pytestmark = pytest.mark.xdist_group("bmc_ipmi")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPMISimFarm]:
    sims = IPMISimFarm(tmp_path_factory.mktemp("ipmi")).start(4)
    yield sims
    sims.stop()


def _driver(bmc: SimBMC, *, password: str | None = None, timeout: float = 10.0) -> IPMIDriver:
    return IPMIDriver(BMCTarget.parse(bmc.address, bmc.username, password or bmc.password, timeout=timeout))


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.1)


def test_power_on_off_and_status_agree_with_ipmitool(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[0]
    driver = _driver(bmc)
    driver.power_off()
    assert "Chassis Power is off" in bmc.ipmitool("chassis", "power", "status")
    assert driver.power_state() == "off"
    driver.power_on()
    assert "Chassis Power is on" in bmc.ipmitool("chassis", "power", "status")
    assert driver.power_state() == "on"
    assert bmc.power_file_state() == "on"
    driver.close()


def test_soft_off_asks_the_os_and_reset_resets(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[0]
    driver = _driver(bmc)
    driver.power_on()
    driver.reset()
    assert "set reset 1" in (bmc.directory / "chassis.log").read_text()
    driver.soft_off()
    assert "set shutdown 1" in (bmc.directory / "chassis.log").read_text()
    assert "Chassis Power is off" in bmc.ipmitool("chassis", "power", "status")
    driver.close()


def test_power_cycle_turns_the_chassis_off_then_back_on(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[0]
    driver = _driver(bmc)
    driver.power_on()
    before = (bmc.directory / "chassis.log").read_text().count("set power 0")
    driver.power_cycle()
    assert (bmc.directory / "chassis.log").read_text().count("set power 0") == before + 1
    _eventually(lambda: "Chassis Power is on" in bmc.ipmitool("chassis", "power", "status"))
    # a chassis that is off is powered on by "cycle" rather than refused
    driver.power_off()
    driver.power_cycle()
    _eventually(lambda: driver.power_state() == "on")
    driver.close()


def test_boot_device_pxe_then_disk_is_what_ipmitool_reads(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[1]
    driver = _driver(bmc)
    driver.set_boot_device("pxe")
    assert "Force PXE" in bmc.ipmitool("chassis", "bootparam", "get", "5")
    assert driver.get_boot_device().device == "pxe"
    driver.set_boot_device("disk", persistent=True, mode="uefi")
    assert "Force Boot from default Hard-Drive" in bmc.ipmitool("chassis", "bootparam", "get", "5")
    assert driver.get_boot_device().device == "disk"
    assert bmc.boot_file_device() == "default"  # ipmi_sim's chassis_control name for the hard disk
    driver.close()


def test_static_lan_configuration_is_read_back_by_ipmitool(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[1]
    driver = _driver(bmc)
    driver.set_lan(source="static", address="10.77.0.21", netmask="255.255.255.0", gateway="10.77.0.1")
    printed = bmc.ipmitool("lan", "print", "1")
    assert "IP Address Source       : Static Address" in printed
    assert "IP Address              : 10.77.0.21" in printed
    assert "Subnet Mask             : 255.255.255.0" in printed
    assert "Default Gateway IP      : 10.77.0.1" in printed
    assert "Set in Progress         : Set Complete" in printed
    lan = driver.get_lan()
    assert (lan.source, lan.address, lan.netmask, lan.gateway) == (
        "static",
        "10.77.0.21",
        "255.255.255.0",
        "10.77.0.1",
    )
    driver.set_lan(source="dhcp")
    assert "IP Address Source       : DHCP Address" in bmc.ipmitool("lan", "print", "1")
    assert driver.get_lan().source == "dhcp"
    driver.close()


def test_bad_lan_configuration_is_refused_before_the_bmc_is_touched(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[1]
    driver = _driver(bmc)
    driver.set_lan(source="static", address="10.78.0.5", netmask="255.255.255.0", gateway="10.78.0.1")
    with pytest.raises(InvalidInput, match="gateway"):
        driver.set_lan(source="static", address="10.79.0.5", netmask="255.255.255.0", gateway="10.1.0.1")
    assert "IP Address              : 10.78.0.5" in bmc.ipmitool("lan", "print", "1")
    driver.close()


def test_created_user_logs_in_with_ipmitool_and_password_changes_and_deletion_stick(
    farm: IPMISimFarm,
) -> None:
    bmc = farm.bmcs[2]
    driver = _driver(bmc)
    user = driver.set_user("kiln", "first-Pw-123")
    assert user.name == "kiln" and user.uid != "1"
    listing = bmc.ipmitool("user", "list", "1")
    assert any(line.split()[1:2] == ["kiln"] and "ADMINISTRATOR" in line for line in listing.splitlines())
    kiln = SimBMC(
        name="as-kiln", port=bmc.port, directory=bmc.directory, username="kiln", password="first-Pw-123"
    )
    assert "Chassis Power" in kiln.ipmitool("chassis", "power", "status")

    again = driver.set_user("kiln", "second-Pw-456")
    assert again.uid == user.uid  # updated in place, not a second slot
    with pytest.raises(RuntimeError):
        kiln.ipmitool("chassis", "power", "status")
    assert "Chassis Power" in kiln.ipmitool("chassis", "power", "status", password="second-Pw-456")
    assert [u.name for u in driver.list_users()].count("kiln") == 1

    driver.delete_user("kiln")
    assert "kiln" not in [u.name for u in driver.list_users()]
    with pytest.raises(RuntimeError):
        kiln.ipmitool("chassis", "power", "status", password="second-Pw-456")
    driver.close()


def test_inventory_reads_fru_device_id_and_guid(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[2]
    driver = _driver(bmc)
    inv = driver.inventory()
    assert (inv.manufacturer, inv.product, inv.serial) == ("Kiln Lab", "SimNode", f"SN-{bmc.name}")
    assert inv.fru["device_id"]["manufacturer_id"] == 4753  # the 0x1291 of the emu file's mc_add
    assert inv.firmware == "9.08"
    assert [(x["name"], x["value"], x["units"]) for x in inv.sensors] == [("CPU Temp", 45.0, "°C")]
    assert "45 degrees C" in bmc.ipmitool("sdr", "list")
    # Get System GUID read by ipmitool, in the SMBIOS byte order dmidecode uses for the system UUID
    raw = bytes(int(b, 16) for b in bmc.ipmitool("raw", "0x06", "0x37").split())
    assert inv.guid == str(uuid.UUID(bytes_le=raw))
    driver.close()


def test_cipher_suite_zero_is_reported_as_weak(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[2]
    # the finding is real: ipmi_sim lets cipher suite 0 in with a wrong password
    done = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", "0", "-H", "127.0.0.1", "-p", str(bmc.port),
         "-U", bmc.username, "-P", "not-the-password", "chassis", "power", "status"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    report = _driver(bmc).security()
    assert report.weak
    assert any("cipher suite 0" in finding for finding in report.findings)


def test_wrong_password_is_an_auth_error_naming_the_user(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[3]
    started = time.monotonic()
    with pytest.raises(BMCAuthError) as caught:
        _driver(bmc, password="wrong-password").power_state()
    assert time.monotonic() - started < 3  # refused at once, never retried
    assert f"user '{bmc.username}'" in caught.value.message
    assert "password" in caught.value.message
    assert "wrong-password" not in caught.value.message


def test_closed_port_is_unreachable_within_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(BMCUnreachable) as caught:
        IPMIDriver(BMCTarget.parse(f"127.0.0.1:{port}", "admin", "pw", timeout=2)).power_state()
    assert time.monotonic() - started < 2.5
    assert f"127.0.0.1:{port}" in caught.value.message and caught.value.retryable


def test_probe_picks_ipmi_for_an_ipmi_only_bmc(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[3]
    assert resolve(BMCTarget.parse(bmc.address, bmc.username, bmc.password)).driver == "ipmi"
    with pytest.raises(BMCUnreachable, match="neither"):
        resolve(BMCTarget.parse(f"127.0.0.1:{free_port()}", "a", "b"), timeout=0.5)


def _active_sessions(bmc: SimBMC) -> int:
    # Get Session Info (IPMI 2.0 §22.20), index 0 = this session: handle, possible, active...
    raw = bmc.ipmitool("raw", "0x06", "0x3d", "0x00").split()
    return int(raw[2], 16) - 1  # minus ipmitool's own session


def test_cache_reuses_one_session_per_bmc(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[3]
    cache = DriverCache()
    target = BMCTarget.parse(bmc.address, bmc.username, bmc.password, driver="ipmi")
    baseline = _active_sessions(bmc)
    for _ in range(20):
        cache.get(target).power_state()
    assert cache.get(target) is cache.get(target)
    assert _active_sessions(bmc) == baseline + 1
    cache.close()
    _eventually(lambda: _active_sessions(bmc) == baseline)


def _nodes_for(
    db: Database, settings: Settings, specs: list[tuple[str, str, str]], *, driver: str | None = None
) -> list[int]:
    ids = []
    with db.session() as session:
        for name, address, password in specs:
            node = Node(name=name)
            session.add(node)
            session.flush()
            set_node_bmc(
                session, settings, node, address=address, username="admin", password=password, driver=driver
            )
            ids.append(node.id)
    return ids


def test_dead_and_misconfigured_bmcs_do_not_block_the_others(
    farm: IPMISimFarm, sqlite_db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = farm.bmcs[:3]
    specs = [(f"good{i}", b.address, b.password) for i, b in enumerate(good)]
    specs.append(("dead", f"127.0.0.1:{free_port()}", "dead-pw-1"))
    specs.append(("badpw", farm.bmcs[3].address, "wrong-pw-2"))
    # explicit driver: no probing, so the dead BMC costs its full login timeout
    ids = _nodes_for(sqlite_db, settings, specs, driver="ipmi")
    seen: list[str] = []
    started = time.monotonic()
    results = power_nodes(
        sqlite_db, settings, ids, "status", timeout=3, progress=lambda r: seen.append(r.name)
    )
    elapsed = time.monotonic() - started
    by_name = {r.name: r for r in results}
    # below the dead BMC's 3 s timeout; ipmi_sim itself sometimes answers a chassis read only after
    # pyghmi's 0.5-1 s retransmit (its chassis_control script runs per request)
    assert all(by_name[f"good{i}"].ok and by_name[f"good{i}"].seconds < 2.5 for i in range(3)), results
    assert by_name["dead"].error_kind == "BMCUnreachable"
    assert by_name["badpw"].error_kind == "BMCAuthError"
    assert elapsed < 3 + 1.5  # in parallel: one timeout, not the sum
    assert sorted(seen) == sorted(by_name)
    with sqlite_db.read_session() as session:
        states = {n.name: n.power_state for n in session.scalars(select(Node))}
        assert states["dead"] is None and states["good0"] in ("on", "off")
        texts = [repr(e.data) + e.message for e in session.scalars(select(Event))]
    for secret in [b.password for b in good] + ["dead-pw-1", "wrong-pw-2"]:
        assert secret not in caplog.text
        assert not any(secret in text for text in texts)


def test_poller_records_state_and_backs_off_a_failing_bmc(
    farm: IPMISimFarm, sqlite_db: Database, settings: Settings
) -> None:
    now = [1000.0]
    ids = _nodes_for(
        sqlite_db,
        settings,
        [
            ("p-good", farm.bmcs[0].address, farm.bmcs[0].password),
            ("p-dead", f"127.0.0.1:{free_port()}", "x"),
        ],
    )
    poller = PowerPoller(
        sqlite_db, settings, min_interval=60, max_backoff=600, timeout=1.5, clock=lambda: now[0]
    )
    first = poller.poll_once()
    assert (first.checked, first.failed) == (1, 1)
    with sqlite_db.read_session() as session:
        good = session.get(Node, ids[0])
        assert good is not None and good.power_state == farm.bmcs[0].power_file_state()
        assert good.power_checked_at is not None
    # within the minimum interval nothing is asked again
    now[0] += 30
    assert poller.poll_once().checked + poller.poll_once().failed == 0
    # after it the healthy BMC is asked again; the dead one waits 2 intervals, then 4
    now[0] += 31
    second = poller.poll_once()
    assert (second.checked, second.failed) == (1, 0)
    now[0] += 60
    assert poller.poll_once().failed == 1
    now[0] += 200
    third = poller.poll_once()
    assert (third.checked, third.failed) == (1, 0)
    poller.cache.close()


def test_cli_powers_many_nodes_and_reports_the_failed_one(
    farm: IPMISimFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    runner = CliRunner()

    def kiln(*args: str, stdin: str | None = None) -> Result:
        return runner.invoke(main, ["--database-url", url, *args], input=stdin, catch_exceptions=False)

    for i, bmc in enumerate(farm.bmcs[:2]):
        assert kiln("node", "add", f"c{i}").exit_code == 0
        set_ = kiln("bmc", "set", f"c{i}", "--address", bmc.address, "--username", "admin", "--password-stdin",
                    stdin=bmc.password + "\n")  # fmt: skip
        assert set_.exit_code == 0, set_.output
    kiln("node", "add", "c-nobmc")

    off = kiln("node", "power", "off", "c0", "c1")
    assert off.exit_code == 0, off.output
    assert [b.power_file_state() for b in farm.bmcs[:2]] == ["off", "off"]
    status = kiln("node", "power", "status", "c0", "c1", "c-nobmc", "--json")
    assert status.exit_code == 1  # one node has no BMC
    rows = {r["name"]: r for r in json.loads(status.output)}
    assert rows["c0"]["state"] == rows["c1"]["state"] == "off"
    assert "no BMC address" in rows["c-nobmc"]["error"]

    shown = kiln("bmc", "show", "c0", "--json")
    assert json.loads(shown.output)["password"] == "set"
    assert farm.bmcs[0].password not in shown.output
    assert kiln("bmc", "boot", "c1", "pxe").exit_code == 0
    assert "Force PXE" in farm.bmcs[1].ipmitool("chassis", "bootparam", "get", "5")
    assert kiln("node", "power", "status", "nosuchnode").exit_code == 1
    probed = json.loads(kiln("bmc", "show", "c0", "--probe", "--json").output)
    assert (probed["driver"], probed["power_state"]) == ("ipmi", "off")
    inventory = json.loads(kiln("bmc", "inventory", "c0", "--json").output)
    assert inventory["product"] == "SimNode" and inventory["sensors"][0]["name"] == "CPU Temp"
    weak = kiln("bmc", "security", "c0")
    assert weak.exit_code == 1 and "WEAK: cipher suite 0" in weak.output


def test_power_state_service_records_states_until_stopped(
    farm: IPMISimFarm, sqlite_db: Database, settings: Settings
) -> None:
    (node_id,) = _nodes_for(sqlite_db, settings, [("svc", farm.bmcs[1].address, farm.bmcs[1].password)])
    stop = threading.Event()
    thread = threading.Thread(target=power_serve, args=(settings, sqlite_db, stop), daemon=True)
    thread.start()

    def recorded() -> bool:
        with sqlite_db.read_session() as session:
            node = session.get(Node, node_id)
            return node is not None and node.power_checked_at is not None

    _eventually(recorded)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_netboot_sets_pxe_then_cycles_a_running_machine_or_starts_a_stopped_one(farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[1]
    driver = _driver(bmc)
    driver.power_on()
    driver.set_boot_device("disk")
    log_before = (bmc.directory / "chassis.log").read_text()
    driver.power("netboot")
    calls = (bmc.directory / "chassis.log").read_text()[len(log_before) :].splitlines()
    assert calls.index("set boot pxe") < calls.index("set power 0")  # PXE first, then the cycle
    _eventually(lambda: "Chassis Power is on" in bmc.ipmitool("chassis", "power", "status"))
    assert "Force PXE" in bmc.ipmitool("chassis", "bootparam", "get", "5")
    driver.power_off()
    driver.power("netboot")
    assert bmc.power_file_state() == "on" and bmc.boot_file_device() == "pxe"
    driver.close()
