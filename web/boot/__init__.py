"""Node-facing boot endpoints (/boot/...): iPXE scripts, the files they load, and iPXE itself.

No login: machines that netboot cannot hold credentials. What a caller learns is bounded: a script for
the MAC it names (a discovery token is single-use, expires, and only registers a machine), and files that
are served to any booting node anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, Response, current_app, request, send_from_directory
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import bootloop, discovery, nodes
from appliance.errors import InvalidInput, KilnError
from appliance.groupcommit import Batch
from appliance.models import Bootenv
from appliance.pxe import PxeLibrary
from web.boot.groupwrite import group_commit
from web.context import kiln

log = logging.getLogger(__name__)

bp = Blueprint("boot", __name__, url_prefix="/boot")

# iPXE builds the DHCP server hands out as HTTP URLs (UEFI HTTP boot); Debian's ipxe package has them
LOADERS = ("undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi")
IPXE_DIR = Path("/usr/lib/ipxe")
SCRIPT_MIMETYPE = "text/plain"


def _library() -> PxeLibrary:
    library = current_app.extensions.get("kiln_pxe")
    if library is None:
        library = current_app.extensions["kiln_pxe"] = PxeLibrary()
    assert isinstance(library, PxeLibrary)
    return library


def _base_url() -> str:
    # the address the node itself used to reach us, so the script works behind any advertise address
    return request.host_url.rstrip("/")


def _script(text: str) -> Response:
    return Response(text, mimetype=SCRIPT_MIMETYPE, headers={"Cache-Control": "no-store"})


def _error_script(mac: str, message: str) -> Response:
    log.warning("boot script for %s: %s", mac, message)
    return _script(
        "#!ipxe\n"
        f"echo Kiln cannot boot this machine: {message}\n"
        "sleep 30\n"
        f"chain --replace {_base_url()}/boot/ipxe?mac={mac}\n"
    )


@bp.get("/ipxe")
def ipxe_script() -> Response:
    """The node's bootenv as an iPXE script; unknown MACs get discovery with a one-time token."""
    library = _library()
    try:
        mac = nodes.normalize_mac(request.args.get("mac", ""))
    except InvalidInput:
        # no MAC (or a firmware that did not expand ${net0/mac}): ask iPXE to call again with it
        return _script(library.render("chain.ipxe.j2", base_url=_base_url()))
    base_url = _base_url()

    def render(s: Session, _batch: Batch) -> str:
        node = nodes.node_by_mac(s, mac)
        name = node.bootenv if node is not None else "discovery"
        spec = library.spec(name, s.scalar(select(Bootenv).where(Bootenv.name == name)))
        bootloop.record_fetch(s, mac, f"ipxe:{spec.name}")
        context = {
            "mac": mac,
            "base_url": base_url,
            "files_url": f"{base_url}/boot/files/{spec.name}",
            "node_name": node.name if node is not None else "",
            "node_id": node.id if node is not None else None,
            "kernel": spec.kernel,
            "initrd": spec.initrd,
            "kernel_args": spec.kernel_args,
            "data": spec.data,
            "token": "",
        }
        if spec.kind == "discovery":
            context["token"] = discovery.issue_token(
                s, "discovery", mac=mac, node_id=node.id if node is not None else None
            )
        return library.render(spec.template, **context)

    try:
        # a boot storm fetches hundreds of scripts at once: their writes (token, fetch) share commits
        return _script(group_commit().submit(render))
    except KilnError as exc:
        return _error_script(mac, exc.message)


@bp.get("/files/<bootenv>/<path:name>")
def boot_file(bootenv: str, name: str) -> Response:
    """Kernels and initrds: the discovery image from <state_dir>/discovery/current, installers from
    <state_dir>/bootenvs/<name>/."""
    state = kiln().settings.state_dir
    directory = state / "discovery" / "current" if bootenv == "discovery" else state / "bootenvs" / bootenv
    return send_from_directory(directory, name, max_age=0)


@bp.get("/<any(" + ", ".join(f'"{n}"' for n in LOADERS) + "):loader>")
def loader_file(loader: str) -> Response:
    """iPXE itself over HTTP (UEFI HTTP boot): the TFTP root's copy first, else Debian's."""
    tftp_root = kiln().settings.tftp_root
    directory = tftp_root if (tftp_root / loader).is_file() else IPXE_DIR
    return send_from_directory(directory, loader, max_age=0)
