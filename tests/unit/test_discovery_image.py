"""The discovery image build: reproducible, cached by input hash, small, and complete."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
from pathlib import Path

import pytest

from discovery_image import build
from discovery_image.cpio import Entry, write_newc


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> build.Image:
    return build.build(tmp_path_factory.mktemp("discovery-cache"))


def _unpacked(archive: Path) -> bytes:
    data = archive.read_bytes()
    if data[:4] == b"\x02\x21\x4c\x18":  # LZ4 legacy frame (the initramfs), decoded by the lz4 tool
        return subprocess.run(["lz4", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    return gzip.decompress(data)


def _members(initrd: Path) -> dict[str, tuple[int, bytes]]:
    """name → (mode, data) of a newc archive, parsed independently of our writer."""
    raw = _unpacked(initrd)
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        header = raw[pos : pos + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = raw[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = raw[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)


def test_image_has_kernel_agent_tools_and_drivers(image: build.Image) -> None:
    members = _members(image.initrd)
    for path in (
        "init",
        "bin/busybox",
        "bin/sh",
        "usr/lib/kiln/kiln-agent",
        "usr/lib/kiln/inventory",
        "usr/sbin/dmidecode",
        "usr/sbin/ethtool",
        "lib64/ld-linux-x86-64.so.2",
        "dev/console",
        f"lib/modules/{image.kernel_version}/modules.dep",
        f"lib/modules/{image.kernel_version}/modules.alias",
    ):
        assert path in members, path
    modules = {Path(p).name for p in members if p.endswith(".ko")}
    for name in ("virtio_net.ko", "e1000.ko", "virtio_blk.ko", "ahci.ko", "ipmi_si.ko", "ipmi_devintf.ko"):
        assert name in modules
    moddir = f"lib/modules/{image.kernel_version}"
    deps = dict(line.split(":", 1) for line in members[f"{moddir}/modules.dep"][1].decode().splitlines())
    # every dependency busybox modprobe will load is in the image
    for rel, needs in deps.items():
        for dep in [rel, *needs.split()]:
            assert f"{moddir}/{dep}" in members, dep
    assert "virtio_ring.ko" in deps["kernel/drivers/net/virtio_net.ko"]
    aliases = members[f"{moddir}/modules.alias"][1].decode()
    assert "alias virtio:d00000001v* virtio_net" in aliases
    assert "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000" in aliases
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage


def test_ipmitool_is_left_to_bmc_tools_which_never_overwrites_an_initrd_file(image: build.Image) -> None:
    initrd, tools = _members(image.initrd), _members(image.bmc_tools)
    assert "usr/bin/ipmitool" not in initrd
    assert "usr/bin/ipmitool" in tools
    assert any("libfreeipmi" in name for name in tools)
    # the agent unpacks it over the running system: rewriting the mapped libc would crash every process
    assert not [name for name, (mode, _data) in tools.items() if name in initrd and not mode & 0o40000]
    # what iPXE downloads for every machine stays small (it was 10.2 MiB with ipmitool inside, gzip)
    assert image.initrd_size <= 7 * 2**20, image.initrd_size


def test_every_copied_binary_finds_its_libraries_inside_the_image(image: build.Image, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for archive in (image.initrd, image.bmc_tools):
        # bmc-tools.img unpacked over the initramfs, as the agent does on a machine with a BMC
        subprocess.run(["cpio", "-id", "--quiet"], input=_unpacked(archive), cwd=root, check=True)
    for tool, flag in (
        ("/usr/bin/ipmitool", "-V"),
        ("/usr/sbin/ethtool", "--version"),
        ("/usr/sbin/dmidecode", "--version"),
    ):
        done = subprocess.run(["chroot", str(root), tool, flag], capture_output=True, text=True, check=False)
        assert done.returncode == 0, (tool, done.stderr)


def test_initrd_is_within_64_mib(image: build.Image) -> None:
    assert image.initrd_size <= 64 * 2**20


def test_second_build_is_a_cache_hit_and_current_points_at_it(image: build.Image) -> None:
    again = build.build(image.directory.parent)
    assert again.cached
    assert again.digest == image.digest
    assert (image.directory.parent / "current").resolve() == image.directory.resolve()
    manifest = json.loads((image.directory / "manifest.json").read_text())
    assert manifest["digest"] == image.digest


def test_two_builds_in_different_places_are_byte_identical(image: build.Image, tmp_path: Path) -> None:
    other = build.build(tmp_path / "elsewhere", force=True)
    assert not other.cached
    assert other.initrd.read_bytes() == image.initrd.read_bytes()
    assert other.kernel.read_bytes() == image.kernel.read_bytes()


def test_cpio_writer_output_is_read_back_by_gnu_cpio(tmp_path: Path) -> None:
    raw = io.BytesIO()
    write_newc(raw, [Entry.file("b/x.txt", b"hello"), Entry.directory("b"), Entry.symlink("a", "b/x.txt")])
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=raw.getvalue(), capture_output=True, check=True
    )
    lines = listing.stdout.decode().splitlines()
    # sorted by path, each with mtime 0 (1970) whatever the build time
    assert [line.split()[8:] for line in lines] == [["a", "->", "b/x.txt"], ["b"], ["b/x.txt"]]
    assert all("1970" in line for line in lines)


def test_build_command_prints_the_initrd_size(tmp_path: Path) -> None:
    done = subprocess.run(
        [".venv/bin/python", "-m", "discovery_image.build", "--cache", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert "MiB" in done.stdout and "initrd" in done.stdout
