"""Debian's kernel, re-wrapped with an LZ4 self-extractor: the same kernel, unpacked 3-4x faster.

Debian's bzImage is its kernel (vmlinux plus a relocation table) xz-compressed behind a small
self-extractor. Under emulation, and on slow boot CPUs, that xz unpack is the longest single phase of a
discovery boot (~3.5 s of a ~10 s boot under QEMU TCG; DESIGN-NOTES.md). Here the compressed payload
is taken out of Debian's bzImage and wrapped again with the extractor built for LZ4, compiled from
Debian's `linux-source-X.Y` package of the very same version with Debian's own config (only
CONFIG_KERNEL_LZ4 differs). Nothing of the kernel proper is recompiled, and the build checks that the
new bzImage's payload decompresses to exactly Debian's bytes: the kernel that runs is Debian's, and
Debian's modules load into it as they would into the packaged one.

What gets compiled is arch/x86/boot (real-mode setup, the extractor, the EFI stub library): ~1 minute.
Kbuild is given the payload instead of a vmlinux it would have to link: the top-level `vmlinux` is the
stripped ELF from Debian's payload, and the two commands that need symbols or relocation sections
(`relocs`, `nm` for voffset.h) are replaced by the relocation table from the payload and offsets read
from the ELF's section headers. Needs: linux-source-X.Y (same version as linux-image), build-essential,
bc, bison, flex, libelf-dev, libssl-dev, lz4.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Bumped when the recipe below changes in a way its inputs would not show.
RECIPE = "kiln-lz4-kernel-1"
_HDR_MAGIC = b"HdrS"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_KBUILD_EXTRA = """\
PHONY += kiln-bzimage
kiln-bzimage: prepare
\t$(Q)$(MAKE) $(build)=arch/x86/boot arch/x86/boot/bzImage
"""


class KernelError(RuntimeError):
    """The re-wrap cannot be done here (a package is missing or the kernel is not what we expect)."""


@dataclass(frozen=True)
class Payload:
    """The compressed kernel inside a bzImage, and what it decompresses to."""

    compressed: bytes
    raw: bytes  # vmlinux (stripped ELF) followed by its relocation table
    elf_size: int
    version: str  # the setup header's version string, e.g. "6.1.0-56-amd64 (debian-kernel@...) #1 SMP ..."

    @property
    def elf(self) -> bytes:
        return self.raw[: self.elf_size]

    @property
    def relocs(self) -> bytes:
        return self.raw[self.elf_size :]


def _payload_bounds(image: bytes) -> tuple[int, int]:
    if len(image) < 0x260 or image[0x202:0x206] != _HDR_MAGIC:
        raise KernelError("not a bzImage (no HdrS setup header)")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(image):
        raise KernelError("bzImage payload runs past the end of the file")
    return start, length


def _version_string(image: bytes) -> str:
    pointer = struct.unpack_from("<H", image, 0x20E)[0] + 0x200
    end = image.index(b"\0", pointer)
    return image[pointer:end].decode("ascii", "replace")


def read_payload(image: bytes) -> Payload:
    """Debian's xz payload, decompressed and split into the ELF and the relocation table."""
    start, length = _payload_bounds(image)
    compressed = image[start : start + length]
    if not compressed.startswith(_XZ_MAGIC):
        raise KernelError("the bzImage payload is not xz-compressed")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    raw = decompressor.decompress(compressed)
    if struct.unpack("<I", compressed[-4:])[0] != len(raw):
        raise KernelError("the payload's size trailer does not match what it decompresses to")
    return Payload(compressed, raw, _elf_size(raw), _version_string(image))


