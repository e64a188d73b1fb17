"""Redfish driver on sushy: one `sushy.Sushy` (one HTTP session) per BMC, reused."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import sushy
from sushy import exceptions as sushy_exc

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
from appliance.errors import BMCAuthError, BMCError, BMCUnreachable, BMCUnsupported, InvalidInput

log = logging.getLogger(__name__)

T = TypeVar("T")

_RESET = {
    "on": sushy.ResetType.ON,
    "off": sushy.ResetType.FORCE_OFF,
    "soft": sushy.ResetType.GRACEFUL_SHUTDOWN,
    "reset": sushy.ResetType.FORCE_RESTART,
}
_BOOT_TARGET = {"pxe": sushy.BootSource.PXE, "disk": sushy.BootSource.HDD}
_BOOT_FROM_REDFISH = {sushy.BootSource.PXE: "pxe", sushy.BootSource.HDD: "disk"}
_MODE = {"uefi": sushy.BootSourceOverrideMode.UEFI, "bios": sushy.BootSourceOverrideMode.LEGACY}
# Redfish privilege names (AccountService roles) for Kiln's three levels
_ROLES = {"administrator": "Administrator", "operator": "Operator", "user": "ReadOnly"}
_WEAK_TLS = {"SSLv3", "TLSv1", "TLSv1.1"}


def _classify(target: BMCTarget, what: str, exc: Exception) -> BMCError:
    where = f"Redfish BMC {target.describe()}"
    if isinstance(exc, sushy_exc.AccessError):
        return BMCAuthError(
            f"{where} refused user '{target.username}' (HTTP {exc.status_code}): "
            "check the BMC username and password"
        )
    if isinstance(exc, sushy_exc.ConnectionError):
        return BMCUnreachable(
            f"{where} did not answer ({what}) within {target.timeout:.0f}s: check the address, "
            "that HTTPS is reachable from Kiln and the BMC's web service is enabled"
        )
    if isinstance(exc, sushy_exc.ResourceNotFoundError | sushy_exc.MissingActionError):
        return BMCUnsupported(f"{where} does not support {what}")
    if isinstance(exc, sushy_exc.ServerSideError):
        error = BMCError(f"{where}: {what} failed on the BMC (HTTP {exc.status_code})")
        error.retryable = True  # a busy BMC answers 5xx; it is worth asking again
        return error
    return BMCError(f"{where}: {what} failed: {exc}")


class RedfishDriver(BMCDriver):
    name = "redfish"

    def __init__(self, target: BMCTarget) -> None:
        super().__init__(target)
        self._root: Any = None
        self._system_path: str | None = None

    def _service(self) -> Any:
        if self._root is None:
            self._root = sushy.Sushy(
                self.target.base_url,
                username=self.target.username,
                password=self.target.password,
                verify=self.target.verify_tls,
                read_timeout=max(1, int(self.target.timeout)),
                connect_timeout=max(1, int(self.target.timeout / 3)),
                # one try per call inside sushy; Kiln's own retry policy decides about more
                server_side_retries=1,
                server_side_retries_delay=1,
            )
        return self._root

    def _system(self) -> Any:
        root = self._service()
        if self._system_path is None:
            members = list(root.get_system_collection().members_identities)
            if self.target.system_id:
                wanted = f"/redfish/v1/Systems/{self.target.system_id}"
                if wanted not in members:
                    raise BMCError(
                        f"Redfish BMC {self.target.describe()}: no system '{self.target.system_id}' "
                        f"(it has {', '.join(m.rsplit('/', 1)[-1] for m in members) or 'none'})"
                    )
                self._system_path = wanted
            elif len(members) == 1:
                self._system_path = members[0]
            else:
                raise BMCError(
                    f"Redfish BMC {self.target.describe()} manages {len(members)} systems: give the "
                    "address as https://<bmc>/redfish/v1/Systems/<id>"
                )
        return root.get_system(self._system_path)

    def _once(self, what: str, fn: Callable[[], T]) -> T:
        with self.lock:
            try:
                return fn()
            except BMCError:
                raise
            except sushy_exc.SushyError as exc:
                error = _classify(self.target, what, exc)
                if isinstance(error, BMCUnreachable | BMCAuthError):
                    self._root, self._system_path = None, None
                raise error from exc

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        if not retry:
            return self._once(what, fn)
        return retrying(self.target, what, lambda: self._once(what, fn))

    def close(self) -> None:
        with self.lock:
            root, self._root, self._system_path = self._root, None, None
        if root is not None:
            try:
                root._conn.close()
            except Exception:  # closing a dead connection is not an error worth surfacing
                log.debug("bmc %s: close failed", self.target.describe())

    # --- power -------------------------------------------------------------------------------

    def validate(self) -> None:
        self.power_state()

    def power_state(self) -> PowerState:
        state = self._call("power status", lambda: self._system().power_state)
        # POWERING_OFF still draws power; POWERING_ON is not yet on: report what the switch says
        return "on" if state in (sushy.PowerState.ON, sushy.PowerState.POWERING_OFF) else "off"

    def _reset(self, action: str, kind: Any) -> None:
        def run() -> None:
            system = self._system()
            allowed = system.get_allowed_reset_system_values()
            if allowed and kind not in allowed:
                raise BMCUnsupported(
                    f"Redfish BMC {self.target.describe()} does not offer reset type {kind.value} "
                    f"(power {action})"
                )
            system.reset_system(kind)

        self._call(f"power {action}", run, retry=False)

    def power_on(self) -> None:
        self._reset("on", _RESET["on"])

    def power_off(self) -> None:
        self._reset("off", _RESET["off"])

    def soft_off(self) -> None:
        self._reset("soft", _RESET["soft"])

    def reset(self) -> None:
        self._reset("reset", _RESET["reset"])

    def power_cycle(self) -> None:
        def run() -> None:
            system = self._system()
            allowed = system.get_allowed_reset_system_values()
            if system.power_state in (sushy.PowerState.OFF, sushy.PowerState.POWERING_OFF):
                kind = sushy.ResetType.ON
            elif not allowed or sushy.ResetType.POWER_CYCLE in allowed:
                kind = sushy.ResetType.POWER_CYCLE
            else:
                kind = sushy.ResetType.FORCE_RESTART
            system.reset_system(kind)

        self._call("power cycle", run, retry=False)

    # --- boot --------------------------------------------------------------------------------

    def get_boot_device(self) -> BootSetting:
        def read() -> BootSetting:
            boot = self._system().boot
            if boot.enabled == sushy.BootSourceOverrideEnabled.DISABLED or boot.target in (
                None,
                sushy.BootSource.NONE,
            ):
                return BootSetting(device=None)
            device = _BOOT_FROM_REDFISH.get(boot.target, str(getattr(boot.target, "value", boot.target)))
            mode: BootMode | None = {
                sushy.BootSourceOverrideMode.UEFI: "uefi",
                sushy.BootSourceOverrideMode.LEGACY: "bios",
            }.get(boot.mode)  # type: ignore[assignment]
            return BootSetting(
                device=device,
                persistent=boot.enabled == sushy.BootSourceOverrideEnabled.CONTINUOUS,
                mode=mode,
            )

        return self._call("read boot device", read)

    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, mode: BootMode | None = None
    ) -> None:
        if device not in _BOOT_TARGET:
            raise InvalidInput("device", f"'{device}' is not one of pxe, disk")
        enabled = (
            sushy.BootSourceOverrideEnabled.CONTINUOUS if persistent else sushy.BootSourceOverrideEnabled.ONCE
        )
        self._call(
            f"set boot device {device}",
            lambda: self._system().set_system_boot_options(
                _BOOT_TARGET[device], enabled=enabled, mode=_MODE[mode] if mode else None
            ),
        )

    # --- LAN (Manager EthernetInterfaces) ----------------------------------------------------

    def _manager_nic(self) -> tuple[Any, str, dict[str, Any]]:
        root = self._service()
        conn = root._conn
        managers = list(root.get_manager_collection().members_identities)
        if not managers:
            raise BMCUnsupported(f"Redfish BMC {self.target.describe()} lists no manager")
        manager = conn.get(managers[0]).json()
        nics_ref = (manager.get("EthernetInterfaces") or {}).get("@odata.id")
        if not nics_ref:
            raise BMCUnsupported(
                f"Redfish BMC {self.target.describe()} does not expose its own network interface "
                "(Manager EthernetInterfaces): configure its address in-band"
            )
        members = conn.get(nics_ref).json().get("Members") or []
        if not members:
            raise BMCUnsupported(f"Redfish BMC {self.target.describe()} lists no manager interface")
        path = members[0]["@odata.id"]
        return conn, path, conn.get(path).json()

    def get_lan(self) -> LanConfig:
        def read() -> LanConfig:
            _, _, nic = self._manager_nic()
            v4 = (nic.get("IPv4Addresses") or [{}])[0]
            origin = str(v4.get("AddressOrigin", "")).lower()
            source: Literal["static", "dhcp", "unknown"] = (
                "dhcp" if origin == "dhcp" else "static" if origin == "static" else "unknown"
            )
            return LanConfig(
                source=source,
                address=v4.get("Address"),
                netmask=v4.get("SubnetMask"),
                gateway=v4.get("Gateway"),
                mac=(nic.get("MACAddress") or "").lower() or None,
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

        def write() -> None:
            conn, path, _ = self._manager_nic()
            body: dict[str, Any] = {"DHCPv4": {"DHCPEnabled": source == "dhcp"}}
            if source == "static":
                body["IPv4StaticAddresses"] = [
                    {"Address": address, "SubnetMask": netmask, "Gateway": gateway or "0.0.0.0"}
                ]
            conn.patch(path, data=body)

        self._call(f"set LAN configuration ({source})", write, retry=False)

    # --- users (AccountService) --------------------------------------------------------------

    def _accounts(self) -> tuple[Any, list[dict[str, Any]]]:
        conn = self._service()._conn
        try:
            service = conn.get("/redfish/v1/AccountService").json()
        except sushy_exc.ResourceNotFoundError:
            raise BMCUnsupported(
                f"Redfish BMC {self.target.describe()} has no AccountService: manage users in-band"
            ) from None
        ref = (service.get("Accounts") or {}).get("@odata.id")
        if not ref:
            raise BMCUnsupported(f"Redfish BMC {self.target.describe()} lists no accounts")
        members = conn.get(ref).json().get("Members") or []
        return conn, [conn.get(m["@odata.id"]).json() for m in members]

    def list_users(self) -> list[BMCUser]:
        def read() -> list[BMCUser]:
            _, accounts = self._accounts()
            return [
                BMCUser(
                    uid=str(a.get("Id")),
                    name=a.get("UserName", ""),
                    privilege=str(a.get("RoleId", "")),
                    enabled=bool(a.get("Enabled", True)),
                )
                for a in accounts
                if a.get("UserName")
            ]

        return self._call("list users", read)

    def set_user(self, name: str, password: str, *, privilege: str = "administrator") -> BMCUser:
        if privilege not in PRIVILEGES:
            raise InvalidInput("privilege", f"'{privilege}' is not one of {', '.join(PRIVILEGES)}")

        def write() -> BMCUser:
            conn, accounts = self._accounts()
            body = {"UserName": name, "Password": password, "RoleId": _ROLES[privilege], "Enabled": True}
            existing = next((a for a in accounts if a.get("UserName") == name), None)
            if existing is not None:
                conn.patch(existing["@odata.id"], data=body)
                uid = str(existing.get("Id"))
            else:
                conn.post("/redfish/v1/AccountService/Accounts", data=body)
                uid = name
            return BMCUser(uid=uid, name=name, privilege=privilege, enabled=True)

        return self._call(f"set user {name}", write, retry=False)

    def delete_user(self, name: str) -> None:
        def write() -> None:
            conn, accounts = self._accounts()
            for account in accounts:
                if account.get("UserName") == name:
                    conn.delete(account["@odata.id"])

        self._call(f"delete user {name}", write, retry=False)

    # --- inventory and security --------------------------------------------------------------

    def inventory(self) -> Inventory:
        def read() -> Inventory:
            system = self._system()
            inv = Inventory(
                manufacturer=system.manufacturer,
                product=system.model or system.name,
                serial=system.serial_number,
                guid=system.uuid,
            )
            try:
                managers = list(self._service().get_manager_collection().members_identities)
                if managers:
                    inv.firmware = self._service().get_manager(managers[0]).firmware_version
            except sushy_exc.SushyError as exc:
                log.debug("bmc %s: no manager firmware (%s)", self.target.describe(), exc)
            inv.fru["system"] = {
                "id": system.identity,
                "name": system.name,
                "bios_version": system.bios_version,
                "sku": system.sku,
            }
            return inv

        return self._call("read inventory", read)

    def security(self) -> SecurityReport:
        findings: list[str] = []
        if self.target.scheme == "http":
            findings.append(
                "Redfish over plain HTTP: the BMC password crosses the network in clear; use https"
            )
            return SecurityReport(tuple(findings))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        try:
            with (
                socket.create_connection(
                    (self.target.host, self.target.port or 443), timeout=self.target.timeout
                ) as raw,
                context.wrap_socket(raw, server_hostname=self.target.host) as tls,
            ):
                version, cipher = tls.version(), tls.cipher()
        except (OSError, ssl.SSLError) as exc:
            raise BMCUnreachable(
                f"Redfish BMC {self.target.describe()}: TLS handshake failed ({exc})"
            ) from exc
        if version in _WEAK_TLS:
            findings.append(f"the BMC negotiates {version}: upgrade its firmware or enable TLS 1.2+")
        if cipher and cipher[2] < 128:
            findings.append(f"the BMC negotiates a {cipher[2]}-bit cipher ({cipher[0]})")
        return SecurityReport(tuple(findings))
