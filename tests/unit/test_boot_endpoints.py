"""/boot/...: iPXE scripts per bootenv, one-time tokens, boot files, iPXE loaders, boot-loop detection."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

from sqlalchemy import select

from appliance import bootloop
from appliance.models import Bootenv, BootFetch, BootToken, Event, Node
from tests.unit.api_support import Api, sqlite_api_fixture  # noqa: F401  (fixtures)
from tests.unit.discovery_support import inventory, register

MAC = "52:54:00:12:34:56"


def _script(api: Api, query: str) -> str:
    r = api.client.get(f"/boot/ipxe{query}")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert text.startswith("#!ipxe\n")
    return text


def test_unknown_mac_gets_discovery_kernel_and_initrd_with_url_and_one_time_token(sqlite_api: Api) -> None:
    text = _script(sqlite_api, "?mac=52-54-00-12-34-56")
    base = "http://localhost"
    assert f"kernel {base}/boot/files/discovery/vmlinuz initrd=initrd.img" in text
    assert f"initrd --name initrd.img {base}/boot/files/discovery/initrd.img" in text
    assert f"kiln.url={base} " in text and f"kiln.mac={MAC}" in text
    token = re.search(r"kiln\.token=(\S+)", text)
    assert token is not None
    with sqlite_api.db.read_session() as s:
        row = s.scalar(select(BootToken))
        assert row is not None
        # only the digest is kept, bound to the MAC that asked, expiring within the hour
        assert row.token_hash == hashlib.sha256(token.group(1).encode()).hexdigest()
        assert row.purpose == "discovery" and row.mac == MAC and row.used_at is None
        expires = row.expires_at.replace(tzinfo=dt.UTC)
        assert dt.timedelta(0) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=1)


def test_every_script_fetch_gets_a_fresh_token(sqlite_api: Api) -> None:
    tokens = {re.findall(r"kiln\.token=(\S+)", _script(sqlite_api, f"?mac={MAC}"))[0] for _ in range(3)}
    assert len(tokens) == 3


def test_request_without_a_usable_mac_is_asked_again_with_the_nics_mac(sqlite_api: Api) -> None:
    for query in ("", "?mac=", "?mac=${net0/mac}"):
        text = _script(sqlite_api, query)
        assert "chain --replace http://localhost/boot/ipxe?mac=${net0/mac}" in text
    with sqlite_api.db.read_session() as s:
        assert s.scalar(select(BootToken)) is None


def test_registered_node_boots_local_disk_bios_sanboot_uefi_exit(sqlite_api: Api) -> None:
    assert register(sqlite_api, inventory((MAC,))).status_code == 201
    text = _script(sqlite_api, f"?mac={MAC}")
    assert "kiln.token" not in text
    assert "sanboot --no-describe --drive 0x80" in text
    assert "iseq ${platform} efi && goto efi" in text and text.rstrip().endswith("exit")


def test_node_sent_back_to_discovery_gets_the_discovery_image_again(sqlite_api: Api) -> None:
    node_id = register(sqlite_api, inventory((MAC,))).json["node_id"]
    sqlite_api.patch(f"/nodes/{node_id}", {"bootenv": "discovery"})
    assert "kiln.token=" in _script(sqlite_api, f"?mac={MAC}")


def test_node_with_a_missing_bootenv_gets_a_script_that_says_so_and_retries(sqlite_api: Api) -> None:
    node_id = register(sqlite_api, inventory((MAC,))).json["node_id"]
    with sqlite_api.db.session() as s:
        node = s.get(Node, node_id)
        assert node is not None
        node.bootenv = "no-such-bootenv"
    text = _script(sqlite_api, f"?mac={MAC}")
    assert "echo Kiln cannot boot this machine: bootenv 'no-such-bootenv' not found" in text
    assert f"chain --replace http://localhost/boot/ipxe?mac={MAC}" in text


def test_discovery_files_come_from_the_current_image_and_paths_cannot_escape(sqlite_api: Api) -> None:
    state: Path = sqlite_api.app.extensions["kiln"].settings.state_dir
    current = state / "discovery" / "current"
    current.mkdir(parents=True)
    (current / "vmlinuz").write_bytes(b"kernel-bytes")
    (state / "secret_key_copy").write_text("nope")
    r = sqlite_api.client.get("/boot/files/discovery/vmlinuz")
    assert r.status_code == 200 and r.data == b"kernel-bytes"
    assert sqlite_api.client.get("/boot/files/discovery/../../secret_key_copy").status_code == 404
    assert sqlite_api.client.get("/boot/files/discovery/%2e%2e/%2e%2e/secret_key_copy").status_code == 404
    assert sqlite_api.client.get("/boot/files/discovery/initrd.img").status_code == 404


def test_ipxe_loaders_are_served_over_http_from_debians_ipxe(sqlite_api: Api) -> None:
    r = sqlite_api.client.get("/boot/ipxe.efi")
    assert r.status_code == 200
    assert r.data == Path("/usr/lib/ipxe/ipxe.efi").read_bytes()
    assert sqlite_api.client.get("/boot/passwd").status_code == 404


def test_fifth_script_fetch_without_agent_contact_flags_a_boot_loop_naming_the_step(sqlite_api: Api) -> None:
    node_id = register(sqlite_api, inventory((MAC,))).json["node_id"]
    for _ in range(4):
        _script(sqlite_api, f"?mac={MAC}")
    assert sqlite_api.events("node.boot_loop") == []
    _script(sqlite_api, f"?mac={MAC}")
    flagged = sqlite_api.events("node.boot_loop")
    assert len(flagged) == 1 and flagged[0].subject_id == node_id
    assert flagged[0].data["step"] == "ipxe:local" and "ipxe:local" in flagged[0].message
    with sqlite_api.db.read_session() as s:
        node = s.get(Node, node_id)
        assert node is not None and node.state == "error" and node.last_boot_step == "ipxe:local"
    _script(sqlite_api, f"?mac={MAC}")
    assert len(sqlite_api.events("node.boot_loop")) == 1  # flagged once per loop, not per fetch


def test_agent_contact_in_between_means_progress_not_a_loop(sqlite_api: Api) -> None:
    reg = register(sqlite_api, inventory((MAC,))).json
    agent = {"Authorization": f"Bearer {reg['token']}"}
    for _ in range(8):
        _script(sqlite_api, f"?mac={MAC}")
        assert sqlite_api.client.get("/api/v2/agent/work", headers=agent).status_code == 200
    assert sqlite_api.events("node.boot_loop") == []


def test_unknown_machine_looping_on_discovery_is_reported_by_mac(sqlite_api: Api) -> None:
    for _ in range(5):
        _script(sqlite_api, f"?mac={MAC}")
    (event,) = sqlite_api.events("node.boot_loop")
    assert event.subject_type == "mac" and event.data == {
        "mac": MAC,
        "step": "ipxe:discovery",
        "fetches": 5,
        "window_minutes": 10,
    }


def test_fetches_older_than_the_window_do_not_count_and_are_pruned(sqlite_api: Api) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=11)
    with sqlite_api.db.session() as s:
        for i in range(4):
            bootloop.record_fetch(s, MAC, "ipxe:discovery", now=old + dt.timedelta(seconds=i))
    with sqlite_api.db.session() as s:
        assert bootloop.record_fetch(s, MAC, "ipxe:discovery") is False
    with sqlite_api.db.read_session() as s:
        assert len(list(s.scalars(select(BootFetch)))) == 1
        assert list(s.scalars(select(Event).where(Event.action == "node.boot_loop"))) == []


def test_a_bootenv_row_overrides_the_shipped_kernel_arguments(sqlite_api: Api) -> None:
    with sqlite_api.db.session() as s:
        row = s.scalar(select(Bootenv).where(Bootenv.name == "discovery"))
        assert row is not None
        row.kernel_args = "console=ttyS1,57600 kiln.debug"
    text = _script(sqlite_api, f"?mac={MAC}")
    assert "initrd=initrd.img console=ttyS1,57600 kiln.debug kiln.url=" in text
    assert "quiet" not in text
