from __future__ import annotations

import re

from openapi_spec_validator import validate

from tests.unit.api_support import Api, sqlite_api_fixture  # noqa: F401  (fixtures)
from web.api.openapi import build_document


def test_openapi_document_is_valid_and_lists_every_route(sqlite_api: Api) -> None:
    r = sqlite_api.get("/openapi.json", role=None)
    assert r.status_code == 200
    doc = r.json
    validate(doc)
    assert doc["openapi"].startswith("3.")
    rules = [rule for rule in sqlite_api.app.url_map.iter_rules() if rule.rule.startswith("/api/v2/")]
    assert len(rules) > 20
    for rule in rules:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix("/api/v2"))
        assert path in doc["paths"], path
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            assert not op.get("x-kiln-undocumented"), f"{method} {path} is not declared with @endpoint"


def test_openapi_uses_the_schemas_that_validate_requests(sqlite_api: Api) -> None:
    doc = build_document(sqlite_api.app)
    create = doc["paths"]["/nodes"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodeIn"
    }
    node_in = doc["components"]["schemas"]["NodeIn"]
    assert node_in["required"] == ["name"] and node_in["additionalProperties"] is False
    node_out = doc["components"]["schemas"]["NodeOut"]
    assert "bmc_password_enc" not in node_out["properties"]
    assert "password_hash" not in doc["components"]["schemas"]["UserOut"]["properties"]
    params = {p["name"] for p in doc["paths"]["/nodes"]["get"]["parameters"]}
    assert {"limit", "cursor", "name", "state", "mac"} <= params
    assert doc["paths"]["/users"]["get"]["x-kiln-role"] == "admin"
    assert doc["paths"]["/login"]["post"]["security"] == []
    # what the document says is required is what the API refuses without
    missing = sqlite_api.post("/networks", {"name": "x"})
    assert (
        missing.status_code == 400
        and missing.json["field"] in doc["components"]["schemas"]["NetworkIn"]["required"]
    )


def test_api_root_points_at_the_document(sqlite_api: Api) -> None:
    index = sqlite_api.client.get("/api/v2/")
    assert index.status_code == 200 and index.json["openapi"] == "/api/v2/openapi.json"
