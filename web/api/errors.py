"""The one place where errors become HTTP answers: JSON `{"error": ..., "field": ...}`, never a traceback.

- appliance.errors.KilnError → its `status` and `to_dict()`;
- pydantic ValidationError → 400 naming the first bad field (`macs.0.mac`);
- IntegrityError from the database (a race on a unique name) → 409;
- OperationalError (database locked past its timeout, PostgreSQL unreachable) → 503 with Retry-After;
- werkzeug HTTPException (404 unknown route, 405...) → JSON under /api, Flask's page elsewhere;
- anything else → 500 `{"error": "internal error", "request_id": ...}`, the traceback only in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException

from appliance.errors import KilnError
from web.observability import request_info

log = logging.getLogger(__name__)
API_PREFIX = "/api/"


def error_response(status: int, message: str, field: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": message, "field": field, **extra}
    response = jsonify(body)
    response.status_code = status
    return response


def validation_field(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return field, f"{field}: {first['msg']}"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KilnError)
    def _kiln_error(exc: KilnError) -> Response:
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        response = error_response(exc.status, exc.message, exc.field)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            response.headers["Retry-After"] = str(int(retry_after + 0.999))
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        field, message = validation_field(exc)
        return error_response(400, message, field)

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> Response:
        log.info("integrity error turned into 409: %s", exc.orig)
        return error_response(409, "the change conflicts with existing data (duplicate or still referenced)")

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError) -> Response:
        # SQLite busy past its 30 s timeout, PostgreSQL down or restarting: the client may retry
        log.error("database unavailable: %s", exc.orig)
        response = error_response(503, "database unavailable; try again shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith(API_PREFIX):
            return exc
        status = exc.code or 500
        message = {404: "no such resource", 405: f"method {request.method} not allowed here"}.get(
            status, exc.description or exc.name
        )
        response = error_response(status, message)
        if status == 405:
            allowed = exc.get_response().headers.get("Allow")
            if allowed:
                response.headers["Allow"] = allowed
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error", request_id=request_info.get().request_id)
