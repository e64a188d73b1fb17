"""Real machines (QEMU, TCG) netboot into Kiln: DHCP → iPXE → discovery image → registered node.

One Kiln (`kiln serve --only web,dhcp,tftp,ra`) runs in a namespace for the module; every VM's only NIC
is a tap on its bridge. The discovery image is built once per input hash into a shared cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance import agent_tasks
from appliance.models import AgentTask, BootFetch, Node
from discovery_image import build
from tests.e2e.netboot_lab import VM, NetbootLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.xdist_group("e2e")]

IMAGE_CACHE = Path("/var/tmp/kiln-e2e-discovery")


@pytest.fixture(scope="session")
def discovery_image() -> build.Image:
    return build.build(IMAGE_CACHE)


@pytest.fixture(scope="module")
def lab(discovery_image: build.Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetbootLab]:
    running = NetbootLab.create(tmp_path_factory.mktemp("netboot"), discovery_image.directory)
    try:
        yield running
    finally:
        running.close()


def _assert_hardware_matches(node: Node, vm: VM) -> None:
    inventory = node.inventory
    assert [m.mac for m in node.macs] == [vm.mac]
    assert inventory["boot_mac"] == vm.mac
    assert inventory["memory"]["total_mb"] == vm.memory_mib
    disks = {d["serial"]: d["size_bytes"] for d in inventory["disks"]}
    assert disks == {serial: size for _path, size, serial in vm.disks}
    nic = next(n for n in inventory["nics"] if n["mac"] == vm.mac)
    assert (
        nic["driver"]
        == {"bios-virtio": "virtio_net", "bios-e1000": "e1000", "uefi-pxe": "virtio_net"}[vm.kind]
    )
    assert node.state == "discovered" and node.bootenv == "local"


def test_bios_vms_with_virtio_and_e1000_nics_are_discovered_with_their_hardware(lab: NetbootLab) -> None:
    virtio = lab.start_vm("bios-virtio", memory_mib=512, disks=(1 << 30, 3 << 29), bmc=True)
    e1000 = lab.start_vm("bios-e1000", memory_mib=640, disks=(2 << 30,))
    nodes = {}
    for vm in (virtio, e1000):
        nodes[vm.kind] = lab.wait_for_node(vm, timeout=150)
        _assert_hardware_matches(nodes[vm.kind], vm)
        lab.stop_vm(vm)
    # the in-band BMC (QEMU's KCS BMC simulator) was found through /dev/ipmi0; the e1000 machine has none
    assert nodes["bios-virtio"].inventory["bmc"]["present"] is True
    assert nodes["bios-e1000"].inventory["bmc"]["present"] is False
    # iPXE's IPv6 router solicitations were answered (no ~13 s autoconfiguration timeout per boot)
    assert lab.metric("kiln_ra_advertisements_total") >= 1


def test_uefi_firmware_pxe_loads_ipxe_over_kiln_tftp_and_is_discovered(lab: NetbootLab) -> None:
    vm = lab.start_vm("uefi-pxe", memory_mib=512)
    try:
        # OVMF's own PXE client must take Kiln's offer and fetch the loader over TFTP; should it refuse
        # the offer it would fall back to UEFI HTTP boot minutes later, so the verdict is taken here, early
        deadline = time.monotonic() + 120
        while True:
            console = vm.console_text()
            if 'starting Boot0001 "UEFI PXEv4' in console:
                break
            assert 'failed to load Boot0001 "UEFI PXEv4' not in console, (
                "OVMF's PXE refused Kiln's DHCP answer:\n" + console[-1500:]
            )
            assert time.monotonic() < deadline, f"OVMF never started PXE:\n{console[-1500:]}"
            time.sleep(0.2)
        node = lab.wait_for_node(vm, timeout=180)
        _assert_hardware_matches(node, vm)
        assert "iPXE initialising devices" in vm.console_text()
    finally:
        # a VM left running after a failure would register later, inside the next test's count
        lab.stop_vm(vm)


def test_four_vms_booted_at_once_get_four_addresses_and_become_four_nodes(lab: NetbootLab) -> None:
    vms = [lab.start_vm("bios-virtio", memory_mib=384) for _ in range(4)]
    nodes = [lab.wait_for_node(vm, timeout=240) for vm in vms]
    assert len({n.id for n in nodes}) == 4
    assert len({n.discovery["admin_address"] for n in nodes}) == 4
    # no VM was registered twice: exactly four nodes carry these four MACs
    macs = {vm.mac for vm in vms}
    assert len([n for n in lab.nodes() if macs & {m.mac for m in n.macs}]) == 4
    for vm, node in zip(vms, nodes, strict=True):
        _assert_hardware_matches(node, vm)
        lab.stop_vm(vm)


def test_discovered_node_that_reboots_boots_its_local_disk_and_is_not_registered_again(
    lab: NetbootLab,
) -> None:
    vm = lab.start_vm("bios-virtio", memory_mib=512)
    node = lab.wait_for_node(vm, timeout=150)
    nodes_before = len(lab.nodes())
    with lab.db.session() as s:
        agent_tasks.queue(s, node.id, "reboot", actor="e2e")

    def fetched_local() -> bool:
        with lab.db.read_session() as s:
            count = s.scalar(
                select(func.count()).where(BootFetch.mac == vm.mac, BootFetch.step == "ipxe:local")
            )
            return bool(count)

    deadline = time.monotonic() + 120
    while not fetched_local():
        assert time.monotonic() < deadline, f"no local boot after the reboot:\n{vm.console_text()[-2000:]}"
        time.sleep(0.2)
    # the firmware asked Kiln again after the reboot (its iPXE ROM) and was handed the local bootenv
    assert len(lab.nodes()) == nodes_before
    with lab.db.read_session() as s:
        again = s.get(Node, node.id)
        assert again is not None and again.state == "discovered" and again.bootenv == "local"
        tasks = [(t.kind, t.state) for t in s.scalars(select(AgentTask).where(AgentTask.node_id == node.id))]
    assert tasks == [("reboot", "ok")]
    lab.stop_vm(vm)
