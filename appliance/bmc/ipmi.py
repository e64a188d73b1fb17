"""IPMI 2.0 (RMCP+ / lanplus) driver on pyghmi.

pyghmi only ever proposes SHA-1 or SHA-256 authentication with AES confidentiality when it opens an
RMCP+ session, so Kiln never uses cipher suite 0; `security()` reports a BMC that still offers it.
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import fru as ipmi_fru

from appliance.bmc.base import (
    PRIVILEGES,
    BMCDriver,
    BMCTarget,
    BMCUser,
    BootDevice,
    BootMode,
    BootSetting,
    Inventory,
    LanConfig,
    PowerState,
    SecurityReport,
    check_lan_args,
    retrying,
)
from appliance.bmc.ipmi_session import (
    TIMEOUT_CODE,
    fix_pyghmi_wakeup_race,
    forget_broken_sessions,
    login,
    shared_session,
)
from appliance.errors import BMCAuthError, BMCError, BMCUnreachable, BMCUnsupported, InvalidInput

log = logging.getLogger(__name__)

T = TypeVar("T")

# IPMI 2.0 table 28-14, boot flags data 2 bits 5:2 (device selector)
_BOOT_SELECTORS: dict[int, str] = {0x1: "pxe", 0x2: "disk", 0x3: "safe", 0x5: "cd", 0x6: "setup"}
_PYGHMI_BOOTDEV: dict[str, str] = {"pxe": "network", "disk": "hd"}
# IPMI completion codes that mean "not this BMC"
_UNSUPPORTED_CODES = {0xC1, 0x80}
_AUTH_WORDS = ("password", "unauthorized name", "rakp", "privilege", "kg", "username")
_CIPHER_ZERO = (
    "cipher suite 0 is enabled (no authentication, integrity or encryption): anyone who knows a "
    "user name can control this BMC without its password; disable cipher suite 0 on the BMC"
)


def _classify(target: BMCTarget, what: str, exc: Exception) -> BMCError:
    """Turn a pyghmi exception into the one error tree, with a message an operator can act on."""
    text = str(exc) if str(exc) not in ("", "None") else ""
    code = getattr(exc, "ipmicode", 0)
    where = f"IPMI BMC {target.describe()}"
    lowered = text.lower()
    if any(word in lowered for word in _AUTH_WORDS):
        return BMCAuthError(
            f"{where} refused user '{target.username}' ({text}): check the BMC username and password"
        )
    if (
        not text
        or code == TIMEOUT_CODE
        or "timeout" in lowered
        or "no longer connected" in lowered
        or "failed to initialize" in lowered
        or "unable to transmit" in lowered
        or "disconnected" in lowered
    ):
        return BMCUnreachable(
            f"{where} did not answer ({what}) within {target.timeout:.0f}s: check the address, "
            "that UDP port is reachable from Kiln and that IPMI over LAN is enabled"
        )
    if code in _UNSUPPORTED_CODES or isinstance(exc, pyghmi_exc.UnsupportedFunctionality):
        return BMCUnsupported(f"{where} does not support {what} ({text or hex(code)})")
    return BMCError(f"{where}: {what} failed: {text or hex(code)}")


class IPMIDriver(BMCDriver):
    name = "ipmi"

    def __init__(self, target: BMCTarget) -> None:
        super().__init__(target)
        fix_pyghmi_wakeup_race()
        self._shared = shared_session(target)
        self.lock = self._shared.lock

    # --- session -----------------------------------------------------------------------------

    def _session(self) -> Any:
        if self._shared.cmd is None:
            self._shared.cmd = login(self.target)
        return self._shared.cmd

    def _drop_session(self) -> None:
        cmd, self._shared.cmd, self._shared.channel = self._shared.cmd, None, None
        if cmd is not None:
            try:
                cmd.ipmi_session.logout()
            except Exception:  # a dead session cannot log out; it is being dropped anyway
                log.debug("bmc %s: logout of a broken session failed", self.target.describe())
            forget_broken_sessions(self.target)

    def _once(self, what: str, fn: Callable[[Any], T]) -> T:
        with self.lock:
            try:
                return fn(self._session())
            except BMCError:
                raise
            except Exception as exc:  # pyghmi raises bare Exception and AttributeError on some paths
                error = _classify(self.target, what, exc)
                if isinstance(error, BMCUnreachable | BMCAuthError):
                    self._drop_session()
                raise error from exc

    def _call(self, what: str, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        if not retry:
            return self._once(what, fn)
        return retrying(self.target, what, lambda: self._once(what, fn))

    def _net_channel(self, cmd: Any) -> int:
        if self._shared.channel is None:
            self._shared.channel = int(cmd.get_network_channel())
        return self._shared.channel

    def close(self) -> None:
        with self.lock:
            self._drop_session()

    # --- power -------------------------------------------------------------------------------

    def validate(self) -> None:
        self.power_state()

    def power_state(self) -> PowerState:
        state = self._call("power status", lambda c: c.get_power()["powerstate"])
        return "on" if state == "on" else "off"

    def _set_power(self, state: str) -> None:
        # not retried: a lost answer to "cycle" or "reset" must not cycle the machine twice
        self._call(f"power {state}", lambda c: c.set_power(state, wait=False), retry=False)

    def power_on(self) -> None:
        self._set_power("on")

    def power_off(self) -> None:
        self._set_power("off")

    def soft_off(self) -> None:
        self._set_power("shutdown")

    def reset(self) -> None:
        self._set_power("reset")

    def power_cycle(self) -> None:
        def cycle(c: Any) -> None:
            try:
                c.xraw_command(netfn=0x00, command=0x02, data=(0x02,))
            except pyghmi_exc.IpmiException as exc:
                # 0xD5: "not supported in present state" -- a chassis that is off cannot cycle
                if exc.ipmicode != 0xD5:
                    raise
                c.set_power("on", wait=False)

        self._call("power cycle", cycle, retry=False)

    # --- boot device -------------------------------------------------------------------------

    def get_boot_device(self) -> BootSetting:
        def read(c: Any) -> BootSetting:
            data = bytes(c.xraw_command(netfn=0x00, command=0x09, data=(5, 0, 0))["data"])
            flags, selector = data[2], (data[3] >> 2) & 0x0F
            device = _BOOT_SELECTORS.get(selector, str(selector)) if selector else None
            # ipmi_sim (OpenIPMI 2.0) answers the device from its chassis_control script but never
            # sets the valid/persistent/EFI flag bits, so only trust them when "valid" is set.
            if not flags & 0x80:
                return BootSetting(device=device)
            mode: BootMode = "uefi" if flags & 0x20 else "bios"
            return BootSetting(device=device, persistent=bool(flags & 0x40), mode=mode)

        return self._call("read boot device", read)

    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, mode: BootMode | None = None
    ) -> None:
        if device not in _PYGHMI_BOOTDEV:
            raise InvalidInput("device", f"'{device}' is not one of pxe, disk")
        self._call(
            f"set boot device {device}",
            lambda c: c.set_bootdev(_PYGHMI_BOOTDEV[device], persist=persistent, uefiboot=mode == "uefi"),
        )

    # --- LAN ---------------------------------------------------------------------------------

    def get_lan(self) -> LanConfig:
        def read(c: Any) -> LanConfig:
            channel = self._net_channel(c)

            def param(number: int) -> bytes:
                rsp = c.xraw_command(netfn=0x0C, command=0x02, data=(channel, number, 0, 0))
                return bytes(rsp["data"])[1:]

            source_code = param(4)[0] & 0x0F
            source: Literal["static", "dhcp", "unknown"] = {1: "static", 2: "dhcp"}.get(
                source_code, "unknown"
            )  # type: ignore[assignment]
            address = socket.inet_ntoa(param(3)[:4])
            netmask = socket.inet_ntoa(param(6)[:4])
            gateway = socket.inet_ntoa(param(12)[:4])
            mac = ":".join(f"{b:02x}" for b in param(5)[:6])
            return LanConfig(
                source=source,
                address=None if address == "0.0.0.0" else address,
                netmask=None if netmask == "0.0.0.0" else netmask,
                gateway=None if gateway == "0.0.0.0" else gateway,
                mac=None if mac == "00:00:00:00:00:00" else mac,
            )

        return self._call("read LAN configuration", read)

    def set_lan(
        self,
        *,
        source: Literal["static", "dhcp"],
        address: str | None = None,
        netmask: str | None = None,
        gateway: str | None = None,
    ) -> None:
        address, netmask, gateway = check_lan_args(source, address, netmask, gateway)

        def write(c: Any) -> None:
            channel = self._net_channel(c)

            def put(number: int, value: bytes) -> None:
                c.xraw_command(netfn=0x0C, command=0x01, data=bytes((channel, number)) + value)

            # IPMI 2.0 §23.1 parameter 0: mark "set in progress", write, "commit write", then
            # "set complete". pyghmi's set_net_configuration skips this and ipmi_sim then ignores
            # the writes.
            put(0, b"\x01")
            try:
                put(4, b"\x02" if source == "dhcp" else b"\x01")
                if source == "static":
                    assert address and netmask
                    put(3, socket.inet_aton(address))
                    put(6, socket.inet_aton(netmask))
                    put(12, socket.inet_aton(gateway or "0.0.0.0"))
                try:
                    put(0, b"\x02")
                except pyghmi_exc.IpmiException as exc:
                    if exc.ipmicode not in _UNSUPPORTED_CODES:  # commit is optional (§23.1)
                        raise
            finally:
                put(0, b"\x00")

        self._call(f"set LAN configuration ({source})", write, retry=False)

    # --- users -------------------------------------------------------------------------------

    def _user_slots(self, c: Any) -> dict[int, str]:
        channel = self._net_channel(c)
        count = int(c.get_channel_max_user_count(channel))
        return {uid: (c.get_user_name(uid) or "") for uid in range(1, count + 1)}

    def list_users(self) -> list[BMCUser]:
        def read(c: Any) -> list[BMCUser]:
            users = c.get_users(self._net_channel(c))
            return [
                BMCUser(
                    uid=str(uid),
                    name=info.get("name") or "",
                    privilege=str(info.get("access", {}).get("privilege_level", "")),
                    enabled=bool(info.get("access", {}).get("ipmi_msg")),
                )
                for uid, info in sorted(users.items())
                if info.get("name")
            ]

        return self._call("list users", read)

    def set_user(self, name: str, password: str, *, privilege: str = "administrator") -> BMCUser:
        if privilege not in PRIVILEGES:
            raise InvalidInput("privilege", f"'{privilege}' is not one of {', '.join(PRIVILEGES)}")
        if not 0 < len(name.encode()) <= 16:
            raise InvalidInput("name", "an IPMI user name is 1-16 bytes")
        if not 0 < len(password.encode()) <= 20:
            raise InvalidInput("password", "an IPMI password is 1-20 bytes")

        def write(c: Any) -> BMCUser:
            slots = self._user_slots(c)
            uid = next((u for u, n in slots.items() if n == name), None)
            if uid is None:
                # slot 1 is the anonymous (null-name) user on every IPMI BMC
                uid = next((u for u, n in slots.items() if u > 1 and not n), None)
            if uid is None:
                raise BMCError(f"IPMI BMC {self.target.describe()} has no free user slot for '{name}'")
            c.create_user(
                uid, name, password, channel=self._net_channel(c), link_auth=True, privilege_level=privilege
            )
            return BMCUser(uid=str(uid), name=name, privilege=privilege, enabled=True)

        return self._call(f"set user {name}", write, retry=False)

    def delete_user(self, name: str) -> None:
        def write(c: Any) -> None:
            for uid, slot_name in self._user_slots(c).items():
                if slot_name == name:
                    c.user_delete(uid, channel=self._net_channel(c))

        self._call(f"delete user {name}", write, retry=False)

    # --- inventory and security --------------------------------------------------------------

    def inventory(self) -> Inventory:
        def read(c: Any) -> Inventory:
            inv = Inventory()
            dev = bytes(c.xraw_command(netfn=0x06, command=0x01)["data"])
            inv.firmware = f"{dev[2] & 0x7F}.{dev[3]:02x}"
            manufacturer_id = int.from_bytes(dev[6:9], "little")
            inv.fru["device_id"] = {
                "manufacturer_id": manufacturer_id,
                "product_id": int.from_bytes(dev[9:11], "little"),
            }
            try:
                guid = bytes(c.xraw_command(netfn=0x06, command=0x37)["data"])[:16]
                # the SMBIOS byte order, as dmidecode shows the system UUID: matches discovery's
                inv.guid = str(uuid.UUID(bytes_le=guid)) if len(guid) == 16 else None
            except pyghmi_exc.IpmiException:
                pass
            system = self._fru_zero(c)
            inv.fru["system"] = {k: v for k, v in system.items() if isinstance(v, str | int | float)}
            inv.manufacturer = system.get("Manufacturer") or system.get("Board manufacturer")
            inv.product = system.get("Product name") or system.get("Board product name")
            inv.serial = system.get("Serial Number") or system.get("Board serial number")
            inv.sensors = self._sensors(c)
            return inv

        return self._call("read inventory", read)

    def _fru_zero(self, c: Any) -> dict[str, Any]:
        """FRU device 0, read in small chunks: ipmi_sim (and some real BMCs) refuse pyghmi's 224-byte
        reads with 0xC8 "request data field length limit exceeded", which pyghmi does not back off on."""
        try:
            size = int.from_bytes(
                bytes(c.xraw_command(netfn=0x0A, command=0x10, data=(0,))["data"])[:2], "little"
            )
            raw = bytearray()
            chunk = 32
            while len(raw) < size:
                want = min(chunk, size - len(raw))
                offset = len(raw)
                try:
                    rsp = bytes(
                        c.xraw_command(netfn=0x0A, command=0x11, data=(0, offset & 0xFF, offset >> 8, want))[
                            "data"
                        ]
                    )
                except pyghmi_exc.IpmiException as exc:
                    if exc.ipmicode in (0xC7, 0xC8, 0xC9, 0xCA) and chunk > 8:
                        chunk //= 2
                        continue
                    raise
                if rsp[0] == 0:
                    break
                raw += rsp[1 : 1 + rsp[0]]
            info = ipmi_fru.FRU(rawdata=bytes(raw)).info or {}
        except (pyghmi_exc.PyghmiException, KeyError, IndexError, ValueError, struct.error) as exc:
            log.debug("bmc %s: no FRU 0 (%s)", self.target.describe(), exc)
            return {}
        return dict(info)

    def _sensors(self, c: Any) -> list[dict[str, Any]]:
        try:
            readings = list(c.get_sensor_data())
        except (pyghmi_exc.PyghmiException, KeyError, IndexError, struct.error) as exc:
            # sensors "where available": a BMC without an SDR repository has none to give
            log.debug("bmc %s: no sensors (%s)", self.target.describe(), exc)
            return []
        return [
            {
                "name": r.name,
                "value": r.value,
                "units": r.units,
                "health": int(r.health),
                "states": list(r.states),
            }
            for r in readings
        ]

    def security(self) -> SecurityReport:
        def read(c: Any) -> SecurityReport:
            findings: list[str] = []
            channel = self._net_channel(c)
            if 0 in self._cipher_suites(c, channel):
                findings.append(_CIPHER_ZERO)
            try:
                caps = bytes(c.xraw_command(netfn=0x06, command=0x38, data=(0x80 | channel, 4))["data"])
            except pyghmi_exc.IpmiException:
                # a pre-session command: ipmi_sim refuses it inside a session (0xD5)
                caps = b""
            if len(caps) > 2 and caps[1] & 0x01:
                findings.append("IPMI 1.5 authentication type NONE is enabled: disable it")
            if len(caps) > 2 and caps[2] & 0x01:
                findings.append("anonymous login is enabled: disable the null user")
            return SecurityReport(tuple(findings))

        return self._call("read security settings", read)

    @staticmethod
    def _cipher_suites(c: Any, channel: int) -> set[int]:
        """Get Channel Cipher Suites (IPMI 2.0 §22.15): records of 0xC0 <id> <algorithms>."""
        raw = b""
        for index in range(0x40):
            try:
                rsp = bytes(c.xraw_command(netfn=0x06, command=0x54, data=(channel, 0, 0x80 | index))["data"])
            except pyghmi_exc.IpmiException:
                if index == 0:
                    raise
                break  # some BMCs answer an index past the end with an error instead of a short list
            raw += rsp[1:]
            if len(rsp) < 17:
                break
        ids: set[int] = set()
        i = 0
        while i < len(raw):
            if raw[i] == 0xC0 and i + 1 < len(raw):
                ids.add(raw[i + 1])
                i += 2
            elif raw[i] == 0xC1:  # OEM record: id plus a 3-byte IANA number
                i += 5
            else:
                i += 1
        return ids
