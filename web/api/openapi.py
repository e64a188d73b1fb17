"""The OpenAPI 3.1 document of /api/v2, built from the app's routes and their pydantic models.

Why our own ~150 lines rather than apispec or flask-openapi3: the request/response models are plain
pydantic v2 classes already, and `model_json_schema()` emits JSON Schema 2020-12, which OpenAPI 3.1
takes as-is; apispec wants marshmallow (or a plug-in) and flask-openapi3 would own our routing and
error format. Walking `app.url_map` means every route is in the document: a route added without
`@endpoint` still appears (marked `x-kiln-undocumented`), so the test that compares routes and
document catches it.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel

from web.api.endpoint import EndpointSpec, endpoint

API_PREFIX = "/api/v2"
REF = "#/components/schemas/{model}"
bp = Blueprint("openapi", __name__)
_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_ERRORS = {
    400: "bad input: `field` names what is wrong",
    401: "not logged in / no valid token",
    403: "role too low, or CSRF token missing",
    404: "no such object",
    409: "stale version or clash with existing data",
    429: "too many failed logins; see Retry-After",
}


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def swap(match: re.Match[str]) -> str:
        converter, name = match.group(1) or "string", match.group(2)
        schema = {"type": "integer"} if converter == "int" else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _CONVERTER.sub(swap, rule), params


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        self.schemas.setdefault(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}

    def query_params(self, model: type[BaseModel]) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        required = set(schema.get("required", []))
        params = []
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
        return params


def _operation(
    spec: EndpointSpec | None, endpoint: str, params: list[dict[str, Any]], comps: _Components
) -> dict[str, Any]:
    if spec is None:
        return {
            "operationId": endpoint,
            "summary": endpoint,
            "parameters": params,
            "responses": {"200": {"description": "undocumented"}},
            "x-kiln-undocumented": True,
        }
    op: dict[str, Any] = {"operationId": endpoint, "summary": spec.summary, "tags": [spec.tag]}
    if spec.description:
        op["description"] = spec.description
    parameters = list(params)
    if spec.query is not None:
        parameters += comps.query_params(spec.query)
    if spec.method in {"PUT", "PATCH", "DELETE"}:
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the ETag you read; 409 if the object changed since",
            }
        )
    if parameters:
        op["parameters"] = parameters
    if spec.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": comps.ref(spec.body)}},
        }
    ok: dict[str, Any] = {"description": "success" if spec.status != 204 else "done, no content"}
    if spec.response is not None and spec.status != 204:
        ok["content"] = {"application/json": {"schema": comps.ref(spec.response)}}
    responses: dict[str, Any] = {str(spec.status): ok}
    error_ref = {"application/json": {"schema": comps.ref(ErrorBody)}}
    codes = [400, 404, 409] if spec.method != "GET" else [400, 404]
    if spec.role is not None:
        codes += [401, 403]
    if endpoint.endswith("login_post"):
        codes.append(429)
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERRORS[code], "content": error_ref}
    op["responses"] = responses
    op["security"] = [] if spec.role is None else [{"bearerAuth": []}, {"cookieAuth": []}]
    if spec.role is not None:
        op["x-kiln-role"] = spec.role
    return op


def build_document(app: Flask) -> dict[str, Any]:
    comps = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(API_PREFIX):
            continue
        path, params = _path(rule.rule[len(API_PREFIX) :] or "/")
        view = app.view_functions[rule.endpoint]
        spec: EndpointSpec | None = getattr(view, "kiln_spec", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(spec, rule.endpoint, params, comps)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln API",
            "version": "2",
            "description": "Bare-metal fleet admin node. Errors are `{error, field}`; lists are "
            "`{items, next}` with `?limit=&cursor=`; send the ETag back in `If-Match` to update safely.",
        },
        "servers": [{"url": API_PREFIX}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(comps.schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from POST /tokens or `kiln user token`",
                },
                "cookieAuth": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "from POST /login; mutations also need the X-CSRF-Token header",
                },
            },
        },
    }


@endpoint(bp, "GET", "/openapi.json", public=True, summary="This document")
def openapi_get() -> Response:
    return jsonify(build_document(current_app))


class IndexOut(BaseModel):
    name: str
    api: str
    openapi: str
    login: str


@endpoint(bp, "GET", "/", response=IndexOut, public=True, summary="Where to start")
def index_get() -> IndexOut:
    return IndexOut(
        name="Kiln", api=API_PREFIX, openapi=f"{API_PREFIX}/openapi.json", login=f"{API_PREFIX}/login"
    )
