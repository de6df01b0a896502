"""The OpenAPI document: Litestar's, plus each job type's payload schema and bearer auth.

Submission bodies are parsed by hand (see `api.submissions`), so their
schemas are added here: one variant per registered job type, its `payload`
being that type's pydantic model, and `SubmitJob` the `oneOf` of them.
"""

from __future__ import annotations

import copy
from typing import Any

from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from api.submissions import MAX_BATCH
from ledger import Registry, Submission

REF = "#/components/schemas/{model}"
SUBMIT_ROUTES = {("/api/jobs", "post"): "SubmitJob", ("/api/jobs/batch", "post"): "SubmitBatch"}


def job_type_schemas(registry: Registry) -> dict[str, Any]:
    """Components for every job type: `Payload.<type>`, `Submit.<type>`, and their union."""
    schemas: dict[str, Any] = {}
    submission = Submission.model_json_schema(ref_template=REF)
    schemas.update(submission.pop("$defs", {}))
    variants = []
    for kind in registry:
        payload = kind.payload_model.model_json_schema(ref_template=REF)
        schemas.update(payload.pop("$defs", {}))
        schemas[f"Payload.{kind.name}"] = payload
        variant = copy.deepcopy(submission)
        variant["title"] = f"Submit {kind.name}"
        variant["properties"]["type"] = {"type": "string", "enum": [kind.name]}
        variant["properties"]["payload"] = {"$ref": REF.format(model=f"Payload.{kind.name}")}
        variant["required"] = sorted({*variant.get("required", ()), "type"})
        schemas[f"Submit.{kind.name}"] = variant
        variants.append({"$ref": REF.format(model=f"Submit.{kind.name}")})
    schemas["SubmitJob"] = {"title": "SubmitJob", "oneOf": variants}
    schemas["SubmitBatch"] = {
        "title": "SubmitBatch",
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "jobs": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": {"$ref": REF.format(model="SubmitJob")},
            }
        },
    }
    return schemas


def complete(document: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Litestar's document with the submission bodies and the bearer scheme added."""
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(job_type_schemas(registry))
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if path.startswith("/api/") or path == "/api":
                operation["security"] = [{"bearer": []}]
            model = SUBMIT_ROUTES.get((path, method))
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
                }
    return document


class DocumentPlugin(JsonRenderPlugin):
    """Serves the completed document at /schema/openapi.json (built once, then cached)."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(path="/openapi.json")
        self.registry = registry
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = self.render_json(request, complete(openapi_schema, self.registry))
        return self._rendered


def openapi_config(registry: Registry) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="jobledger",
        version="1",
        description="Background jobs with an event-sourced ledger per job.",
        path="/schema",
        render_plugins=[DocumentPlugin(registry)],
    )
