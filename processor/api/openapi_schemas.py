"""JSON Schemas (OpenAPI 3.1 = JSON Schema 2020-12) of the responses this package serves.

Response bodies of ``/v1`` come from the pydantic models in ``schemas.api`` (one source of
truth with the rest of the API); the operations bodies are described here.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.api import EntriesPage, ErrorResponse, RunList, RunRollup

JsonSchema = dict[str, Any]
REF_TEMPLATE: Final = "#/components/schemas/{model}"


def ref(name: str) -> JsonSchema:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def model_schemas(*models: type[BaseModel]) -> dict[str, JsonSchema]:
    """Component schemas of ``models`` and of every model they reference, by class name."""
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF_TEMPLATE)
    defs: dict[str, JsonSchema] = top.get("$defs", {})
    return defs


def _obj(props: dict[str, JsonSchema], description: str = "") -> JsonSchema:
    schema: JsonSchema = {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


#: Name of the component every 4xx/5xx answer refers to.
ERROR_SCHEMA: Final = "ErrorResponse"

COMPONENT_SCHEMAS: Final[dict[str, JsonSchema]] = {
    **model_schemas(RunRollup, EntriesPage, RunList, ErrorResponse),
    "Health": _obj({"status": {"const": "ok"}}),
    "Readiness": _obj(
        {
            "status": {"enum": ["ready", "not_ready"]},
            "kafka": {"type": "boolean"},
            "redis": {"type": "boolean"},
            "partitionsAssigned": {"type": "boolean"},
            "detail": {"type": "string"},
        },
        "200 when every part is true, else 503",
    ),
    "OpenApiDocument": {"type": "object", "description": "This document"},
}
