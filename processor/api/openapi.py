"""The route table and the OpenAPI 3.1 document generated from it.

Routes are registered through :func:`add_route`, which records a :class:`RouteSpec` on the
application; ``GET /v1/openapi.json`` renders every recorded route at request time, so
routes other modules add with :func:`add_route` after ``setup_routes`` are listed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from processor.api.openapi_schemas import COMPONENT_SCHEMAS, ERROR_SCHEMA, JsonSchema, ref

OPENAPI_VERSION: Final = "3.1.0"
API_TITLE: Final = "usage-stream query API"
API_VERSION: Final = "1"

_ERROR_TEXT: Final = {
    400: "A parameter or the request body is malformed or out of range",
    401: "Missing or unknown bearer key",
    404: "Not found (or belongs to another tenant)",
    409: "The change conflicts with the resource's state",
    500: "Unexpected error",
    503: "State store unavailable",
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str  # "path" or "query"
    schema: JsonSchema
    description: str = ""

    def to_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "schema": self.schema,
        }
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    operation_id: str
    summary: str
    response: str  # component schema name of the success body
    params: tuple[Param, ...] = ()
    status: int = 200
    errors: tuple[int, ...] = ()
    extra_responses: dict[int, tuple[str, str]] = field(default_factory=dict)
    content_type: str = "application/json"
    request: str | None = None  # component schema name of the JSON request body

    @property
    def authenticated(self) -> bool:
        return self.path == "/v1" or self.path.startswith("/v1/")


SPECS_KEY: Final = web.AppKey("usage_api_route_specs", list[RouteSpec])
EXTRA_SCHEMAS_KEY: Final = web.AppKey("usage_api_extra_schemas", dict[str, JsonSchema])


def add_route(
    app: web.Application,
    spec: RouteSpec,
    handler: Handler,
    extra_schemas: dict[str, JsonSchema] | None = None,
) -> None:
    """Register ``handler`` for ``spec`` and list it in the OpenAPI document."""
    app.router.add_route(spec.method, spec.path, handler)
    if SPECS_KEY not in app:
        app[SPECS_KEY] = []
        app[EXTRA_SCHEMAS_KEY] = {}
    app[SPECS_KEY].append(spec)
    if extra_schemas:
        app[EXTRA_SCHEMAS_KEY].update(extra_schemas)


def _json_body(schema: str, description: str, content_type: str) -> dict[str, Any]:
    return {"description": description, "content": {content_type: {"schema": ref(schema)}}}


def _operation(spec: RouteSpec) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(spec.status): _json_body(spec.response, "Success", spec.content_type)
    }
    for status, (schema, text) in spec.extra_responses.items():
        responses[str(status)] = _json_body(schema, text, "application/json")
    errors = set(spec.errors) | {500}
    if spec.authenticated:
        errors.add(401)
    if any(p.where == "query" for p in spec.params):
        errors.add(400)
    for status in sorted(errors):
        text = _ERROR_TEXT.get(status, "Error")
        responses.setdefault(str(status), _json_body(ERROR_SCHEMA, text, "application/json"))
    op: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "parameters": [p.to_openapi() for p in spec.params],
        "responses": responses,
    }
    if spec.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(spec.request)}},
        }
    op["security"] = [{"bearer": []}] if spec.authenticated else []
    return op


def build_document(
    specs: list[RouteSpec], extra_schemas: dict[str, JsonSchema] | None = None
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": "Live usage rollups of LLM agent runs. Costs are plain decimal "
            "USD strings, times epoch milliseconds. Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {**COMPONENT_SCHEMAS, **(extra_schemas or {})},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed on /v1 when API keys are configured; the key's "
                    "tenant scopes every lookup",
                }
            },
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(build_document(app.get(SPECS_KEY, []), app.get(EXTRA_SCHEMAS_KEY)))
