"""Which body formats an endpoint reads, from the request's ``Content-Type``, before any parsing.

Observation, prediction and label bodies are JSON or MessagePack, and say so. Anything else, a missing
content type included, gets a 415: a browser sends ``text/plain`` and form bodies cross-origin without a
CORS preflight, so reading them would let any web page write to a reachable instance.
"""

from __future__ import annotations

from typing import Any, Literal

from trackin.service.errors import UnsupportedMediaType
from trackin.service.transport.wire import decode_json, decode_msgpack

__all__ = ["BODY_TYPES", "BodyFormat", "body_format", "decode_body"]

BodyFormat = Literal["json", "msgpack"]

BODY_TYPES: dict[str, BodyFormat] = {
    "application/json": "json",
    "application/msgpack": "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}
"""Media types read (parameters such as ``charset`` are ignored); the first of each is documented."""


def body_format(content_type: bytes | str | None, *, stream: str | None = None) -> BodyFormat:
    """The format of a body sent with ``content_type``; ``UnsupportedMediaType`` for any other."""
    raw = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    media = (raw or "").split(";", 1)[0].strip().lower()
    found = BODY_TYPES.get(media)
    if found is None:
        sent = f"content type {media!r}" if media else "no content type"
        raise UnsupportedMediaType(
            f"{sent}: send the body as application/json or application/msgpack",
            field="content-type",
            stream=stream,
        )
    return found


def decode_body(raw: bytes, fmt: BodyFormat, kind: Any, *, prefix: str = "") -> Any:
    """Decode and type-check ``raw`` as ``fmt``; ``InvalidInput`` naming the field on any error."""
    if fmt == "msgpack":
        return decode_msgpack(raw, kind, prefix=prefix)
    return decode_json(raw, kind, prefix=prefix)
