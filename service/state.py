"""What the lifespan built, handed to route handlers as one ``Annotated`` dependency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, WebSocket

from trackin.models.engine import Engine
from trackin.service.domain.registry import Registry
from trackin.service.domain.scheduler import Scheduler
from trackin.service.durability import Durability
from trackin.service.metrics import Metrics
from trackin.service.security.keyring import Keyring
from trackin.service.security.limiter import Limiter
from trackin.service.security.namespace import Principal, principal_of
from trackin.service.settings import Settings

__all__ = ["AppState", "Caller", "State", "WsState"]


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    scheduler: Scheduler
    registry: Registry
    metrics: Metrics
    durability: Durability | None
    """None when state is kept in memory only (``store = "memory"``)."""
    keyring: Keyring | None = None
    limiter: Limiter | None = None
    """None when no rate is limited."""
    ready: bool = False
    # Open WebSocket handlers, and the signal that makes them answer what they accepted and close (1001).
    websockets: set[asyncio.Task[Any]] = field(default_factory=set)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


async def _state(request: Request) -> AppState:
    state: AppState = request.app.state.trackin
    return state


async def _ws_state(websocket: WebSocket) -> AppState:
    state: AppState = websocket.app.state.trackin
    return state


async def _caller(request: Request) -> Principal:
    return principal_of(request.scope)


State = Annotated[AppState, Depends(_state)]
Caller = Annotated[Principal, Depends(_caller)]
"""Who the request acts for (service/security/guard.py): its tenant's namespace and scopes."""
WsState = Annotated[AppState, Depends(_ws_state)]
