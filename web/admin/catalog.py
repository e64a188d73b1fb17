"""What is loaded: bootenvs, and barclamps with their roles. Read-only views of the models."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint
from sqlalchemy import select

from appliance.models import Barclamp, Bootenv, Role
from web.admin.guard import page
from web.admin.rendering import render
from web.context import kiln

bp = Blueprint("catalog", __name__)


@bp.get("/bootenvs")
@page
def bootenv_list() -> str:
    with kiln().db.read_session() as s:
        bootenvs = list(s.scalars(select(Bootenv).order_by(Bootenv.name)))
    return render("admin/bootenvs.html", bootenvs=bootenvs)


@bp.get("/barclamps")
@page
def barclamp_list() -> str:
    with kiln().db.read_session() as s:
        barclamps = list(s.scalars(select(Barclamp).order_by(Barclamp.name)))
        roles: dict[int | None, list[Role]] = defaultdict(list)
        for role in s.scalars(select(Role).order_by(Role.cohort, Role.name)):
            roles[role.barclamp_id].append(role)
    return render("admin/barclamps.html", barclamps=barclamps, roles=roles)
