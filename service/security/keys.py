"""API keys: ``trk_<id>_<secret>``, kept in the store as the SHA-256 of the secret, never in plain text.

The id (12 hex characters) is not secret and names the key's store record, so a presented key is found
with one dictionary lookup; its secret's digest is then compared with `hmac.compare_digest`. SHA-256, not
a slow password hash, is enough: the secret is 32 random bytes, not something a person chose. The record
is one of the store's control-plane records (kind ``api_keys``), so every backend holds keys unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from trackin.service.ids import TENANT_PATTERN

__all__ = [
    "BOOTSTRAP_ID",
    "DEFAULT_TENANT",
    "KEY_KIND",
    "SCOPES",
    "ApiKey",
    "bootstrap_key",
    "check_scopes",
    "check_tenant",
    "digest",
    "new_key",
    "split_key",
]

KEY_KIND = "api_keys"
SCOPES = ("ingest", "read", "admin")
DEFAULT_TENANT = "default"
BOOTSTRAP_ID = "bootstrap"
"""The id of the admin key set up from ``TRACKIN_BOOTSTRAP_ADMIN_KEY`` (any string of 32+ characters)."""
MIN_BOOTSTRAP_LENGTH = 32

_TENANT = re.compile(TENANT_PATTERN)
_KEY = re.compile(r"trk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    scopes: frozenset[str]
    digest: str
    """Hex SHA-256 of the secret."""
    created_at: float

    def record(self) -> dict[str, Any]:
        """The store record (no secret in it)."""
        return {
            "tenant": self.tenant,
            "scopes": sorted(self.scopes),
            "sha256": self.digest,
            "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, key_id: str, value: dict[str, Any]) -> ApiKey:
        return cls(
            key_id,
            check_tenant(value["tenant"]),
            frozenset(check_scopes(value["scopes"])),
            str(value["sha256"]),
            float(value["created_at"]),
        )

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of digests (the digest's length is public, the secret's is not)."""
        return hmac.compare_digest(self.digest, digest(secret))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise ValueError(f"Invalid tenant {tenant!r}: 1 to 32 of a-z 0-9 _ -, first a letter or digit")
    return tenant


def check_scopes(scopes: object) -> list[str]:
    if not isinstance(scopes, list | tuple | set | frozenset) or not scopes:
        raise ValueError(f"Invalid scopes {scopes!r}: one or more of {', '.join(SCOPES)}")
    unknown = sorted(str(s) for s in scopes if s not in SCOPES)
    if unknown:
        raise ValueError(f"Invalid scopes {unknown}: each one of {', '.join(SCOPES)}")
    return sorted(str(s) for s in scopes)


def new_key(tenant: str, scopes: list[str]) -> tuple[str, ApiKey]:
    """A fresh key: the token to hand out (shown once) and the record to store."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(key_id, check_tenant(tenant), frozenset(check_scopes(scopes)), digest(secret), time.time())
    return f"trk_{key_id}_{secret}", key


def split_key(token: str) -> tuple[str, str]:
    """``(key id, secret)`` of a presented token; a token of another shape is tried as the bootstrap key."""
    parsed = _KEY.fullmatch(token)
    return (parsed[1], parsed[2]) if parsed else (BOOTSTRAP_ID, token)


def bootstrap_key(token: str) -> ApiKey:
    """The ``default`` tenant's admin key an operator provisions from a secret (compose, k8s)."""
    if len(token) < MIN_BOOTSTRAP_LENGTH:
        raise ValueError(f"the bootstrap admin key must have at least {MIN_BOOTSTRAP_LENGTH} characters")
    key_id, secret = split_key(token)
    return ApiKey(key_id, DEFAULT_TENANT, frozenset(SCOPES), digest(secret), time.time())
