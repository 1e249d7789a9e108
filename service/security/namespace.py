"""A tenant's view of the ids: its streams and templates are ``~tenant/id`` inside the service.

The ``default`` tenant's ids are used as they are, so stores written before tenants existed load unchanged.
Every other tenant's ids carry the prefix ``~tenant/``; ``~`` and ``/`` are outside the id alphabet clients
may use, so no client id can reach into another namespace, and ``~`` sorts after every client id, so the
default tenant's pages of stream ids end where other namespaces begin. Ids are qualified at the edge (route
handlers, the observation fast path, the WebSocket) and made public again in answers and errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trackin.service.errors import ServiceError
from trackin.service.ids import check_stream_id
from trackin.service.transport.wire import ObservationIn

__all__ = ["ALL_SCOPES", "OPEN", "PRINCIPAL", "Namespace", "Principal", "principal_of"]


@dataclass(frozen=True, slots=True)
class Namespace:
    prefix: str
    """"" for the default tenant, else ``~tenant/``."""

    @classmethod
    def of(cls, tenant: str, default: str = "default") -> Namespace:
        return cls("" if tenant == default else f"~{tenant}/")

    def inside(self, public_id: object, field: str = "stream_id") -> str:
        """The internal id of a client's id (checked: 422 naming ``field`` if invalid)."""
        return self.prefix + check_stream_id(public_id, field)

    def outside(self, internal_id: str) -> str:
        return internal_id[len(self.prefix) :] if self.prefix else internal_id

    def owns(self, internal_id: str) -> bool:
        return internal_id.startswith(self.prefix) if self.prefix else internal_id[:1] != "~"

    def streams(self, ids: list[str], field: str) -> list[str]:
        """A columnar body's stream ids, qualified. ``~`` is refused for every tenant, the default one
        included (it would name another namespace): one pass over the ids, beside the registry's checks."""
        if not self.prefix:
            if "~" in "".join(ids):  # one pass in C; per id only to name the one refused
                for i, s in enumerate(ids):
                    if s[:1] == "~":
                        check_stream_id(s, f"{field}[{i}]")  # raises
            return ids
        return [self.prefix + check_stream_id(s, f"{field}[{i}]") for i, s in enumerate(ids)]

    def items(self, items: Sequence[ObservationIn], field: str) -> None:
        """Qualify the ``stream`` of each observation in place (``field``: ``observations``)."""
        prefix = self.prefix
        for i, item in enumerate(items):
            stream = item.stream
            if stream is None:
                continue
            if prefix:
                item.stream = prefix + check_stream_id(stream, f"{field}[{i}].stream")
            elif stream[:1] == "~":
                check_stream_id(stream, f"{field}[{i}].stream")  # raises

    def public_results(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Row-form answers naming their streams (``{"stream": ...}``) as the client named them."""
        if self.prefix:
            cut = len(self.prefix)
            for result in results:
                result["stream"] = result["stream"][cut:]
        return results

    def public_error(self, exc: ServiceError) -> ServiceError:
        """An error as the client may see it: its own ids, without the namespace."""
        if self.prefix:
            if exc.stream is not None:  # an internal id, or the client's own (named at the edge): as is
                exc.stream = exc.stream.removeprefix(self.prefix)
            exc.message = exc.message.replace(self.prefix, "")
        return exc


ALL_SCOPES = frozenset({"ingest", "read", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a key's tenant and scopes (the open default: every scope of ``default``)."""

    tenant: str
    scopes: frozenset[str]
    key_id: str | None
    namespace: Namespace = field(default_factory=lambda: Namespace(""))


OPEN = Principal("default", ALL_SCOPES, None)

PRINCIPAL = "trackin.principal"
"""The ASGI scope entry the guard sets on every request it lets through."""


def principal_of(scope: Any) -> Principal:
    """The request's principal (``OPEN`` on an app that runs open; the guard sets it otherwise)."""
    found: Principal = scope.get(PRINCIPAL, OPEN)
    return found