def _sections(elf: bytes) -> dict[str, tuple[int, int, int, int]]:
    """name -> (type, address, file offset, size) from the ELF64 section headers."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise KernelError("the payload does not start with a 64-bit ELF")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]

    def name(offset: int) -> str:
        start = strtab + offset
        return elf[start : elf.index(b"\0", start)].decode()

    return {name(h[0]): (h[1], h[3], h[4], h[5]) for h in headers}


def _elf_size(raw: bytes) -> int:
    """Where the ELF ends and the relocation table appended to it begins."""
    shoff: int = struct.unpack_from("<Q", raw, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", raw, 0x3A)
    end: int = shoff + shentsize * shnum
    for sh_type, _addr, offset, size in _sections(raw).values():
        if sh_type != 8:  # SHT_NOBITS takes no file space
            end = max(end, offset + size)
    return end


def voffset_h(elf: bytes) -> str:
    """arch/x86/boot/voffset.h, which Kbuild makes with `nm vmlinux`; Debian's vmlinux is stripped, so
    the four symbols come from the sections that arch/x86/kernel/vmlinux.lds.S starts them with:
    _text = .text, __start_rodata = .rodata, __bss_start = .bss, _end = .brk's end rounded to a page."""
    sections = _sections(elf)
    try:
        text, rodata, bss, brk = (sections[n] for n in (".text", ".rodata", ".bss", ".brk"))
    except KeyError as exc:
        raise KernelError(f"the kernel ELF has no {exc.args[0]} section") from exc
    end = (brk[1] + brk[3] + 0xFFF) & ~0xFFF
    symbols = {"__bss_start": bss[1], "_end": end, "__start_rodata": rodata[1], "_text": text[1]}
    return "".join(f"#define VO_{name} _AC(0x{value:016x},UL)\n" for name, value in symbols.items())


def _build_identity(version: str) -> dict[str, str]:
    """KBUILD_BUILD_* that reproduce Debian's version string ("6.1.0-56-amd64 (debian-kernel@lists.debian.org)
    #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)") in the new setup header."""
    match = re.match(r"\S+ \(([^@\s]+)@([^)\s]+)\) #(\S+) (.*)$", version)
    if not match:
        return {"KBUILD_BUILD_TIMESTAMP": "1970-01-01"}  # still reproducible, just not Debian's string
    user, host, number, rest = match.groups()
    words = rest.split(" ")
    while words and words[0] in ("SMP", "PREEMPT", "PREEMPT_DYNAMIC", "PREEMPT_RT"):
        words.pop(0)  # the build adds these from the config
    return {
        "KBUILD_BUILD_USER": user,
        "KBUILD_BUILD_HOST": host,
        "KBUILD_BUILD_VERSION": number,
        "KBUILD_BUILD_TIMESTAMP": " ".join(words),
    }


def _package_version(package: str) -> str | None:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status} ${Version}", package], capture_output=True, text=True
    )
    if out.returncode != 0 or not out.stdout.startswith("install ok installed "):
        return None
    return out.stdout.rsplit(" ", 1)[1]


def source_tarball(kver: str) -> tuple[Path, str]:
    """Debian's linux-source tarball for `kver`, and its package version (which must be the kernel's)."""
    match = re.match(r"(\d+)\.(\d+)\.", kver)
    if not match:
        raise KernelError(f"cannot tell the kernel series of {kver}")
    series = f"{match.group(1)}.{match.group(2)}"
    package = f"linux-source-{series}"
    source_version = _package_version(package)
    image_version = _package_version(f"linux-image-{kver}")
    tarball = Path(f"/usr/src/{package}.tar.xz")
    if source_version is None or not tarball.exists():
        raise KernelError(f"{package} is not installed (apt-get install {package})")
    if image_version is not None and image_version != source_version:
        raise KernelError(
            f"{package} is {source_version} but linux-image-{kver} is {image_version}: upgrade them together"
        )
    for tool in ("make", "gcc", "bison", "flex", "bc", "lz4"):
        if shutil.which(tool) is None:
            raise KernelError(f"{tool} is missing (scripts/bootstrap installs the kernel build tools)")
    return tarball, source_version


def cache_key(vmlinuz: bytes, source_version: str) -> str:
    h = hashlib.sha256(f"{RECIPE}\0{source_version}\0".encode())
    h.update(hashlib.sha256(vmlinuz).digest())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:20]


