"""The security parts as the settings ask for them, and the one rule about starting without keys."""

from __future__ import annotations

import ipaddress

from trackin.service.durability import configured_store
from trackin.service.security.keyring import Keyring
from trackin.service.security.limiter import Limiter
from trackin.service.settings import Settings

__all__ = ["make_keyring", "make_limiter", "refuse_open"]


def make_keyring(settings: Settings) -> Keyring:
    """Keys from the service's store (its own connection), the bootstrap key, and whether keys are
    required (any address but loopback, unless ``insecure``)."""
    return Keyring(
        configured_store(settings),
        settings.key_refresh_seconds,
        settings.bootstrap_key(),
        required=not (_loopback(settings.host) or settings.insecure),
    )


def make_limiter(settings: Settings) -> Limiter | None:
    """None when no rate is limited (the default): nothing on the request path then."""
    if not (settings.rate_limit_per_key or settings.tenant_observations_rate):
        return None
    redis_url = settings.redis_url if settings.store in ("auto", "redis") else None
    return Limiter(
        settings.rate_limit_per_key,
        settings.tenant_observations_rate,
        redis_url,
        timeout=settings.store_timeout_seconds,
    )


def refuse_open(settings: Settings, keyring: Keyring) -> None:
    """Serving with no keys is for one machine only: another address needs keys or ``--insecure``."""
    if keyring.empty and not _loopback(settings.host) and not settings.insecure:
        raise RuntimeError(
            f"refusing to serve {settings.host} without API keys: create one (trackin keys create), set"
            " TRACKIN_BOOTSTRAP_ADMIN_KEY, bind 127.0.0.1, or pass --insecure (TRACKIN_INSECURE=1)"
        )


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
