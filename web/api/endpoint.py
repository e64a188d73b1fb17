"""`@endpoint`: one declaration gives a route its validation, its access rule and its OpenAPI entry.

    from web.api.endpoint import endpoint, write_session, expected_version

    bp = Blueprint("widgets", __name__)

    @endpoint(bp, "POST", "/widgets", body=WidgetIn, response=WidgetOut, status=201, summary="Create a widget")
    def create_widget(body: WidgetIn) -> WidgetOut:
        with write_session() as s:
            ...

The handler receives the URL's variables, `body` (an instance of the `body` model, validated from the
JSON request) and `query` (an instance of the `query` model, validated from the query string). It
returns an instance of `response` (or an ORM row, converted with `from_attributes`), or None for 204.
A result with a `version` gets an ETag. Access: `public=True`, or `role=` (default: readonly for GET,
operator for anything else). The same models are what web/api/openapi.py publishes, so the document
cannot drift from what is enforced.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from appliance.errors import InvalidInput
from web.api import access
from web.api.errors import validation_field
from web.context import kiln


@dataclass(frozen=True)
class EndpointSpec:
    method: str
    rule: str
    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    role: str | None
    tag: str
    description: str = ""


def endpoint(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    role: str | None = None,
    public: bool = False,
    tag: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    method = method.upper()
    needed = None if public else (role or ("readonly" if method == "GET" else "operator"))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        spec = EndpointSpec(
            method=method,
            rule=rule,
            summary=summary,
            body=body,
            query=query,
            response=response,
            status=status,
            role=needed,
            tag=tag or bp.name,
            description=(func.__doc__ or "").strip(),
        )

        @functools.wraps(func)
        def view(**path_args: Any) -> Response:
            if needed is not None:
                access.require(needed)
            kwargs = dict(path_args)
            if query is not None:
                kwargs["query"] = _parse_query(query)
            if body is not None:
                kwargs["body"] = _parse_body(body)
            return render(func(**kwargs), response, status)

        view.kiln_spec = spec  # type: ignore[attr-defined]
        # one function may serve several methods (stacked decorators): the method keeps endpoints apart
        suffix = f"_{method.lower()}"
        name = func.__name__ if func.__name__.endswith(suffix) else func.__name__ + suffix
        bp.add_url_rule(rule, endpoint=name, view_func=view, methods=[method])
        return func

    return decorate


def _parse_query(model: type[BaseModel]) -> BaseModel:
    values: dict[str, Any] = {}
    for key in request.args:
        items = request.args.getlist(key)
        values[key] = items if len(items) > 1 else items[0]
    return model.model_validate(values)


def _parse_body(model: type[BaseModel]) -> BaseModel:
    data = request.get_json(silent=True)
    if data is None:
        raise InvalidInput("body", "send a JSON object with Content-Type: application/json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = validation_field(exc)
        raise InvalidInput(field, message.split(": ", 1)[-1]) from exc


def render(result: Any, response: type[BaseModel] | None, status: int) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status=204)
    if response is not None and not isinstance(result, response):
        result = response.model_validate(result, from_attributes=True)
    payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    reply = jsonify(payload)
    reply.status_code = status
    version = payload.get("version") if isinstance(payload, dict) else None
    if isinstance(version, int):
        etag = f'"{version}"'
        reply.headers["ETag"] = etag
        # pollers (the admin pages) re-read objects often; an unchanged one costs no body
        if request.method == "GET" and etag in {t.strip().removeprefix("W/") for t in _none_match()}:
            return Response(status=304, headers={"ETag": etag})
    return reply


def _none_match() -> list[str]:
    return request.headers.get("If-None-Match", "").split(",")


def expected_version(body: BaseModel | None = None) -> int | None:
    """The version the caller based its change on: `If-Match` first, else a `version` body field."""
    header = request.headers.get("If-Match", "").strip()
    if header and header != "*":
        tag = header.removeprefix("W/").strip('"')
        if not tag.isdigit():
            raise InvalidInput("If-Match", f"expected an ETag this API gave out, got {header}")
        return int(tag)
    version = getattr(body, "version", None)
    return version if isinstance(version, int) else None


def changes(body: BaseModel) -> dict[str, Any]:
    """Fields to write: PATCH changes only what was sent, PUT replaces (defaults for what was not)."""
    data = body.model_dump(exclude_unset=request.method == "PATCH")
    data.pop("version", None)
    return data


@contextlib.contextmanager
def write_session() -> Iterator[Session]:
    with kiln().db.session() as session:
        yield session


@contextlib.contextmanager
def read_session() -> Iterator[Session]:
    with kiln().db.read_session() as session:
        yield session


def reply(payload: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(payload)
    response.status_code = status
    return response
