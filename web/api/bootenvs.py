"""/bootenvs: what a node boots next (discovery, local disk, an installer, an image)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import select

from appliance import events
from appliance.errors import Conflict, NotFound
from appliance.models import Bootenv, Node
from appliance.versions import check_and_bump
from web.api.access import actor
from web.api.endpoint import changes, endpoint, expected_version, read_session, write_session
from web.api.paging import ListQuery, page_of, paginate
from web.api.schemas import BootenvIn, BootenvOut, BootenvPatch

bp = Blueprint("bootenvs", __name__)


def _get(s: Any, bootenv_id: int, *, for_update: bool = False) -> Bootenv:
    stmt = select(Bootenv).where(Bootenv.id == bootenv_id)
    bootenv = s.scalar(stmt.with_for_update() if for_update else stmt)
    if bootenv is None:
        raise NotFound(f"bootenv {bootenv_id} not found", field="id")
    return bootenv  # type: ignore[no-any-return]


def _name_free(s: Any, name: str, bootenv_id: int | None) -> None:
    clash = s.scalar(select(Bootenv.id).where(Bootenv.name == name, Bootenv.id != (bootenv_id or -1)))
    if clash is not None:
        raise Conflict(f"bootenv '{name}' already exists", field="name")


@endpoint(bp, "GET", "/bootenvs", query=ListQuery, response=page_of(BootenvOut), summary="List bootenvs")
def bootenvs_get(query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        return paginate(s, select(Bootenv), Bootenv.id, query, BootenvOut.model_validate)


@endpoint(
    bp, "POST", "/bootenvs", body=BootenvIn, response=BootenvOut, status=201, summary="Create a bootenv"
)
def bootenv_post(body: BootenvIn) -> BootenvOut:
    with write_session() as s:
        _name_free(s, body.name, None)
        bootenv = Bootenv(**changes(body))
        s.add(bootenv)
        s.flush()
        events.record(
            s,
            "bootenv.create",
            subject_type="bootenv",
            subject_id=bootenv.id,
            actor=actor(),
            message=f"bootenv {bootenv.name} ({bootenv.kind})",
        )
        return BootenvOut.model_validate(bootenv)


@endpoint(bp, "GET", "/bootenvs/<int:bootenv_id>", response=BootenvOut, summary="Show a bootenv")
def bootenv_get(bootenv_id: int) -> BootenvOut:
    with read_session() as s:
        return BootenvOut.model_validate(_get(s, bootenv_id))


@endpoint(
    bp, "PUT", "/bootenvs/<int:bootenv_id>", body=BootenvIn, response=BootenvOut, summary="Replace a bootenv"
)
def bootenv_put(bootenv_id: int, body: BootenvIn) -> BootenvOut:
    return _update(bootenv_id, body)


@endpoint(
    bp,
    "PATCH",
    "/bootenvs/<int:bootenv_id>",
    body=BootenvPatch,
    response=BootenvOut,
    summary="Change a bootenv",
)
def bootenv_patch(bootenv_id: int, body: BootenvPatch) -> BootenvOut:
    return _update(bootenv_id, body)


def _update(bootenv_id: int, body: BootenvIn | BootenvPatch) -> BootenvOut:
    with write_session() as s:
        bootenv = _get(s, bootenv_id, for_update=True)
        check_and_bump(bootenv, expected_version(body), f"bootenv {bootenv.name}")
        fields = changes(body)
        if fields.get("name", bootenv.name) != bootenv.name:
            _name_free(s, fields["name"], bootenv.id)
            in_use = s.scalar(select(Node.id).where(Node.bootenv == bootenv.name).limit(1))
            if in_use is not None:
                raise Conflict(f"bootenv '{bootenv.name}' is used by nodes; cannot rename it", field="name")
        applied = {k: v for k, v in fields.items() if getattr(bootenv, k) != v}
        for key, value in fields.items():
            setattr(bootenv, key, value)
        s.flush()
        events.record(
            s,
            "bootenv.update",
            subject_type="bootenv",
            subject_id=bootenv.id,
            actor=actor(),
            message=f"bootenv {bootenv.name}: {', '.join(sorted(applied)) or 'no change'}",
            data={"changes": applied},
        )
        return BootenvOut.model_validate(bootenv)


@endpoint(bp, "DELETE", "/bootenvs/<int:bootenv_id>", status=204, summary="Delete a bootenv no node uses")
def bootenv_delete(bootenv_id: int) -> None:
    with write_session() as s:
        bootenv = _get(s, bootenv_id, for_update=True)
        version = expected_version()
        if version is not None:
            check_and_bump(bootenv, version, f"bootenv {bootenv.name}")
        in_use = s.scalar(select(Node.name).where(Node.bootenv == bootenv.name).limit(1))
        if in_use is not None:
            raise Conflict(f"bootenv '{bootenv.name}' is used by node '{in_use}'", field="id")
        s.delete(bootenv)
        events.record(
            s,
            "bootenv.delete",
            subject_type="bootenv",
            subject_id=bootenv_id,
            actor=actor(),
            message=f"bootenv {bootenv.name}",
        )
