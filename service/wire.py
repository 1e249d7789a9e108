"""Wire formats of the observation hot path, decoded with msgspec straight into typed structs.

msgspec checks types and unknown fields while it parses (JSON or MessagePack), far faster than building
pydantic models per item; its error messages carry the JSON path of the offending value (``$[3].x[1]``),
which becomes the ``field`` of the 422 answer. Specs and other control-plane bodies use pydantic instead.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import InvalidInput

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


class ObservationIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One observation: ``x``/``y`` for linear and mlp streams, ``value`` for ar streams."""

    stream: str | None = None
    x: list[float] | None = None
    y: float | list[float] | None = None
    value: list[float] | float | None = None
    ts: float | None = None


class ObservationsBody(msgspec.Struct, forbid_unknown_fields=True):
    observations: list[ObservationIn]


class WsMessage(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    observations: list[ObservationIn]


class PredictIn(msgspec.Struct, forbid_unknown_fields=True):
    x: list[float] | None = None
    request_id: str | None = None


class LabelIn(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    y: float | list[float]


def _path_field(message: str, prefix: str) -> str | None:
    """The JSON path msgspec reports (``... - at `$.x[1]```), rebased on ``prefix``."""
    marker = "- at `$"
    at = message.rfind(marker)
    if at < 0:
        return prefix or None
    path = message[at + len(marker) : -1].lstrip(".")
    if prefix and path.startswith("["):
        return prefix + path
    return f"{prefix}.{path}" if prefix and path else (path or prefix or None)


def decode_json(data: bytes | str, kind: type[T] | Any, *, prefix: str = "") -> T:
    """Decode and type-check; raise ``InvalidInput`` naming the field on any error."""
    try:
        return msgspec.json.decode(data, type=kind)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidInput(message.split(" - at ")[0], field=_path_field(message, prefix)) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", field=prefix or "body") from None


def decode_msgpack(data: bytes, kind: type[T] | Any, *, prefix: str = "") -> T:
    try:
        return msgspec.msgpack.decode(data, type=kind)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidInput(message.split(" - at ")[0], field=_path_field(message, prefix)) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed MessagePack: {exc}", field=prefix or "body") from None


def encode_json(value: Any) -> bytes:
    return msgspec.json.encode(value)
