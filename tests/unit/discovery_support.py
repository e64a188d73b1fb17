"""Shared by the discovery and boot tests: an inventory like the agent's, and a token from /boot/ipxe."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.api_support import Api


def inventory(
    macs: tuple[str, ...] = ("52:54:00:00:00:01",),
    *,
    uuid: str | None = "6a1f3c2e-1111-4a4b-9c9d-000000000001",
    memory_mb: int = 1024,
    disks: tuple[tuple[str, int, str], ...] = (("vda", 2 * 2**30, "DISK1"),),
) -> dict[str, Any]:
    return {
        "schema": 1,
        "boot_mac": macs[0],
        "system": {"manufacturer": "QEMU", "product": "Standard PC", "serial": None, "uuid": uuid},
        "cpu": {"threads": 1, "sockets": 1, "cores_per_socket": 1, "model": "QEMU Virtual CPU"},
        "memory": {"total_mb": memory_mb, "kernel_kb": memory_mb * 900, "dimms": 1},
        "disks": [
            {
                "name": n,
                "size_bytes": size,
                "model": None,
                "vendor": "0x1af4",
                "serial": serial,
                "rotational": True,
            }
            for n, size, serial in disks
        ],
        "nics": [
            {
                "name": f"eth{i}",
                "mac": mac,
                "driver": "virtio_net",
                "bus": "virtio0",
                "link": True,
                "speed_mbps": None,
            }
            for i, mac in enumerate(macs)
        ],
        "bmc": {"present": False},
        "boot": {"kernel": "6.1.0-56-amd64", "uptime_s": 3.2, "agent_start_s": 2.1},
    }


def boot_token(api: Api, mac: str) -> str:
    """The kiln.token= of the discovery script /boot/ipxe renders for `mac`."""
    script = api.client.get(f"/boot/ipxe?mac={mac}").get_data(as_text=True)
    found = re.search(r"kiln\.token=(\S+)", script)
    assert found, script
    return found.group(1)


def register(api: Api, inv: dict[str, Any]) -> Any:
    token = boot_token(api, inv["boot_mac"])
    return api.client.post("/api/v2/discovery", json={"token": token, **inv})
