"""The service's errors and the one place that maps them to HTTP statuses.

::

    ServiceError                    code                 status
    ├── InvalidInput                invalid_input        422
    │   ├── InvalidStreamId         invalid_stream_id    422
    │   └── StreamTooLarge          stream_too_large     422
    ├── Unauthorized                unauthorized         401 (with WWW-Authenticate: Bearer)
    ├── Forbidden                   forbidden            403
    ├── UnknownStream               unknown_stream       404
    ├── UnknownRequest              unknown_request      404
    ├── SpecConflict                spec_conflict        409
    ├── PayloadTooLarge             payload_too_large    413
    ├── UnsupportedMediaType        unsupported_media_type 415
    ├── RateLimited                 rate_limited         429 (with Retry-After)
    ├── OverBudget                  memory_budget        507
    │   └── OverQuota               tenant_quota         507
    ├── Unavailable                 unavailable          503 (with Retry-After)
    ├── StreamCorrupt               corrupt_checkpoint   500
    └── InternalError               internal_error       500 (a bug: logged with its traceback)

Every error carries the ``field`` it is about (a JSON path such as ``observations[3].x``) and, where one is
involved, the stream id; the body is always ``{"error": {"code", "message", "field", "stream"}}`` (a 500's
also carries ``request_id``, the ``X-Request-ID`` its log lines name).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Forbidden",
    "InternalError",
    "InvalidInput",
    "InvalidStreamId",
    "OverBudget",
    "OverQuota",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceError",
    "SpecConflict",
    "StreamCorrupt",
    "StreamTooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownRequest",
    "UnknownStream",
    "UnsupportedMediaType",
    "error_body",
    "error_headers",
]


class ServiceError(Exception):
    """Root of the service's errors; ``status`` is the HTTP status, mapped here and nowhere else."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None, stream: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.stream = stream

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.field, self.stream)


class InvalidInput(ServiceError):
    code = "invalid_input"
    status = 422


class InvalidStreamId(InvalidInput):
    code = "invalid_stream_id"


class StreamTooLarge(InvalidInput):
    code = "stream_too_large"


class OverBudget(ServiceError):
    """The memory budget has no room for another stream of this spec: delete streams or raise the budget."""

    code = "memory_budget"
    status = 507


class OverQuota(OverBudget):
    """The tenant's quota (streams or bytes) has no room: delete some of its streams or raise the quota."""

    code = "tenant_quota"


class Unauthorized(ServiceError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"
    status = 401


class Forbidden(ServiceError):
    """A valid key without the scope the operation needs (or an Origin not allowed)."""

    code = "forbidden"
    status = 403


class RateLimited(ServiceError):
    """The key's or the tenant's rate is used up: retry after ``retry_after`` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UnknownStream(ServiceError):
    code = "unknown_stream"
    status = 404


class UnknownRequest(ServiceError):
    code = "unknown_request"
    status = 404


class SpecConflict(ServiceError):
    code = "spec_conflict"
    status = 409


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(ServiceError):
    """A body without a content type the endpoint reads: a browser's form or text/plain post is refused
    before it is parsed, so a web page cannot write to a reachable instance without a CORS preflight."""

    code = "unsupported_media_type"
    status = 415


class Unavailable(ServiceError):
    """A dependency (the store) is down: nothing was applied; retry after ``retry_after`` seconds."""

    code = "unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class StreamCorrupt(ServiceError):
    code = "corrupt_checkpoint"
    status = 500


class InternalError(ServiceError):
    """An unexpected exception: answered with the error schema and the request id, logged with both."""

    code = "internal_error"
    status = 500


def error_body(
    code: str, message: str, field: str | None = None, stream: str | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "stream": stream}}


def error_headers(exc: ServiceError) -> dict[str, str]:
    """The headers an error's answer carries: when to retry (503, 429), how to authenticate (401)."""
    if isinstance(exc, Unavailable | RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="trackin"'}
    return {}
