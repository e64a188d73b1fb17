"""REST API v2, mounted at /api/v2.

Each module below is a Flask Blueprint named `bp` whose routes are declared with
`web.api.endpoint.endpoint` (validation + access + OpenAPI in one place). To add an API module:

1. write `web/api/<name>.py` with `bp = Blueprint("<name>", __name__)` and `@endpoint(...)` routes
   (rules relative to /api/v2, e.g. "/deployments/<int:deployment_id>");
2. add one line `"web.api.<name>",` to MODULES below.

Errors: raise appliance.errors (NotFound, Conflict, InvalidInput...); web/api/errors.py turns them into
`{"error", "field"}` answers. Changes: `with write_session() as s:` and an Event through
appliance.events.record(..., actor=actor()). The OpenAPI document picks new routes up by itself.

Access: every route under /api/v2 needs a logged-in user unless declared `@endpoint(..., public=True)`
(e.g. node-facing callbacks that check their own boot/agent token); a plain Flask route added to one
of these blueprints is guarded too (readonly to read, operator to change) and shows in the OpenAPI
document as undocumented.
"""

from __future__ import annotations

import importlib

from flask import Blueprint, current_app, request

from web.api import access

MODULES = [
    "web.api.openapi",
    "web.api.session",
    "web.api.nodes",
    "web.api.networks",
    "web.api.bootenvs",
    "web.api.users",
    "web.api.events",
    "web.api.discovery",
    "web.api.annealer",
    "web.api.events_stream",
    "web.api.bmc",
    "web.api.anneal",
    "web.api.webhooks",
]


def create_blueprint() -> Blueprint:
    """A fresh /api/v2 blueprint holding every module's routes (one per app: blueprints nest once)."""
    api = Blueprint("api", __name__, url_prefix="/api/v2")
    for name in MODULES:
        api.register_blueprint(importlib.import_module(name).bp)
    api.before_request(_guard_undeclared_routes)
    return api


def _guard_undeclared_routes() -> None:
    """A route added without @endpoint still needs a logged-in user (operator to change anything)."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and not hasattr(view, "kiln_spec"):
        access.require("readonly" if request.method in access.SAFE_METHODS else "operator")
