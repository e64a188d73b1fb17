"""/anneal: has the fleet (or one deployment) converged? The verdict is appliance.anneal_status's."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, Field

from appliance.anneal_status import anneal_status
from web.api.endpoint import endpoint, read_session, reply
from web.api.schemas import Strict

bp = Blueprint("anneal", __name__)


class AnnealQuery(Strict):
    deployment: str | None = Field(None, description="a deployment's name or id; the whole fleet if absent")


class AnnealError(BaseModel):
    node_role: int
    node: str
    role: str
    attempts: int
    last_log: str


class AnnealOut(BaseModel):
    status: Literal["converged", "working", "failed"]
    deployment: str | None
    counts: dict[str, int] = Field(description="node-roles by state")
    total: int = Field(description="node-roles outside `proposed`")
    active: int
    annealers: int = Field(description="annealer processes with a recent heartbeat")
    errors: list[AnnealError] = Field(description="node-roles in error (the first 20)")


@endpoint(bp, "GET", "/anneal", query=AnnealQuery, response=AnnealOut, summary="Anneal status")
def anneal_get(query: AnnealQuery) -> Response:
    """200 when converged, 202 while node-roles are still todo/transition/blocked, 409 when any is in
    error (as OpenCrowbar's /api/v2/anneal); the body has the counts by state either way."""
    with read_session() as s:
        status = anneal_status(s, query.deployment)
    body: dict[str, Any] = AnnealOut.model_validate(status.as_dict()).model_dump(mode="json")
    return reply(body, status.http_status)
