"""RFC behaviour seen on the wire: option negotiation, RFC 7440 windows, retransmission, refusals.

curl, busybox and tftp-hpa cannot do windowsize or drop an ACK on purpose, so these tests use the
packet-level client from tftp_fixtures against the real server on loopback.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.tftp import packet
from services.tftp.server import TftpServer
from tests.integration.tftp_fixtures import RawClient, RunningTftp, running_tftp, start_server
from tests.netns import Namespace

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tftp(tmp_path: Path) -> Iterator[RunningTftp]:
    yield from running_tftp(tmp_path)


def _blocks(content: bytes, blksize: int) -> list[bytes]:
    return [content[i : i + blksize] for i in range(0, len(content) + 1, blksize)]


def _error(client: RawClient, raw: bytes) -> packet.Error:
    client.request(raw)
    answer = client.recv()
    assert isinstance(answer, packet.Error), answer
    return answer


def _wait_for(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        time.sleep(0.005)


def _malformed() -> float:
    return REGISTRY.get_sample_value("kiln_tftp_malformed_packets_total") or 0.0


@pytest.fixture
def client(tftp: RunningTftp) -> RawClient:
    c = RawClient(tftp.port)
    yield c  # type: ignore[misc]
    c.close()


def test_options_are_acknowledged_with_tsize_of_the_file(tftp: RunningTftp, client: RawClient) -> None:
    client.request(
        packet.build_rrq(
            "ipxe.efi", options={"tsize": "0", "blksize": "1468", "windowsize": "4", "x-unknown": "1"}
        )
    )
    oack = client.recv()
    assert oack == packet.OptionAck(
        {"tsize": str(len(tftp.files["ipxe.efi"])), "blksize": "1468", "windowsize": "4"}
    )


def test_tsize_probe_then_error_closes_the_transfer(tftp: RunningTftp, client: RawClient) -> None:
    # OVMF asks tsize=0 first and aborts with an ERROR once it has the size
    client.request(packet.build_rrq("snponly.efi", options={"tsize": "0"}))
    assert client.recv() == packet.OptionAck({"tsize": str(len(tftp.files["snponly.efi"]))})
    client.send_to_transfer(packet.build_error(8, "size probe done"))
    tftp.wait_idle()


def test_windowsize_4_transfer_delivers_the_file(tftp: RunningTftp, client: RawClient) -> None:
    content = tftp.files["big.bin"]
    expected = _blocks(content, 1468)
    client.request(packet.build_rrq("big.bin", options={"blksize": "1468", "windowsize": "4"}))
    assert isinstance(client.recv(), packet.OptionAck)
    client.ack(0)
    received: list[bytes] = []
    while True:
        window = [client.recv() for _ in range(min(4, len(expected) - len(received)))]
        for offset, data in enumerate(window):
            assert isinstance(data, packet.Data)
            assert data.block == (len(received) + offset + 1) & 0xFFFF
        received += [d.payload for d in window]  # type: ignore[union-attr]
        client.ack(len(received))
        if len(received[-1]) < 1468:
            break
    assert b"".join(received) == content
    tftp.wait_idle()


def test_windowed_transfer_rolls_block_numbers_over_past_65535(tftp: RunningTftp, client: RawClient) -> None:
    content = bytes(range(256)) * 2100  # 537,600 bytes at blksize 8 = 67,201 blocks
    (tftp.root / "roll.bin").write_bytes(content)
    client.request(packet.build_rrq("roll.bin", options={"blksize": "8", "windowsize": "64"}))
    assert client.recv() == packet.OptionAck({"blksize": "8", "windowsize": "64"})
    client.ack(0)
    received = bytearray()
    count = 0
    while True:
        data = client.recv()
        assert isinstance(data, packet.Data)
        count += 1
        assert data.block == count & 0xFFFF
        received += data.payload
        if len(data.payload) < 8:
            client.ack(data.block)
            break
        if count % 64 == 0:
            client.ack(data.block)
    assert count == 67_201
    assert bytes(received) == content
    tftp.wait_idle()


def test_window_larger_than_the_socket_buffers_still_completes(tftp: RunningTftp, client: RawClient) -> None:
    # 64 blocks of 65,000 bytes (4 MB) overflow the client's receive buffer, so the kernel drops part
    # of each window; the client's RFC 7440 "ACK the last block in order" must recover the rest
    content = tftp.files["big.bin"][:1_500_000]
    (tftp.root / "window.bin").write_bytes(content)
    client.request(packet.build_rrq("window.bin", options={"blksize": "65000", "windowsize": "64"}))
    assert client.recv() == packet.OptionAck({"blksize": "65000", "windowsize": "64"})
    client.ack(0)
    received = bytearray()
    block = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = client.recv(timeout=0.2)
        except TimeoutError:
            client.ack(block)  # what arrived in order; the server starts the next window after it
            continue
        assert isinstance(data, packet.Data)
        if data.block != block + 1:
            continue  # a gap or a resent duplicate: wait for the timeout's ACK to resynchronise
        block += 1
        received += data.payload
        if len(data.payload) < 65000:
            client.ack(block)
            break
        if block % 64 == 0:
            client.ack(block)
    assert bytes(received) == content
    tftp.wait_idle()


def test_lost_ack_makes_the_server_resend_the_whole_window(tftp: RunningTftp, client: RawClient) -> None:
    expected = _blocks(tftp.files["big.bin"], 512)
    client.request(packet.build_rrq("big.bin", options={"windowsize": "4"}))
    assert isinstance(client.recv(), packet.OptionAck)
    client.ack(0)
    first = [client.recv() for _ in range(4)]
    assert [d.block for d in first] == [1, 2, 3, 4]  # type: ignore[union-attr]
    # The ACK for block 4 is "lost": after its timeout the server sends blocks 1-4 again.
    started = time.monotonic()
    again = [client.recv(timeout=2) for _ in range(4)]
    assert time.monotonic() - started >= 0.2  # it waited for its 0.3 s timer, not a duplicate ACK
    assert again == first
    client.ack(4)
    nxt = client.recv()
    assert nxt == packet.Data(5, expected[4])


def test_ack_inside_the_window_restarts_the_window_after_it(tftp: RunningTftp, client: RawClient) -> None:
    expected = _blocks(tftp.files["big.bin"], 512)
    client.request(packet.build_rrq("big.bin", options={"windowsize": "4"}))
    client.recv()
    client.ack(0)
    for _ in range(4):
        client.recv()
    # RFC 7440 §4: block 3 went missing, so the client acknowledges block 2
    client.ack(2)
    window = [client.recv() for _ in range(4)]
    assert window == [packet.Data(n, expected[n - 1]) for n in (3, 4, 5, 6)]


def test_duplicate_ack_does_not_trigger_a_resend(tftp: RunningTftp, client: RawClient) -> None:
    client.request(packet.build_rrq("big.bin"))
    assert client.recv() == packet.Data(1, tftp.files["big.bin"][:512])
    client.ack(1)
    assert client.recv() == packet.Data(2, tftp.files["big.bin"][512:1024])
    client.ack(1)  # RFC 1350's Sorcerer's Apprentice: answering this would double every block after it
    client.ack(2)
    assert client.recv() == packet.Data(3, tftp.files["big.bin"][1024:1536])
    client.sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        client.sock.recvfrom(2048)


def test_silent_client_gets_retransmissions_then_a_timeout_error(
    tftp: RunningTftp, client: RawClient
) -> None:
    client.request(packet.build_rrq("undionly.kpxe"))
    first = client.recv()
    copies = 0
    while True:
        answer = client.recv(timeout=3)
        if isinstance(answer, packet.Error):
            break
        assert answer == first
        copies += 1
    assert copies == 3  # the fixture's retries=3
    assert answer.code == packet.ERR_UNDEFINED
    tftp.wait_idle()


def _serve_in_namespace(ns: Namespace, root: Path, stop: threading.Event) -> tuple[threading.Thread, int]:
    """Run a TftpServer on a thread that has entered `ns`, so all its sockets live there."""
    ports: list[int | BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{ns.name}") as handle:
                assert libc.setns(handle.fileno(), 0x40000000) == 0, "setns failed"
            server = TftpServer(root, "127.0.0.1", 0)
        except BaseException as exc:
            ports.append(exc)
            raise
        ports.append(server.port)
        server.run(stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for(lambda: bool(ports))
    assert isinstance(ports[0], int), ports[0]
    return thread, ports[0]


@pytest.mark.netns
def test_blksize_is_capped_to_the_arrival_interface_mtu(tftp: RunningTftp) -> None:
    ns = Namespace.create("ktftpmtu")
    stop = threading.Event()
    try:
        ns.run(["ip", "link", "set", "lo", "mtu", "1500"])
        thread, port = _serve_in_namespace(ns, tftp.root, stop)
        client = RawClient(port, ns.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            client.request(packet.build_rrq("big.bin", options={"blksize": "8192"}))
            assert client.recv() == packet.OptionAck({"blksize": "1468"})  # 1500 - IP - UDP - TFTP
            client.ack(0)
            assert client.recv() == packet.Data(1, tftp.files["big.bin"][:1468])
        finally:
            client.close()
        # curl asking for more than the MTU allows still gets the whole file
        out = tftp.root.parent / "mtu.out"
        result = ns.run(
            ["curl", "-sS", "--tftp-blksize", "8192", "-o", str(out), f"tftp://127.0.0.1:{port}/big.bin"]
        )
        assert result.returncode == 0
        assert out.read_bytes() == tftp.files["big.bin"]
    finally:
        stop.set()
        ns.delete()
    thread.join(5)
    assert not thread.is_alive()


def test_wildcard_bind_answers_from_the_address_that_was_asked(tftp: RunningTftp) -> None:
    # a multi-homed appliance bound to 0.0.0.0: the transfer must come from the address the client
    # sent its request to, not from whatever address routing picks (127.0.0.1 here)
    server, stop, thread = start_server(tftp.root, "0.0.0.0")
    client = RawClient(server.port, server="127.0.0.2")
    try:
        client.request(packet.build_rrq("undionly.kpxe"))
        assert client.recv() == packet.Data(1, tftp.files["undionly.kpxe"][:512])
        assert client.peer is not None and client.peer[0] == "127.0.0.2"
    finally:
        client.close()
        stop.set()
        thread.join(5)


def test_netascii_mode_sends_crlf_line_ends(tftp: RunningTftp, client: RawClient) -> None:
    client.request(packet.build_rrq("sub/nested.txt", mode="netascii"))
    assert client.recv() == packet.Data(1, b"nested file\r\n")


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "sub/../../etc/passwd", "..", "/etc/passwd", "\\..\\etc\\passwd", "sub\\..\\..\\x"],
)
def test_path_traversal_is_refused_with_access_violation(client: RawClient, name: str) -> None:
    answer = _error(client, packet.build_rrq(name))
    assert answer.code == packet.ERR_ACCESS, answer


def test_symlink_out_of_the_root_is_refused(tftp: RunningTftp, client: RawClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for TFTP clients")
    os.symlink(secret, tftp.root / "link.txt")
    os.symlink(tmp_path, tftp.root / "linkdir")
    assert _error(client, packet.build_rrq("link.txt")).code == packet.ERR_ACCESS
    client2 = RawClient(tftp.port)
    try:
        assert _error(client2, packet.build_rrq("linkdir/secret.txt")).code == packet.ERR_ACCESS
    finally:
        client2.close()


def test_symlink_inside_the_root_is_served(tftp: RunningTftp, client: RawClient) -> None:
    os.symlink("undionly.kpxe", tftp.root / "pxelinux.0")
    client.request(packet.build_rrq("pxelinux.0"))
    assert client.recv() == packet.Data(1, tftp.files["undionly.kpxe"][:512])


def test_write_request_is_refused_and_nothing_is_written(tftp: RunningTftp, client: RawClient) -> None:
    answer = _error(client, packet.build_wrq("upload.bin"))
    assert answer.code == packet.ERR_ACCESS
    assert not (tftp.root / "upload.bin").exists()


def test_busybox_put_is_refused(tftp: RunningTftp, tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox, "busybox is not installed"
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * 100)
    result = subprocess.run(
        [busybox, "tftp", "-p", "-l", str(local), "-r", "up.bin", "127.0.0.1", str(tftp.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"read-only" in result.stderr
    assert not (tftp.root / "up.bin").exists()


def test_missing_file_gets_file_not_found(client: RawClient) -> None:
    assert _error(client, packet.build_rrq("nothing-here.efi")).code == packet.ERR_NOT_FOUND


def test_directory_is_not_a_file(client: RawClient) -> None:
    assert _error(client, packet.build_rrq("sub")).code == packet.ERR_NOT_FOUND


def test_garbage_is_counted_and_dropped_and_the_server_keeps_serving(
    tftp: RunningTftp, client: RawClient
) -> None:
    before = _malformed()
    rnd = os.urandom(200_000)
    garbage = [rnd[i * 97 : i * 97 + (i % 90)] for i in range(2000)]
    garbage += [b"\x00\x01nofilename-without-nul", b"\x00\x03\x00\x01data to port 69"]
    # in bursts the socket buffer holds, so the kernel drops none and every packet must be counted
    for start in range(0, len(garbage), 100):
        for raw in garbage[start : start + 100]:
            client.request(raw)
        sent = min(start + 100, len(garbage))
        _wait_for(lambda sent=sent: _malformed() - before >= sent)
    # a transfer socket gets garbage too
    client.request(packet.build_rrq("big.bin"))
    first = client.recv()
    client.send_to_transfer(b"\x00\x04\x00")  # short ACK
    client.send_to_transfer(b"\x00\x09junk")
    client.ack(1)
    nxt = client.recv()
    assert first == packet.Data(1, tftp.files["big.bin"][:512])
    assert nxt == packet.Data(2, tftp.files["big.bin"][512:1024])
    _wait_for(lambda: _malformed() - before >= len(garbage) + 2)
    other = RawClient(tftp.port)
    try:
        other.request(packet.build_rrq("undionly.kpxe"))
        assert other.recv() == packet.Data(1, tftp.files["undionly.kpxe"][:512])
    finally:
        other.close()
