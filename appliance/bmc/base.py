"""The one BMC driver interface, the values it speaks in, and the retry policy every driver shares.

A driver is bound to one BMC (a `BMCTarget`) and keeps one session to it for its lifetime; callers get
drivers from `appliance.bmc.probe.DriverCache` so a BMC sees one session, not one per call. Every
method raises only the BMCError tree of appliance/errors.py.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from appliance.errors import BMCError, InvalidInput

log = logging.getLogger(__name__)

T = TypeVar("T")

PowerState = Literal["on", "off"]
BootDevice = Literal["pxe", "disk"]
BootMode = Literal["bios", "uefi"]
# netboot: network boot next time, then cycle (or power on) -- what re-provisioning a node needs
POWER_ACTIONS = ("on", "off", "soft", "cycle", "reset", "netboot")
BOOT_DEVICES: tuple[BootDevice, ...] = ("pxe", "disk")
BOOT_MODES: tuple[BootMode, ...] = ("bios", "uefi")
PRIVILEGES = ("user", "operator", "administrator")


@dataclass(frozen=True)
class BMCTarget:
    """Where a BMC is and how to log in. The password never appears in repr() or logs."""

    host: str
    username: str
    password: str = field(repr=False)
    port: int | None = None
    driver: str | None = None  # ipmi | redfish | None (probe)
    scheme: str = "https"  # redfish only
    system_id: str | None = None  # redfish: /redfish/v1/Systems/<id>; None = the only system
    verify_tls: bool = False
    timeout: float = 10.0  # seconds for one operation, retries included

    @classmethod
    def parse(
        cls,
        address: str,
        username: str,
        password: str,
        *,
        driver: str | None = None,
        timeout: float = 10.0,
        verify_tls: bool = False,
    ) -> BMCTarget:
        """From a node's bmc_address: `10.0.0.5`, `10.0.0.5:623`, `[fd00::5]:623` or a Redfish URL
        (`https://10.0.0.5`, `http://127.0.0.1:8000/redfish/v1/Systems/<id>`)."""
        address = address.strip()
        if not address:
            raise InvalidInput("bmc_address", "is empty")
        if driver not in (None, "ipmi", "redfish"):
            raise InvalidInput("bmc_driver", f"'{driver}' is not one of ipmi, redfish")
        if "://" in address:
            parts = urlsplit(address)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput("bmc_address", f"'{address}' is not an http(s) URL with a host")
            system_id = None
            marker = "/redfish/v1/Systems/"
            if marker in parts.path:
                system_id = parts.path.split(marker, 1)[1].strip("/") or None
            if driver == "ipmi":
                raise InvalidInput("bmc_address", "an IPMI BMC is given as host or host:port, not a URL")
            return cls(
                host=parts.hostname,
                port=parts.port,
                username=username,
                password=password,
                driver="redfish",
                scheme=parts.scheme,
                system_id=system_id,
                verify_tls=verify_tls,
                timeout=timeout,
            )
        host, port = _split_host_port(address)
        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            driver=driver,
            verify_tls=verify_tls,
            timeout=timeout,
        )

    @property
    def key(self) -> tuple[str, str, int | None, str | None, str]:
        """Identity of the session: a changed password is a different session."""
        return (self.driver or "", self.host, self.port, self.system_id, self.username)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}"

    def describe(self) -> str:
        """For messages and logs: where, never the password."""
        if self.driver == "redfish":
            return self.base_url + (f" system {self.system_id}" if self.system_id else "")
        return f"{self.host}:{self.port or 623}"


def _split_host_port(address: str) -> tuple[str, int | None]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest.removeprefix(":") or None
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    else:
        host, port_text = address, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c in host for c in " /\\@"):
            raise InvalidInput("bmc_address", f"'{address}' is not a host, host:port or URL") from None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidInput("bmc_address", f"'{port_text}' is not a port number")
        port = int(port_text)
    return host, port


@dataclass(frozen=True)
class BootSetting:
    device: BootDevice | str | None  # None: no override; other strings: what the BMC reported
    persistent: bool | None = None  # None: the BMC does not say
    mode: BootMode | None = None


@dataclass(frozen=True)
class LanConfig:
    source: Literal["static", "dhcp", "unknown"]
    address: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class BMCUser:
    uid: str  # IPMI slot number or Redfish account id
    name: str
    privilege: str
    enabled: bool


@dataclass
class Inventory:
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    firmware: str | None = None
    guid: str | None = None
    fru: dict[str, Any] = field(default_factory=dict)
    sensors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "manufacturer": self.manufacturer,
            "product": self.product,
            "serial": self.serial,
            "firmware": self.firmware,
            "guid": self.guid,
            "fru": self.fru,
            "sensors": self.sensors,
        }


@dataclass(frozen=True)
class SecurityReport:
    """What is weak about a BMC's transport: cipher suite 0, anonymous login, bad TLS."""

    findings: tuple[str, ...] = ()

    @property
    def weak(self) -> bool:
        return bool(self.findings)


