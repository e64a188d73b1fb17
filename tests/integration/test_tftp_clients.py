"""Kiln's TFTP server against the real clients: curl, busybox tftp and tftp-hpa."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appliance.config import Settings
from services.tftp import server as tftp_server
from tests.integration.tftp_fixtures import RunningTftp, running_tftp, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tftp(tmp_path: Path) -> Iterator[RunningTftp]:
    yield from running_tftp(tmp_path)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/bootstrap --test installs it)"
    return path


def _curl(url: str, out: Path, blksize: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [_tool("curl"), "-sS", "--max-time", "30", "--tftp-blksize", str(blksize), "-o", str(out), url],
        capture_output=True,
        timeout=40,
    )


@pytest.mark.parametrize("blksize", [1468, 512])
@pytest.mark.parametrize("name", ["undionly.kpxe", "ipxe.efi", "snponly.efi", "big.bin", "exact.bin"])
def test_curl_downloads_identical_bytes(tftp: RunningTftp, tmp_path: Path, blksize: int, name: str) -> None:
    out = tmp_path / "out"
    result = _curl(tftp.url(name), out, blksize)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tftp.files[name]
    tftp.wait_idle()


def test_curl_follows_block_number_rollover_past_65535_blocks(tftp: RunningTftp, tmp_path: Path) -> None:
    content = bytes(range(256)) * 2100  # 537,600 bytes at blksize 8 = 67,201 blocks
    (tftp.root / "roll.bin").write_bytes(content)
    out = tmp_path / "out"
    result = _curl(tftp.url("roll.bin"), out, 8)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == content


def test_curl_reports_missing_file(tftp: RunningTftp, tmp_path: Path) -> None:
    result = _curl(tftp.url("no-such-file"), tmp_path / "out", 512)
    assert result.returncode == 68, result.stderr  # CURLE_TFTP_NOTFOUND: it got TFTP error code 1


def test_generated_file_is_served(tftp: RunningTftp, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _curl(tftp.url("gen/hello.ipxe"), out, 512).returncode == 0
    assert out.read_bytes() == b"#!ipxe\necho hi\n"


@pytest.mark.parametrize("blksize", [1468, 512])
def test_busybox_tftp_downloads_with_blksize(tftp: RunningTftp, tmp_path: Path, blksize: int) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            _tool("busybox"),
            "tftp",
            "-b",
            str(blksize),
            "-g",
            "-r",
            "big.bin",
            "-l",
            str(out),
            "127.0.0.1",
            str(tftp.port),
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tftp.files["big.bin"]


def test_busybox_tftp_fetches_nested_path(tftp: RunningTftp, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [_tool("busybox"), "tftp", "-g", "-r", "sub/nested.txt", "-l", str(out), "127.0.0.1", str(tftp.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"nested file\n"


# curl 7.88 fails any zero-length TFTP file (getpeername errno 107, against dnsmasq too): tftp-hpa checks it
@pytest.mark.parametrize("name", ["undionly.kpxe", "big.bin", "empty.bin"])
def test_tftp_hpa_client_downloads_in_binary_mode(tftp: RunningTftp, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [_tool("tftp"), "-m", "binary", "127.0.0.1", str(tftp.port), "-c", "get", name, str(out)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == tftp.files[name]


def test_thirty_concurrent_curl_transfers_all_complete(tftp: RunningTftp, tmp_path: Path) -> None:
    def fetch(i: int) -> bytes:
        out = tmp_path / f"out{i}"
        result = _curl(tftp.url("big.bin" if i % 2 else "ipxe.efi"), out, 1468 if i % 3 else 512)
        assert result.returncode == 0, result.stderr
        return out.read_bytes()

    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(fetch, range(30)))
    for i, content in enumerate(results):
        assert content == tftp.files["big.bin" if i % 2 else "ipxe.efi"]
    tftp.wait_idle()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_entry_point_installs_ipxe_loaders_and_chain_script(settings: Settings, tmp_path: Path) -> None:
    port = _free_udp_port()
    settings = settings.model_copy(
        update={"tftp_bind": "127.0.0.1", "tftp_port": port, "advertise_address": "10.1.2.3"}
    )
    stop = threading.Event()
    thread = threading.Thread(target=tftp_server.serve, args=(settings, None, stop), daemon=True)
    thread.start()
    try:
        out = tmp_path / "out"
        url = f"tftp://127.0.0.1:{port}/"
        deadline = time.monotonic() + 20  # the thread binds asynchronously: poll until it answers
        while (result := _curl(url + "undionly.kpxe", out, 1468)).returncode != 0:
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.05)
        assert out.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        assert _curl(url + "ipxe.efi", out, 1468).returncode == 0
        assert out.read_bytes() == Path("/usr/lib/ipxe/ipxe.efi").read_bytes()
        assert _curl(url + "kiln.ipxe", out, 512).returncode == 0
        assert out.read_bytes() == b"#!ipxe\nchain http://10.1.2.3:8080/boot/ipxe?mac=${net0/mac} || shell\n"
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_ipv6_bind_serves_curl(tftp: RunningTftp, tmp_path: Path) -> None:
    server, stop, thread = start_server(tftp.root, "::1")
    try:
        out = tmp_path / "out"
        result = _curl(f"tftp://[::1]:{server.port}/undionly.kpxe", out, 1468)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == tftp.files["undionly.kpxe"]
    finally:
        stop.set()
        thread.join(5)
