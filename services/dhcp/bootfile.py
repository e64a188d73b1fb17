"""Which boot loader a client gets, from what it says it is (DESIGN §5, LAB.md)."""

from __future__ import annotations

from dataclasses import dataclass

from services.dhcp.packet import Packet

BIOS_LOADER = "undionly.kpxe"
# Debian's ipxe package has no arm64 build; the operator drops one into the TFTP root under this name.
ARM64_LOADER = "ipxe-arm64.efi"
# RFC 4578 / IANA processor architecture types
ARCH_BIOS = 0
ARCH_EFI_IA32 = 6
ARCH_EFI_X64 = 7
ARCH_EFI_BC = 9
ARCH_EFI_ARM64 = 11
ARCH_EFI_X64_HTTP = 16
ARCH_EFI_ARM64_HTTP = 19
_ARM64 = frozenset({ARCH_EFI_ARM64, ARCH_EFI_ARM64_HTTP})


@dataclass(frozen=True, slots=True)
class BootChoice:
    """What goes into the reply: the file name (option 67 / `file`) and how it is fetched."""

    filename: str
    over_http: bool
    # UEFI HTTP boot only accepts an offer that echoes vendor class "HTTPClient" (UEFI 2.x §24.7)
    vendor_class: str | None = None


def is_netboot_client(packet: Packet) -> bool:
    """PXE firmware, UEFI HTTP boot or iPXE: clients that get boot information (and proxyDHCP offers)."""
    vendor = packet.options.get(60, b"")
    return (
        packet.is_ipxe
        or vendor.startswith(b"PXEClient")
        or vendor.startswith(b"HTTPClient")
        or 93 in packet.options
    )


def choose(packet: Packet, *, advertise: str, web_port: int, uefi_loader: str) -> BootChoice | None:
    """The boot file for `packet`'s client, or None for a client that is not network booting."""
    base = f"http://{advertise}:{web_port}" if web_port != 80 else f"http://{advertise}"
    if packet.is_ipxe:
        # iPXE expands ${net0/mac} itself; the web side renders the node's bootenv from it.
        return BootChoice(f"{base}/boot/ipxe?mac=${{net0/mac}}", over_http=True)
    arch = packet.client_arch
    if packet.options.get(60, b"").startswith(b"HTTPClient"):
        loader = ARM64_LOADER if arch in _ARM64 else uefi_loader
        return BootChoice(f"{base}/boot/{loader}", over_http=True, vendor_class="HTTPClient")
    if arch is None:
        if packet.options.get(60, b"").startswith(b"PXEClient"):
            return BootChoice(BIOS_LOADER, over_http=False)
        return None
    if arch == ARCH_BIOS:
        return BootChoice(BIOS_LOADER, over_http=False)
    if arch in (ARCH_EFI_IA32, ARCH_EFI_X64, ARCH_EFI_BC):
        return BootChoice(uefi_loader, over_http=False)
    if arch in _ARM64:
        return BootChoice(ARM64_LOADER, over_http=False)
    return None
