"""Stream ids: a small, safe alphabet so ids can be used verbatim in URLs, store keys and metric labels."""

from __future__ import annotations

import re

from trackin.service.errors import InvalidStreamId

__all__ = ["MAX_ID_LENGTH", "TENANT_PATTERN", "check_internal_id", "check_stream_id", "namespace_of"]

MAX_ID_LENGTH = 128
TENANT_PATTERN = r"[a-z0-9][a-z0-9_-]{0,31}"
"""Tenant names: lower case, so ``~Acme/`` and ``~acme/`` can never be two namespaces."""
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INTERNAL = re.compile(rf"(?:~{TENANT_PATTERN}/)?[A-Za-z0-9._:-]{{1,128}}")
_DOT_SEGMENTS = frozenset({".", ".."})


def check_stream_id(value: object, field: str = "stream_id") -> str:
    """Return ``value`` if it is a valid stream id, else raise ``InvalidStreamId`` naming ``field``."""
    # "." and ".." are URL dot-segments: a client resolving /v1/streams/.. would reach another resource
    if not isinstance(value, str) or not _ID.fullmatch(value) or value in _DOT_SEGMENTS:
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise InvalidStreamId(
            f"invalid stream id {shown!r}: 1 to {MAX_ID_LENGTH} characters from A-Z a-z 0-9 . _ : -,"
            " and not . or ..",
            field=field,
        )
    return value


def check_internal_id(value: object, field: str = "stream_id") -> str:
    """An id as the registry and the store hold it: a client's id, qualified by its tenant's namespace
    (``~tenant/id``) unless the tenant is ``default`` (service/security/namespace.py). Clients never send
    these: their ids pass `check_stream_id` at the edge, which refuses ``~`` and ``/``."""
    if (
        isinstance(value, str)
        and value[:1] == "~"
        and _INTERNAL.fullmatch(value)
        and value.rpartition("/")[2] not in _DOT_SEGMENTS
    ):
        return value
    return check_stream_id(value, field)


def namespace_of(internal_id: str) -> str:
    """The namespace prefix of an internal id: ``~tenant/``, or "" for the default tenant's ids."""
    return internal_id[: internal_id.index("/") + 1] if internal_id[:1] == "~" else ""
