"""Build the discovery image: Debian's kernel + a busybox initramfs with the agent and inventory tools.

    python -m discovery_image.build [--cache DIR] [--kernel-version V] [--force] [--debian-kernel]

Everything comes from installed Debian packages (linux-image-amd64, busybox-static, ipmitool, dmidecode,
ethtool; linux-source for the kernel's LZ4 self-extractor, see kernel.py); nothing is downloaded. The output is keyed by a hash of every byte that goes into it, so a
second run is a cache hit and two machines with the same packages build identical files. Results live
outside git: <cache>/<hash>/{vmlinuz,initrd.img,bmc-tools.img,manifest.json} and <cache>/current.

`bmc-tools.img` holds ipmitool and the libraries only it needs (freeipmi, OpenSSL, gcrypt: half of
what the initramfs would otherwise carry). iPXE downloads the initramfs for every machine, and under
emulation (and on many real NIC ROMs) it is the slowest link of a netboot; only a machine that has an
in-band BMC (/dev/ipmi0) fetches the tools, from Linux, next to the initramfs.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from discovery_image import kernel as rewrap
from discovery_image.cpio import Entry, write_newc

HERE = Path(__file__).resolve().parent
AGENT_DIR = HERE / "agent"
# Bumped when the layout of the image changes in a way the file contents alone would not show.
FORMAT = "kiln-discovery-4"

TOOLS = ("/usr/sbin/dmidecode", "/usr/sbin/ethtool")
# fetched by the agent only on machines with /dev/ipmi0 (see the module docstring)
BMC_TOOLS = ("/usr/bin/ipmitool",)
BMC_TOOLS_NAME = "bmc-tools.img"

# Drivers for the virtual machines of the tests and the NICs/HBAs most servers carry. Loaded at boot by
# matching device modaliases (see agent/init), so an absent driver costs only its bytes.
MODULES = (
    # virtual machines
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    # server NICs
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "tg3",
    "bnxt_en",
    "r8169",
    # storage
    "ahci",
    "ata_piix",
    "sd_mod",
    "nvme",
    "megaraid_sas",
    "mpt3sas",
    # in-band BMC access (/dev/ipmi0)
    "ipmi_si",
    "ipmi_devintf",
)

DEFAULT_CACHE = Path("/var/lib/kiln/discovery")
# re-wrapped kernels (discovery_image/kernel.py) are shared by every image cache on the machine: each
# takes a minute or two to build and depends only on the installed kernel and linux-source packages
DEFAULT_KERNEL_CACHE = Path("/var/cache/kiln/kernels")


def default_cache_dir() -> Path:
    """$KILN_DISCOVERY_CACHE, else <$KILN_STATE_DIR>/discovery, else /var/lib/kiln/discovery."""
    if os.environ.get("KILN_DISCOVERY_CACHE"):
        return Path(os.environ["KILN_DISCOVERY_CACHE"])
    if os.environ.get("KILN_STATE_DIR"):
        return Path(os.environ["KILN_STATE_DIR"]) / "discovery"
    return DEFAULT_CACHE


def default_kernel_cache() -> Path:
    return Path(os.environ.get("KILN_KERNEL_CACHE") or DEFAULT_KERNEL_CACHE)


@dataclass(frozen=True)
class Image:
    directory: Path
    kernel: Path
    initrd: Path
    bmc_tools: Path
    digest: str
    kernel_version: str
    cached: bool
    kernel_note: str = ""  # how the kernel was wrapped ("lz4 ..." or why it is Debian's xz bzImage)

    @property
    def initrd_size(self) -> int:
        return self.initrd.stat().st_size


class BuildError(RuntimeError):
    """A missing package or file; the message says which."""


def find_kernel(version: str | None = None) -> tuple[str, Path]:
    """The requested or newest /boot/vmlinuz-* whose modules are installed."""
    candidates = []
    for path in Path("/boot").glob("vmlinuz-*"):
        ver = path.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / ver / "modules.dep").exists():
            candidates.append((ver, path))
    if version is not None:
        candidates = [c for c in candidates if c[0] == version]
    if not candidates:
        raise BuildError("no /boot/vmlinuz-* with modules: install linux-image-amd64")
    return max(candidates, key=lambda c: _version_key(c[0]))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries `binary` loads, from the dynamic loader itself (ldd)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


def _mod_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def select_modules(kver: str, wanted: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(module files, modules.dep lines, modules.alias lines) for `wanted` and their dependencies,
    in the kernel's own formats so busybox modprobe resolves aliases and dependencies at boot."""
    moddir = Path("/lib/modules") / kver
    dep_lines: dict[str, str] = {}
    deps_by_name: dict[str, list[str]] = {}
    path_by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        name = _mod_name(path)
        path_by_name[name] = path
        deps_by_name[name] = [_mod_name(p) for p in rest.split()]
        dep_lines[name] = line
    chosen: set[str] = set()
    for name in wanted:
        if name not in path_by_name:
            raise BuildError(f"kernel {kver} has no module {name}")
        chosen.add(name)
        chosen.update(deps_by_name[name])
    aliases = []
    for line in (moddir / "modules.alias").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and parts[2] in chosen:
            aliases.append(line)
    files = sorted(path_by_name[n] for n in chosen)
    return files, sorted(dep_lines[n] for n in chosen), sorted(aliases)


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def collect_entries(kver: str) -> list[Entry]:
    """Every member of the initramfs, with its content read from the installed packages."""
    entries: dict[str, Entry] = {}

    def add(entry: Entry) -> None:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, Entry.directory(parent))
        entries[entry.path] = entry

    for directory in ("dev", "proc", "sys", "run", "tmp", "etc", "root", "var/log"):
        add(Entry.directory(directory))
    add(Entry.char_device("dev/console", 5, 1))
    add(Entry.char_device("dev/null", 1, 3, 0o666))

    busybox = Path("/usr/bin/busybox")
    if not busybox.exists():
        raise BuildError("/usr/bin/busybox missing: install busybox-static")
    add(Entry.file("bin/busybox", _read(busybox), 0o755))
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet not in ("bin/busybox", "linuxrc"):
            add(Entry.symlink(applet, "/bin/busybox"))

    for entry in tool_entries(TOOLS):
        add(entry)

    files, dep_lines, aliases = select_modules(kver, MODULES)
    for rel in files:
        add(Entry.file(f"lib/modules/{kver}/{rel}", _read(Path("/lib/modules") / kver / rel)))
    add(Entry.file(f"lib/modules/{kver}/modules.dep", ("\n".join(dep_lines) + "\n").encode()))
    add(Entry.file(f"lib/modules/{kver}/modules.alias", ("\n".join(aliases) + "\n").encode()))

    for src in sorted(AGENT_DIR.iterdir()):
        if src.is_file() and not src.name.startswith("."):
            target = "init" if src.name == "init" else f"usr/lib/kiln/{src.name}"
            add(Entry.file(target, src.read_bytes(), 0o755))
    add(Entry.symlink("usr/share/udhcpc/default.script", "/usr/lib/kiln/udhcpc.script"))
    add(Entry.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    add(Entry.file("etc/group", b"root:x:0:\n"))
    add(Entry.file("etc/kiln-image", f"{FORMAT} kernel {kver}\n".encode()))
    return list(entries.values())


def tool_entries(tools: Iterable[str], *, without: Iterable[str] = ()) -> list[Entry]:
    """The binaries `tools` with the shared libraries they load, less the paths in `without`."""
    skip = set(without)
    libs: set[str] = set()
    entries = []
    for tool in tools:
        if not Path(tool).exists():
            raise BuildError(f"{tool} missing: install its Debian package (see scripts/bootstrap)")
        entries.append(Entry.file(tool.lstrip("/"), _read(tool), 0o755))
        libs.update(shared_libraries(tool))
    for lib in sorted(libs):
        if lib.lstrip("/") in skip:
            continue
        # the loader looks libraries up by these paths; the file behind a symlink is copied in place
        entries.append(Entry.file(lib.lstrip("/"), _read(os.path.realpath(lib)), 0o755))
    return entries


def bmc_tool_entries(initrd_entries: list[Entry]) -> list[Entry]:
    """The members of bmc-tools.img: never a file the initramfs has (the agent unpacks it over the running
    system, and rewriting the libc that every process has mapped would crash them)."""
    present = {entry.path for entry in initrd_entries}
    files = tool_entries(BMC_TOOLS, without=present)
    directories: dict[str, Entry] = {}
    for entry in files:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in present:
                directories.setdefault(parent, Entry.directory(parent))
    return [*directories.values(), *files]


def input_digest(kernel: bytes, entries: list[Entry]) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\0")
    h.update((HERE / "cpio.py").read_bytes())
    h.update(hashlib.sha256(kernel).digest())
    for entry in sorted(entries, key=lambda e: e.path):
        h.update(f"{entry.path}\0{entry.mode:o}\0{entry.rdev}\0".encode())
        h.update(hashlib.sha256(entry.data).digest())
    return h.hexdigest()[:20]


def newc(entries: list[Entry]) -> bytes:
    raw = io.BytesIO()
    write_newc(raw, entries)
    return raw.getvalue()


def compress(entries: list[Entry]) -> bytes:
    """gzip, for archives the agent unpacks with busybox (bmc-tools.img)."""
    # mtime=0 keeps the gzip header free of the build time
    return gzip.compress(newc(entries), compresslevel=6, mtime=0)


def compress_initrd(entries: list[Entry]) -> bytes:
    """LZ4 (legacy frame, the kernel's initramfs format), for the archive the kernel unpacks: under
    emulation gunzip of the initramfs took ~0.4 s of kernel start, LZ4 a fraction of that, for ~1.5x
    the bytes (DESIGN-NOTES.md). Falls back to gzip where the lz4 tool is missing."""
    if shutil.which("lz4") is None:
        return compress(entries)
    done = subprocess.run(["lz4", "-l", "-9", "-c"], input=newc(entries), capture_output=True, check=True)
    return done.stdout


def choose_kernel(
    vmlinuz: Path, kver: str, *, lz4: bool, kernel_cache: Path | None = None, image_cache: Path | None = None
) -> tuple[bytes, str]:
    """The kernel to ship: Debian's, re-wrapped with an LZ4 self-extractor when that can be built here
    (it unpacks in ~1 s instead of ~4 s under emulation), else Debian's xz bzImage; and a note saying which."""
    if not lz4:
        return vmlinuz.read_bytes(), "xz: Debian's bzImage as packaged (--debian-kernel)"
    cache = kernel_cache or default_kernel_cache()
    try:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            if kernel_cache is not None or image_cache is None:
                raise
            cache = image_cache / "kernels"  # not root: keep it beside the image
            cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine; the others wait and reuse it
            path = rewrap.lz4_kernel(vmlinuz, kver, cache)
        return path.read_bytes(), f"lz4: Debian's {kver} re-wrapped, payload verified identical"
    except (rewrap.KernelError, OSError, subprocess.CalledProcessError) as exc:
        print(f"discovery image: shipping Debian's xz kernel: {exc}", file=sys.stderr)
        return vmlinuz.read_bytes(), f"xz: Debian's bzImage as packaged; the LZ4 re-wrap failed: {exc}"


def build(
    cache: Path | None = None,
    *,
    kernel_version: str | None = None,
    force: bool = False,
    lz4_kernel: bool = True,
    kernel_cache: Path | None = None,
) -> Image:
    """Build (or find in the cache) the image; `<cache>/current` points at it afterwards."""
    cache = cache or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    kver, vmlinuz = find_kernel(kernel_version)
    kernel, kernel_note = choose_kernel(
        vmlinuz, kver, lz4=lz4_kernel, kernel_cache=kernel_cache, image_cache=cache
    )
    entries = collect_entries(kver)
    bmc_entries = bmc_tool_entries(entries)
    digest = input_digest(
        kernel, [*entries, *(dataclasses.replace(e, path=f"{BMC_TOOLS_NAME}/{e.path}") for e in bmc_entries)]
    )
    target = cache / digest
    with open(cache / ".lock", "w") as lock:
        # several test workers may build at once; one builds, the others find it done
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = (target / "manifest.json").exists() and not force
        if not cached:
            staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
            (staging / "vmlinuz").write_bytes(kernel)
            (staging / "initrd.img").write_bytes(compress_initrd(entries))
            (staging / BMC_TOOLS_NAME).write_bytes(compress(bmc_entries))
            manifest = {
                "format": FORMAT,
                "digest": digest,
                "kernel_version": kver,
                "kernel_sha256": hashlib.sha256(kernel).hexdigest(),
                "kernel_wrapper": kernel_note,
                "initrd_sha256": hashlib.sha256((staging / "initrd.img").read_bytes()).hexdigest(),
                "bmc_tools_sha256": hashlib.sha256((staging / BMC_TOOLS_NAME).read_bytes()).hexdigest(),
                "files": len(entries),
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        link = cache / "current"
        tmp_link = cache / f".current-{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(digest)
        tmp_link.replace(link)
    note = json.loads((target / "manifest.json").read_text()).get("kernel_wrapper", "")
    return Image(
        target, target / "vmlinuz", target / "initrd.img", target / BMC_TOOLS_NAME, digest, kver, cached, note
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m discovery_image.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"output directory (default {DEFAULT_CACHE})"
    )
    parser.add_argument(
        "--kernel-version", default=None, help="a version under /lib/modules (default newest)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has it")
    parser.add_argument(
        "--debian-kernel",
        action="store_true",
        help="ship Debian's xz bzImage as packaged instead of re-wrapping it with an LZ4 self-extractor",
    )
    parser.add_argument(
        "--kernel-cache", type=Path, default=None, help=f"re-wrapped kernels (default {DEFAULT_KERNEL_CACHE})"
    )
    args = parser.parse_args(argv)
    try:
        image = build(
            args.cache,
            kernel_version=args.kernel_version,
            force=args.force,
            lz4_kernel=not args.debian_kernel,
            kernel_cache=args.kernel_cache,
        )
    except BuildError as exc:
        print(f"discovery image: {exc}", file=sys.stderr)
        return 1
    mib = image.initrd_size / 2**20
    print(f"discovery image {image.digest} ({'cached' if image.cached else 'built'})")
    print(
        f"  kernel  {image.kernel}  {image.kernel.stat().st_size / 2**20:.1f} MiB  ({image.kernel_version}; {image.kernel_note})"
    )
    print(f"  initrd  {image.initrd}  {mib:.1f} MiB  (goal <= 64 MiB)")
    print(
        f"  bmc     {image.bmc_tools}  {image.bmc_tools.stat().st_size / 2**20:.1f} MiB  (fetched when /dev/ipmi0 exists)"
    )
    return 0 if mib <= 64 else 2


if __name__ == "__main__":
    raise SystemExit(main())
