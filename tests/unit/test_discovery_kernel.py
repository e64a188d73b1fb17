"""Debian's kernel re-wrapped with an LZ4 self-extractor: built from the installed packages, byte-identical
payload, Debian's version string; a payload that differs by one byte is refused."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from discovery_image import build
from discovery_image import kernel as rewrap


@pytest.fixture(scope="module")
def debian() -> tuple[str, bytes, rewrap.Payload]:
    kver, vmlinuz = build.find_kernel()
    data = vmlinuz.read_bytes()
    return kver, data, rewrap.read_payload(data)


@pytest.fixture(scope="module")
def wrapped(debian: tuple[str, bytes, rewrap.Payload]) -> bytes:
    kver, _data, _payload = debian
    kernel, note = build.choose_kernel(Path(f"/boot/vmlinuz-{kver}"), kver, lz4=True)
    # scripts/bootstrap installs linux-source and the build tools: the fallback must not hide a breakage
    assert note.startswith("lz4:"), note
    return kernel


def test_debian_payload_splits_into_the_kernel_elf_and_its_relocations(
    debian: tuple[str, bytes, rewrap.Payload],
) -> None:
    kver, _data, payload = debian
    assert payload.version.startswith(f"{kver} (")
    assert payload.elf[:4] == b"\x7fELF"
    assert payload.elf_size + len(payload.relocs) == len(payload.raw)
    # arch/x86/tools/relocs output: 32-bit words, lists separated by zero words that the extractor
    # reads from the end backwards, so the table starts with one
    words = struct.unpack(f"<{len(payload.relocs) // 4}I", payload.relocs)
    assert len(payload.relocs) % 4 == 0 and words[0] == 0 and words.count(0) >= 2


def test_voffset_symbols_are_in_link_order_and_inside_the_loaded_image(
    debian: tuple[str, bytes, rewrap.Payload],
) -> None:
    _kver, _data, payload = debian
    symbols = {}
    for line in rewrap.voffset_h(payload.elf).splitlines():
        _define, name, value = line.split()
        symbols[name] = int(value.removeprefix("_AC(").split(",")[0], 16)
    assert symbols["VO__text"] < symbols["VO___start_rodata"] < symbols["VO___bss_start"] < symbols["VO__end"]
    assert symbols["VO__end"] % 4096 == 0
    # _end is within the last PT_LOAD segment (which also holds .init.scratch after it)
    phoff = struct.unpack_from("<Q", payload.elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", payload.elf, 0x36)
    ends = []
    for i in range(phnum):
        p_type, _flags, _off, vaddr, _paddr, _filesz, memsz = struct.unpack_from(
            "<IIQQQQQ", payload.elf, phoff + i * phentsize
        )
        if p_type == 1 and vaddr:
            ends.append(vaddr + memsz)
    assert symbols["VO__end"] <= max(ends)


def test_rewrapped_kernel_is_lz4_with_debians_payload_and_version_string(
    debian: tuple[str, bytes, rewrap.Payload], wrapped: bytes
) -> None:
    _kver, data, payload = debian
    rewrap.verify(wrapped, payload)  # raises unless the LZ4 payload decompresses to Debian's bytes
    assert wrapped != data
    # the xz reader refuses the new one
    with pytest.raises(rewrap.KernelError, match="not xz"):
        rewrap.read_payload(wrapped)


def test_a_payload_differing_by_one_byte_is_refused(
    debian: tuple[str, bytes, rewrap.Payload], wrapped: bytes
) -> None:
    _kver, _data, payload = debian
    tampered = rewrap.Payload(
        payload.compressed, payload.raw[:-5] + b"\x01" + payload.raw[-4:], payload.elf_size, payload.version
    )
    with pytest.raises(rewrap.KernelError, match="not byte-identical"):
        rewrap.verify(wrapped, tampered)
    renamed = rewrap.Payload(payload.compressed, payload.raw, payload.elf_size, payload.version + "x")
    with pytest.raises(rewrap.KernelError, match="says"):
        rewrap.verify(wrapped, renamed)


def test_build_identity_reproduces_debians_version_string_fields() -> None:
    identity = rewrap._build_identity(
        "6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)"
    )
    assert identity == {
        "KBUILD_BUILD_USER": "debian-kernel",
        "KBUILD_BUILD_HOST": "lists.debian.org",
        "KBUILD_BUILD_VERSION": "1",
        "KBUILD_BUILD_TIMESTAMP": "Debian 6.1.192-2 (2026-11-16)",
    }
    assert rewrap._build_identity("something else") == {"KBUILD_BUILD_TIMESTAMP": "1970-01-01"}


def test_not_a_bzimage_is_refused() -> None:
    with pytest.raises(rewrap.KernelError, match="not a bzImage"):
        rewrap.read_payload(b"\0" * 4096)


def test_rewrap_is_reproducible_in_another_directory(
    debian: tuple[str, bytes, rewrap.Payload], wrapped: bytes, tmp_path: Path
) -> None:
    # a second build from scratch (~1 min) in another place gives the cached kernel byte for byte
    kver, data, _payload = debian
    tarball, _version = rewrap.source_tarball(kver)
    try:
        assert rewrap.rewrap(data, kver, tarball, tmp_path) == wrapped
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the 1.6 GB source tree
