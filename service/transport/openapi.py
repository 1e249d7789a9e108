"""What the OpenAPI document says: the answers' models, every error status each operation can answer (with
trackin's error object, not FastAPI's ``{"detail": [...]}``), the id pattern of path parameters.

Routes name their statuses with `errors(...)`; `truthful_openapi` rewrites what FastAPI generates and cannot
be told otherwise: the 422 of request validation (answered by the app's handler with the error object), and
the path parameters' pattern (checked by ``check_stream_id``, which names the rule in its 422).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ID_SCHEMA",
    "BulkOut",
    "ColumnsOut",
    "ErrorOut",
    "HealthOut",
    "LabelOut",
    "PredictionOut",
    "ReadyOut",
    "ResultsOut",
    "StreamListOut",
    "StreamOut",
    "TemplateListOut",
    "TemplateOut",
    "answers",
    "documented_body",
    "errors",
    "inline_schema",
    "truthful_openapi",
]

ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,128}$",
    "description": "1 to 128 characters from A-Z a-z 0-9 . _ : - (not . or .., URL dot-segments)",
}
_ID_PARAMS = ("stream_id", "name")

Number = float | None
Prediction = float | list[float] | None


class _Open(BaseModel):
    """Answers may gain fields: clients ignore the ones they do not know."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    code: str = Field(examples=["invalid_input"])
    message: str = Field(examples=["x: expected 3 values, got 2"])
    field: str | None = Field(examples=["observations[0].x"])
    stream: str | None = Field(examples=["sensor-7"])
    request_id: str | None = Field(default=None, description="On 500s: the X-Request-ID the log names")


class ErrorOut(BaseModel):
    """Every error answer: what went wrong, about which field of which stream."""

    error: ErrorDetail


class ResultOut(_Open):
    step: int
    prediction: Prediction
    loss: Number
    applied: bool
    stream: str | None = None
    forecast: Prediction = None
    warming: bool | None = None
    skipped: Literal["nonfinite"] | None = None
    drift: bool | None = None


class ResultsOut(_Open):
    """One answer per observation, in order: the prediction made before learning, its loss, the step."""

    results: list[ResultOut]
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"results": [{"step": 1, "prediction": 0.0, "loss": 2.25, "applied": True}]}]
        },
    )


class ColumnsOut(_Open):
    """The columnar answer (to a columnar body): one list per field, one entry per row."""

    step: list[int]
    prediction: list[Prediction]
    loss: list[Number]
    applied: list[bool]


class Figures(_Open):
    steps: int
    warming: bool
    drifts: int


class StreamOut(_Open):
    stream: str
    spec: dict[str, Any]
    template: str | None
    figures: Figures
    created_at: float
    updated_at: float


class StreamPutOut(StreamOut):
    outcome: Literal["created", "replaced", "unchanged"]


class BulkOut(_Open):
    """How many of the streams were created, and how many existed with the same spec already."""

    created: int
    unchanged: int


class StreamListOut(_Open):
    streams: list[str]
    next_cursor: str | None


class PredictionOut(_Open):
    stream: str
    prediction: Prediction
    request_id: str | None = None


class LabelOut(ResultOut):
    request_id: str


class TemplateOut(_Open):
    name: str
    prefix: str
    idle_seconds: float
    spec: dict[str, Any]


class TemplatePutOut(TemplateOut):
    outcome: Literal["created", "replaced", "unchanged"]


class TemplateListOut(_Open):
    templates: list[TemplateOut]


class HealthOut(_Open):
    status: Literal["ok"]


class ReadyOut(_Open):
    ready: bool
    checks: dict[str, str] = Field(examples=[{"engine": "up", "store": "up"}])


def inline_schema(kind: Any) -> dict[str, Any]:
    """msgspec's JSON schema with its ``#/$defs/...`` references inlined: they would not resolve inside
    the OpenAPI document, whose root has no ``$defs``."""
    schema = msgspec.json.schema(kind)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


def documented_body(schema: Any, examples: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a body read by hand (msgspec), so FastAPI does not parse it a second time: the
    same schema as JSON or MessagePack (whose columns may also be raw little-endian float buffers)."""
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": schema, "examples": examples},
                "application/msgpack": {"schema": schema},
            },
        }
    }


_WHY = {
    400: "Malformed request",
    404: "Unknown stream, template or request id",
    409: "The stream exists with another spec (replace=true replaces it)",
    413: "Body or observation count over the limits",
    415: "Body neither application/json nor application/msgpack",
    422: "Invalid input: the error names the field and the rule",
    500: "Internal error (logged with the X-Request-ID answered), or a corrupt checkpoint",
    503: "The store is unavailable: nothing was applied; retry after Retry-After seconds",
    507: "The memory budget has no room for another stream of this spec",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error object (500 always)."""
    return {s: {"model": ErrorOut, "description": _WHY[s]} for s in sorted({*statuses, 500})}


def answers(model: type[BaseModel], *statuses: int, created: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``model`` (200, and 201 when ``created``) or the errors."""
    ok: dict[int | str, dict[str, Any]] = {200: {"model": model, "description": "OK"}}
    if created:
        ok[201] = {"model": model, "description": "Created"}
    return {**ok, **errors(*statuses)}


_REFERENCED = (ResultsOut, ColumnsOut)


def truthful_openapi(
    app: FastAPI, extend: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document, with its validation 422s replaced by the error object and the
    id pattern on path parameters; ``extend`` may add more (a security scheme) before it is cached."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for model in _REFERENCED:  # named by $ref in a route's hand-written answer, not as a model
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(js.pop("$defs", {}))
            schemas[model.__name__] = js
        error_ref = {"$ref": "#/components/schemas/ErrorOut"}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") in _ID_PARAMS:
                        parameter["schema"] = dict(ID_SCHEMA)
                invalid = operation.get("responses", {}).get("422")
                if invalid is not None:
                    invalid["content"] = {"application/json": {"schema": error_ref}}
                    invalid["description"] = _WHY[422]
        if extend is not None:
            extend(doc)
        app.openapi_schema = doc
        return doc

    return openapi
