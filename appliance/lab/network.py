"""The lab's network: a namespace holding a bridge that Kiln serves, and a veth to the host.

    host                                   namespace <name>
    ─────────────────────────────          ─────────────────────────────────────────────────
    127.0.0.1:<port>  (forwarder) ──┐      ┌─ <host-veth-peer>  <link>.2/30   (web, metrics)
    <host-veth>  <link>.1/30  ══════╧══════╛
                                           <bridge>  <subnet>.1/24  ── DHCP/TFTP/DNS/web
                                              └── taps of QEMU nodes, test clients

DHCP is bound to the bridge inside the namespace, and the veth is not a port of the bridge, so no
DHCP packet can reach a real LAN. The namespace does not forward (net.ipv4.ip_forward stays 0), so
lab nodes reach nothing but Kiln.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from dataclasses import dataclass

from appliance.errors import KilnError

log = logging.getLogger(__name__)


class LabError(KilnError):
    """The lab network cannot be built (not root, a name already taken, a tool missing)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise LabError("the `ip` command is missing: apt-get install iproute2") from exc
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespace_exists(name: str) -> bool:
    listing = ip("netns", "list", check=False).stdout
    return any(line.split()[0] == name for line in listing.splitlines() if line.strip())


def link_exists(name: str, namespace: str | None = None) -> bool:
    prefix = ("-n", namespace) if namespace else ()
    return ip(*prefix, "link", "show", "dev", name, check=False).returncode == 0


@dataclass(frozen=True)
class LabNetwork:
    namespace: str = "kiln-lab"
    bridge: str = "kilnbr0"
    subnet: str = "10.77.0.0/24"
    # a /30 for the veth between host and namespace; link-local so it collides with no real network
    link: str = "169.254.77.0/30"

    def __post_init__(self) -> None:
        for what, name in (("bridge", self.bridge), ("host veth", self.host_veth), ("veth", self.ns_veth)):
            if not 0 < len(name) <= 15:
                raise LabError(f"{what} name '{name}' must be 1-15 characters")
        net = ipaddress.ip_network(self.subnet)
        if net.version != 4 or net.prefixlen > 29:
            raise LabError(f"lab subnet {self.subnet} must be an IPv4 network of /29 or larger")
        if ipaddress.ip_network(self.link).prefixlen != 30:
            raise LabError(f"link network {self.link} must be a /30")

    @property
    def host_veth(self) -> str:
        return f"{self.namespace[:12]}-h"

    @property
    def ns_veth(self) -> str:
        return f"{self.namespace[:12]}-n"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def kiln_address(self) -> str:
        """Kiln's address on the bridge: what lab nodes boot from."""
        return str(self.network.network_address + 1)

    @property
    def host_link_address(self) -> str:
        return str(ipaddress.IPv4Network(self.link).network_address + 1)

    @property
    def ns_link_address(self) -> str:
        """The namespace's end of the veth: the host reaches Kiln's web and metrics here."""
        return str(ipaddress.IPv4Network(self.link).network_address + 2)

    def exists(self) -> bool:
        return namespace_exists(self.namespace) or link_exists(self.host_veth)

    def create(self) -> None:
        """Build namespace, bridge and veth; on any failure, remove what was built."""
        if self.exists():
            raise LabError(
                f"network namespace '{self.namespace}' or link '{self.host_veth}' already exists: "
                "another lab is running, or a previous one was killed (`kiln lab --cleanup` removes it)"
            )
        try:
            ns = ("-n", self.namespace)
            prefix = self.network.prefixlen
            ip("netns", "add", self.namespace)
            ip(*ns, "link", "set", "lo", "up")
            ip(*ns, "link", "add", self.bridge, "type", "bridge")
            ip(*ns, "addr", "add", f"{self.kiln_address}/{prefix}", "dev", self.bridge)
            ip(*ns, "link", "set", self.bridge, "up")
            ip(
                "link",
                "add",
                self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                self.ns_veth,
                "netns",
                self.namespace,
            )
            ip("addr", "add", f"{self.host_link_address}/30", "dev", self.host_veth)
            ip("link", "set", self.host_veth, "up")
            ip(*ns, "addr", "add", f"{self.ns_link_address}/30", "dev", self.ns_veth)
            ip(*ns, "link", "set", self.ns_veth, "up")
        except LabError:
            self.delete()
            raise
        log.info("lab network: namespace %s, bridge %s %s", self.namespace, self.bridge, self.subnet)

    def delete(self) -> None:
        """Remove everything create() made; safe to call twice or on a half-built lab."""
        # deleting the namespace destroys the bridge and the namespace's veth end, and with it the pair
        if namespace_exists(self.namespace):
            ip("netns", "delete", self.namespace, check=False)
        if link_exists(self.host_veth):
            ip("link", "delete", self.host_veth, check=False)

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace, and sent SIGTERM if the lab process dies (even by SIGKILL):
        nothing the lab started may outlive it and keep serving in a namespace nobody removes."""
        return ["ip", "netns", "exec", self.namespace, "setpriv", "--pdeathsig", "TERM", "--", *argv]
