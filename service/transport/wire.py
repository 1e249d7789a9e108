"""Wire formats of the observation hot path, decoded with msgspec straight into typed structs.

msgspec checks types and unknown fields while it parses (JSON or MessagePack), far faster than building
pydantic models per item; its error messages carry the JSON path of the offending value (``$[3].x[1]``),
which becomes the ``field`` of the 422 answer. Specs and other control-plane bodies use pydantic instead.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec

from trackin.service.errors import InvalidInput

__all__ = [
    "LabelIn",
    "ObservationIn",
    "ObservationsBody",
    "PredictIn",
    "WsMessage",
    "decode_json",
    "decode_msgpack",
    "encode_json",
]

T = TypeVar("T")


class ObservationIn(msgspec.Struct, forbid_unknown_fields=True, gc=False, omit_defaults=True):
    """One observation: ``x``/``y`` for linear and mlp streams, ``value`` for ar streams."""

    stream: str | None = None
    x: list[float] | None = None
    y: float | list[float] | None = None
    value: list[float] | float | None = None
    ts: float | None = None


class ObservationsBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    observations: list[ObservationIn]


class WsMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    seq: int
    observations: list[ObservationIn]


MAX_REQUEST_ID = 256
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REQUEST_ID)]
"""Kept with the inputs until the label comes: bounded, like stream ids."""


class PredictIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    x: list[float] | None = None
    request_id: RequestId | None = None


class LabelIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    request_id: RequestId
    y: float | list[float]


_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]+)`")


def _path_field(message: str, prefix: str) -> str | None:
    """The JSON path msgspec reports (``... - at `$.x[1]```), rebased on ``prefix``; for an unknown or
    missing field, the path of that field (``observations[0].z``) rather than of its object."""
    marker = "- at `$"
    at = message.rfind(marker)
    path = message[at + len(marker) : -1].lstrip(".") if at >= 0 else ""
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named[1]}" if path else named[1]
    if prefix and path.startswith("["):
        return prefix + path
    return f"{prefix}.{path}" if prefix and path else (path or prefix or None)


_ITEM = re.compile(r"^observations\[(\d+)\]")


def _invalid(message: str, prefix: str, loose: Callable[[], Any]) -> InvalidInput:
    """The error for a type check that failed at msgspec's path; names the item's ``stream`` when the
    body still parses without types (a bool or a string where a number belongs, an unknown field)."""
    field = _path_field(message, prefix)
    stream = None
    item = _ITEM.match(field or "")
    if item:
        with contextlib.suppress(Exception):
            body = loose()
            items = body["observations"] if isinstance(body, dict) else body
            found = items[int(item[1])].get("stream")
            stream = found if isinstance(found, str) else None
    return InvalidInput(message.split(" - at ")[0], field=field, stream=stream)


def decode_json(data: bytes | str, kind: type[T] | Any, *, prefix: str = "") -> T:
    """Decode and type-check; raise ``InvalidInput`` naming the field on any error."""
    return _decode(msgspec.json.decode, "JSON", data, kind, prefix)  # type: ignore[no-any-return]


def decode_msgpack(data: bytes, kind: type[T] | Any, *, prefix: str = "") -> T:
    return _decode(msgspec.msgpack.decode, "MessagePack", data, kind, prefix)  # type: ignore[no-any-return]


def _decode(decode: Any, format_name: str, data: bytes | str, kind: Any, prefix: str) -> Any:
    try:
        return decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), prefix, lambda: decode(data)) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed {format_name}: {exc}", field="body") from None


def encode_json(value: Any) -> bytes:
    return msgspec.json.encode(value)
