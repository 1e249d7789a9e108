"""The security part of the OpenAPI document: the bearer scheme, and the refusals the guard answers on every
operation it guards (service/security/guard.py), with trackin's error object.

Security is listed as optional (``{}`` beside ``bearer``): bound to loopback with no keys configured, the
service runs open as the tenant ``default`` (README, "Security model").
"""

from __future__ import annotations

from typing import Any

from trackin.service.security.guard import public_path

__all__ = ["document_security"]

_REFUSALS = {
    "401": "No API key, or an unknown or revoked one (WWW-Authenticate: Bearer)",
    "403": "The key lacks the scope this operation needs (ingest, read or admin), or a foreign Origin",
    "429": "The key's request rate or its tenant's observation rate is spent: retry after Retry-After",
    "503": "The keys could not be read yet, or the store is unavailable: retry after Retry-After seconds",
}


def document_security(doc: dict[str, Any]) -> None:
    """``truthful_openapi``'s ``extend``: the bearer scheme, and 401/403/429/503 on guarded operations."""
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `trackin keys create` (scopes: ingest, read, admin)",
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, operations in doc.get("paths", {}).items():
        if public_path(path):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}, {}]
            responses = operation.setdefault("responses", {})
            for status, why in _REFUSALS.items():
                responses.setdefault(status, {"description": why, "content": error})
