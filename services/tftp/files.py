"""What the TFTP server may send: files under the root (read once, cached) and generated files.

Path rules: relative names only, no `..` component, and the resolved path (symlinks followed) must
stay inside the root; anything else is an access violation, never a lookup outside the root.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_LOADERS = ("undionly.kpxe", "ipxe.efi", "snponly.efi")


class Refused(Exception):
    """The request names something the server will not send; `code` is the TFTP error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def install_loaders(root: Path, source: Path = IPXE_DIR) -> list[str]:
    """Copy Debian's iPXE loaders into the root (copies, not links: a link out of the root is refused).

    Re-copied when the package's file changes (size or mtime), so an `apt upgrade` of ipxe reaches
    the next boot without an operator step.
    """
    root.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in IPXE_LOADERS:
        src = source / name
        if not src.exists():
            log.warning("iPXE loader %s is missing (is Debian's ipxe package installed?)", src)
            continue
        dst = root / name
        st = src.stat()  # follows ipxe.efi -> /boot/ipxe.efi
        if (
            dst.is_symlink()
            or not dst.exists()
            or dst.stat().st_size != st.st_size
            or (int(dst.stat().st_mtime) != int(st.st_mtime))
        ):
            tmp = root / f".{name}.tmp"
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        installed.append(name)
    return installed


def _clean_name(filename: str) -> str:
    # Windows PXE clients send backslashes as separators; treat them as '/' before the checks.
    name = filename.replace("\\", "/")
    if name.startswith("/"):
        raise Refused(2, "absolute paths are not served")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise Refused(1, "file not found")
    if ".." in parts:
        raise Refused(2, "path traversal refused")
    if any(ord(ch) < 32 for ch in name):
        raise Refused(2, "control characters in file name")
    return "/".join(parts)


class FileStore:
    """Resolves request names to bytes. Files are read once and kept until they change on disk."""

    def __init__(self, root: Path, generated: Mapping[str, Callable[[], bytes]] | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self.generated = dict(generated or {})
        # realpath -> (mtime_ns, size, inode, content)
        self._cache: dict[str, tuple[int, int, int, bytes]] = {}

    def read(self, filename: str) -> bytes:
        name = _clean_name(filename)
        maker = self.generated.get(name)
        if maker is not None:
            return maker()
        real = os.path.realpath(os.path.join(self.root, name))
        if os.path.commonpath([real, str(self.root)]) != str(self.root):
            raise Refused(2, "path leaves the TFTP root")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise Refused(1, "file not found") from None
        except OSError:
            raise Refused(2, "access violation") from None
        if not os.path.isfile(real):
            raise Refused(1, "file not found")
        cached = self._cache.get(real)
        if cached and cached[:3] == (st.st_mtime_ns, st.st_size, st.st_ino):
            return cached[3]
        try:
            with open(real, "rb") as fh:
                content = fh.read()
        except OSError:
            raise Refused(2, "access violation") from None
        self._cache[real] = (st.st_mtime_ns, st.st_size, st.st_ino, content)
        return content