def retrying(
    target: BMCTarget,
    what: str,
    call: Callable[[], T],
    *,
    attempts: int = 3,
    backoff: float = 0.5,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run `call`, retrying with exponential backoff only on retryable BMC errors.

    The whole thing stays inside `target.timeout`: another attempt starts only if the previous one's
    duration (plus the backoff) still fits before the deadline, so an unreachable BMC costs about
    one timeout, not attempts times the timeout.
    """
    deadline = time.monotonic() + target.timeout
    delay = backoff
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            return call()
        except BMCError as exc:
            took = time.monotonic() - started
            remaining = deadline - time.monotonic()
            if not exc.retryable or attempt == attempts or took + delay > remaining:
                raise
            log.info(
                "bmc %s: %s failed (%s), retry %d in %.1fs", target.describe(), what, exc, attempt, delay
            )
            time.sleep(delay)  # backoff between attempts, not synchronisation
            delay *= 2
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")  # pragma: no cover


class BMCDriver(ABC):
    """One BMC. Subclasses talk the protocol; callers see only these methods.

    Calls on one driver are serialised by `self.lock`: a BMC is a small computer that handles
    concurrent sessions badly, and one session per BMC is the point.
    """

    name: ClassVar[str]

    def __init__(self, target: BMCTarget) -> None:
        self.target = target
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target.describe()} user={self.target.username}>"

    @abstractmethod
    def validate(self) -> None:
        """Log in and read something: BMCAuthError / BMCUnreachable / BMCUnsupported early."""

    @abstractmethod
    def power_state(self) -> PowerState: ...

    @abstractmethod
    def power_on(self) -> None: ...

    @abstractmethod
    def power_off(self) -> None:
        """Hard off, without asking the OS."""

    @abstractmethod
    def soft_off(self) -> None:
        """Ask the OS to shut down (ACPI); the power state changes when it has."""

    @abstractmethod
    def power_cycle(self) -> None: ...

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def get_boot_device(self) -> BootSetting: ...

    @abstractmethod
    def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, mode: BootMode | None = None
    ) -> None: ...

    @abstractmethod
    def get_lan(self) -> LanConfig: ...

    @abstractmethod
    def set_lan(
        self,
        *,
        source: Literal["static", "dhcp"],
        address: str | None = None,
        netmask: str | None = None,
        gateway: str | None = None,
    ) -> None: ...

    @abstractmethod
    def list_users(self) -> list[BMCUser]: ...

    @abstractmethod
    def set_user(self, name: str, password: str, *, privilege: str = "administrator") -> BMCUser:
        """Create the user `name` (or update it if it exists) with this password, enabled."""

    @abstractmethod
    def delete_user(self, name: str) -> None: ...

    @abstractmethod
    def inventory(self) -> Inventory: ...

    @abstractmethod
    def security(self) -> SecurityReport: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Log out; the next call logs in again."""

    def power(self, action: str) -> None:
        """Dispatch one of POWER_ACTIONS."""
        if action not in POWER_ACTIONS:
            raise InvalidInput("action", f"'{action}' is not one of {', '.join(POWER_ACTIONS)}")
        {
            "on": self.power_on,
            "off": self.power_off,
            "soft": self.soft_off,
            "cycle": self.power_cycle,
            "reset": self.reset,
            "netboot": self.netboot,
        }[action]()

    def netboot(self) -> None:
        """One-time network boot, then a power cycle, or power-on for a machine that is off."""
        self.set_boot_device("pxe")
        if self.power_state() == "on":
            self.power_cycle()
        else:
            self.power_on()


def check_lan_args(
    source: str, address: str | None, netmask: str | None, gateway: str | None
) -> tuple[str | None, str | None, str | None]:
    """Validate a LAN configuration before anything is sent to the BMC (nothing half-written)."""
    if source not in ("static", "dhcp"):
        raise InvalidInput("source", f"'{source}' is not static or dhcp")
    if source == "dhcp":
        return None, None, None
    if not address or not netmask:
        raise InvalidInput("address", "a static configuration needs an address and a netmask")
    try:
        iface = ipaddress.IPv4Interface(f"{address}/{netmask}")
    except ValueError as exc:
        raise InvalidInput("address", f"{address}/{netmask}: {exc}") from exc
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError as exc:
            raise InvalidInput("gateway", f"'{gateway}' is not an IPv4 address") from exc
        if gw not in iface.network:
            raise InvalidInput("gateway", f"{gateway} is outside {iface.network}")
    return str(iface.ip), str(iface.netmask), gateway
