"""The client's data: observations and results as on the wire, and the error every failure raises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_URL", "Observation", "Result", "TrackinError"]

Observation = Mapping[str, Any]
"""An observation as on the wire: ``x``/``y`` (linear, mlp) or ``value`` (ar); optional ``stream``, ``ts``."""
Result = dict[str, Any]
"""One observation's answer: ``step``, ``prediction``, ``loss``, ``applied`` (+ ``forecast``, ``warming``)."""

DEFAULT_URL = "http://127.0.0.1:8000"


class TrackinError(Exception):
    """An error answer: the server's ``{"error": {code, message, field, stream}}`` and the HTTP status.

    ``status`` is None for errors that arrive on a WebSocket (or when the connection itself failed).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        field: str | None = None,
        stream: str | None = None,
    ) -> None:
        where = ", ".join(f"{k}={v}" for k, v in (("field", field), ("stream", stream)) if v)
        head = f"{status} {code}" if status is not None else code
        super().__init__(f"{head}: {message}" + (f" ({where})" if where else ""))
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.stream = stream

    @classmethod
    def from_body(cls, body: Any, status: int | None = None) -> TrackinError:
        """From an error body; anything else becomes code ``http_error`` with the body as the message."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls("http_error", str(body)[:500], status=status)
        return cls(
            str(error.get("code", "error")),
            str(error.get("message", "")),
            status=status,
            field=error.get("field"),
            stream=error.get("stream"),
        )
