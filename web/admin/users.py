"""Users (admins only): list, create, change role, disable, reset password, delete.

The API's user functions (web.api.users) do the work, so the last-admin guard, password rules and
Events are the same whichever door an admin uses.
"""

from __future__ import annotations

from flask import Blueprint, request
from sqlalchemy import select
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance.models import USER_ROLES, User
from web.admin.guard import action, admin_page, done
from web.admin.rendering import render
from web.api import users as user_api
from web.api.access import Caller
from web.api.schemas import UserIn, UserPatch
from web.context import kiln

bp = Blueprint("users", __name__)


@bp.get("/users")
@admin_page
def user_list() -> str:
    with kiln().db.read_session() as s:
        users = list(s.scalars(select(User).order_by(User.username)))
    return render("admin/users.html", users=users, roles=USER_ROLES)


@bp.post("/users")
@action("admin")
def user_create(who: Caller) -> WerkzeugResponse:
    body = UserIn(
        username=request.form.get("username", "").strip(),
        password=request.form.get("password", ""),
        role=request.form.get("role", "readonly"),  # type: ignore[arg-type]
        email=request.form.get("email") or None,
    )
    created = user_api.user_post(body)
    return done(f"user {created.username} ({created.role}) created")


@bp.post("/users/<int:user_id>")
@action("admin")
def user_change(who: Caller, user_id: int) -> WerkzeugResponse:
    fields: dict[str, object] = {}
    if request.form.get("role"):
        fields["role"] = request.form["role"]
    if request.form.get("disabled") in ("true", "false"):
        fields["disabled"] = request.form["disabled"] == "true"
    if request.form.get("password"):
        fields["password"] = request.form["password"]
    changed = user_api.user_patch(user_id, UserPatch.model_validate(fields))
    return done(f"user {changed.username} updated: {', '.join(sorted(fields)) or 'no change'}")


@bp.post("/users/<int:user_id>/delete")
@action("admin")
def user_remove(who: Caller, user_id: int) -> WerkzeugResponse:
    user_api.user_delete(user_id)
    return done(f"user {user_id} deleted")
