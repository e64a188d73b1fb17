"""What the TFTP file store will and will not hand out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.tftp.files import IPXE_LOADERS, FileStore, Refused, install_loaders


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "a.bin").write_bytes(b"A")
    (r / "sub" / "b.bin").write_bytes(b"B")
    return r


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../x", 2),
        ("sub/../../x", 2),
        ("/etc/passwd", 2),
        ("\\etc\\passwd", 2),
        ("sub\\..\\..\\x", 2),
        ("a\x01b", 2),
        ("missing", 1),
        ("sub", 1),
        ("./", 1),
    ],
)
def test_bad_names_are_refused_with_their_tftp_code(root: Path, name: str, code: int) -> None:
    with pytest.raises(Refused) as info:
        FileStore(root).read(name)
    assert info.value.code == code


def test_windows_separators_and_dot_components_resolve_inside_the_root(root: Path) -> None:
    store = FileStore(root)
    assert store.read("sub\\b.bin") == b"B"
    assert store.read("./sub//b.bin") == b"B"


def test_symlink_leaving_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", root / "escape")
    with pytest.raises(Refused) as info:
        FileStore(root).read("escape")
    assert info.value.code == 2


def test_file_is_read_once_and_reread_after_it_changes(root: Path) -> None:
    store = FileStore(root)
    first = store.read("a.bin")
    assert store.read("a.bin") is first
    (root / "a.bin").write_bytes(b"changed")
    assert store.read("a.bin") == b"changed"


def test_generated_files_win_over_disk(root: Path) -> None:
    store = FileStore(root, {"a.bin": lambda: b"generated"})
    assert store.read("a.bin") == b"generated"


def test_install_loaders_copies_debian_ipxe_binaries_as_regular_files(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    assert install_loaders(root) == list(IPXE_LOADERS)
    for name in IPXE_LOADERS:
        assert not (root / name).is_symlink()
        assert (root / name).read_bytes() == Path("/usr/lib/ipxe", name).read_bytes()
    # a second start leaves unchanged files alone
    before = (root / "ipxe.efi").stat().st_ino
    install_loaders(root)
    assert (root / "ipxe.efi").stat().st_ino == before
