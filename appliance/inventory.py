"""The hardware inventory a discovery agent reports: its schema, with bounds on every field.

The agent (discovery_image/agent/inventory) writes this document; POST /api/v2/discovery validates it
here before anything is written, so a malformed or oversized report is refused as a whole with the
offending field named, and the database never holds half of one.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.errors import InvalidInput

# A real server has a few dozen disks and NICs at most; the bounds stop a broken or hostile agent
# from filling the database, not a legitimate machine.
MAX_DISKS = 256
MAX_NICS = 128
MAX_BODY_BYTES = 256 * 1024

Short = Annotated[str, Field(max_length=256)]
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _mac(value: str | None) -> str | None:
    if value is None:
        return None
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"'{value}' is not a MAC address")
    return mac


class _Strict(BaseModel):
    # unknown keys are ignored (a newer agent may report more), but the known ones must be right
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class SystemInfo(_Strict):
    manufacturer: Short | None = None
    product: Short | None = None
    serial: Short | None = None
    uuid: Short | None = None
    bios_version: Short | None = None


class CpuInfo(_Strict):
    threads: int | None = Field(default=None, ge=1, le=65536)
    sockets: int | None = Field(default=None, ge=1, le=1024)
    cores_per_socket: int | None = Field(default=None, ge=1, le=65536)
    model: Short | None = None


class MemoryInfo(_Strict):
    total_mb: int | None = Field(default=None, ge=0, le=1 << 40)
    kernel_kb: int | None = Field(default=None, ge=0, le=1 << 50)
    dimms: int | None = Field(default=None, ge=0, le=4096)


class Disk(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    size_bytes: int | None = Field(default=None, ge=0, le=1 << 60)
    model: Short | None = None
    vendor: Short | None = None
    serial: Short | None = None
    rotational: bool | None = None


class Nic(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=32)]
    mac: str
    driver: Short | None = None
    bus: Short | None = None
    link: bool | None = None
    speed_mbps: int | None = Field(default=None, ge=0, le=10_000_000)

    _check_mac = field_validator("mac")(_mac)


class BmcInfo(_Strict):
    present: bool = False
    channel: int | None = Field(default=None, ge=0, le=15)
    address: Short | None = None
    netmask: Short | None = None
    gateway: Short | None = None
    mac: Short | None = None
    source: Short | None = None


class BootTimes(_Strict):
    kernel: Short | None = None
    # seconds since the kernel started: init ran, drivers loaded, agent started, DHCP lease, this report
    init_start_s: float | None = Field(default=None, ge=0)
    drivers_done_s: float | None = Field(default=None, ge=0)
    agent_start_s: float | None = Field(default=None, ge=0)
    network_up_s: float | None = Field(default=None, ge=0)
    uptime_s: float | None = Field(default=None, ge=0)


class Inventory(_Strict):
    """What POST /api/v2/discovery carries (besides the one-time token)."""

    schema_: int = Field(default=1, alias="schema", ge=1, le=1)
    boot_mac: str | None = None
    system: SystemInfo = Field(default_factory=SystemInfo)
    cpu: CpuInfo = Field(default_factory=CpuInfo)
    memory: MemoryInfo = Field(default_factory=MemoryInfo)
    disks: list[Disk] = Field(default_factory=list, max_length=MAX_DISKS)
    nics: list[Nic] = Field(default_factory=list, min_length=1, max_length=MAX_NICS)
    bmc: BmcInfo = Field(default_factory=BmcInfo)
    boot: BootTimes = Field(default_factory=BootTimes)

    _check_boot_mac = field_validator("boot_mac")(_mac)

    def macs(self) -> list[str]:
        """Every MAC of the machine, the boot NIC's first."""
        found = [self.boot_mac] if self.boot_mac else []
        found += [nic.mac for nic in self.nics if nic.mac not in found]
        return found

    def stored(self) -> dict[str, Any]:
        """The form kept in Node.inventory."""
        return self.model_dump(mode="json", by_alias=True)


def parse_inventory(data: Any) -> Inventory:
    """Validate a decoded JSON document; any problem is one InvalidInput naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidInput("body", "the inventory must be a JSON object")
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(field, first["msg"]) from exc
