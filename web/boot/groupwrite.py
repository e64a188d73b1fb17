"""The web process's group commit for node-facing hot paths (/boot/ipxe, POST /discovery)."""

from __future__ import annotations

from flask import current_app

from appliance.groupcommit import GroupCommit
from web.context import kiln


def group_commit() -> GroupCommit:
    """One GroupCommit per app, started on first use (no thread at import or app creation)."""
    found = current_app.extensions.get("kiln_group_commit")
    if found is None:
        found = current_app.extensions["kiln_group_commit"] = GroupCommit(kiln().db)
    assert isinstance(found, GroupCommit)
    return found