def _run(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        out.write((f"[{time.monotonic():.1f}] $ " + shlex.join(argv) + "\n").encode())
        out.flush()
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise KernelError(f"{shlex.join(argv[:3])}... failed; last lines of {log}:\n" + "\n".join(tail))


def rewrap(vmlinuz: bytes, kver: str, tarball: Path, workdir: Path, jobs: int | None = None) -> bytes:
    """Build the LZ4 bzImage for Debian's `vmlinuz` in `workdir` (~1.6 GB while it runs); returns it."""
    payload = read_payload(vmlinuz)
    if not payload.version.startswith(kver + " "):
        raise KernelError(f"the bzImage says {payload.version!r}, not {kver}")
    config = Path(f"/boot/config-{kver}")
    if not config.exists():
        raise KernelError(f"{config} is missing (it comes with linux-image-{kver})")
    base = re.match(r"(\d+)\.(\d+)\.(\d+)(.*)$", kver)
    assert base is not None  # source_tarball() checked the form
    sublevel, localversion = base.group(3), base.group(4)

    log = workdir / "build.log"
    env = {**os.environ, **_build_identity(payload.version), "LC_ALL": "C"}
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(workdir)], check=True)
    (tree,) = [p for p in workdir.iterdir() if p.is_dir()]
    shutil.copyfile(config, tree / ".config")
    (tree / "vmlinux").write_bytes(payload.elf)
    (workdir / "vmlinux.relocs").write_bytes(payload.relocs)
    (workdir / "voffset.h").write_text(voffset_h(payload.elf))
    (workdir / "kiln.mk").write_text(_KBUILD_EXTRA)

    make = [
        "make",
        f"-j{jobs or os.cpu_count() or 1}",
        f"SUBLEVEL={sublevel}",
        f"LOCALVERSION={localversion}",
    ]
    _run(
        # Debian's config but for the compression; the rest only matters to building the kernel proper,
        # which is not rebuilt: the trusted-key files are not in the source package, and BTF would
        # build libbpf and resolve_btfids for nothing
        ["scripts/config", "--disable", "KERNEL_XZ", "--enable", "KERNEL_LZ4", "--disable", "DEBUG_INFO_BTF",
         "--set-str", "SYSTEM_TRUSTED_KEYS", "", "--set-str", "SYSTEM_REVOCATION_KEYS", ""],
        tree, env, log,
    )  # fmt: skip
    _run([*make, "olddefconfig"], tree, env, log)
    _run([*make, "prepare"], tree, env, log)
    release = (tree / "include/config/kernel.release").read_text().strip()
    if release != kver:
        raise KernelError(f"the source tree calls itself {release}, not {kver}")
    # generated sources the boot code includes, and the EFI stub library it links; one target per make
    for target in (
        "arch/x86/kernel/cpu/capflags.o",
        "init/version-timestamp.o",
        "drivers/firmware/efi/libstub/lib.a",
    ):
        _run([*make, target], tree, env, log)
    # the instruction tables SEV's decoder includes; arch/x86/lib's own rule is not reachable as a
    # single target (make arch/x86/lib/inat.o compiles inat.o twice at once under -j), so run its command
    with (tree / "arch/x86/lib/inat-tables.c").open("w") as tables:
        subprocess.run(
            ["awk", "-f", "arch/x86/tools/gen-insn-attr-x86.awk", "arch/x86/lib/x86-opcode-map.txt"],
            cwd=tree, env=env, stdout=tables, check=True,
        )  # fmt: skip
    _run(
        [*make, "-f", "Makefile", "-f", str(workdir / "kiln.mk"),
         f"cmd_relocs=cp {workdir / 'vmlinux.relocs'} $@", f"cmd_voffset=cp {workdir / 'voffset.h'} $@",
         "kiln-bzimage"],
        tree, env, log,
    )  # fmt: skip
    image = (tree / "arch/x86/boot/bzImage").read_bytes()
    verify(image, payload)
    return image


def verify(image: bytes, debian: Payload) -> None:
    """The new bzImage carries an LZ4 payload that decompresses to Debian's bytes exactly."""
    if _version_string(image) != debian.version:
        raise KernelError(f"the new bzImage says {_version_string(image)!r}, Debian's {debian.version!r}")
    start, length = _payload_bounds(image)
    compressed = image[start : start + length]
    if not compressed.startswith(_LZ4_LEGACY_MAGIC):
        raise KernelError("the new bzImage's payload is not LZ4")
    if struct.unpack("<I", compressed[-4:])[0] != len(debian.raw):
        raise KernelError("the new payload's size trailer differs from Debian's kernel size")
    raw = subprocess.run(["lz4", "-d", "-c"], input=compressed[:-4], capture_output=True, check=True).stdout
    if hashlib.sha256(raw).digest() != hashlib.sha256(debian.raw).digest():
        raise KernelError("the new payload is not byte-identical to Debian's kernel")


def lz4_kernel(vmlinuz: Path, kver: str, cache: Path) -> Path:
    """The LZ4 re-wrap of `vmlinuz`, from `cache` or built into it (one build at a time per cache)."""
    tarball, source_version = source_tarball(kver)
    data = vmlinuz.read_bytes()
    target = cache / cache_key(data, source_version) / "vmlinuz"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as tmp:
        image = rewrap(data, kver, tarball, Path(tmp))
        staged = Path(tmp) / "vmlinuz"
        staged.write_bytes(image)
        staged.replace(target)
    return target
