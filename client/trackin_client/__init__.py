"""A small Python client for trackin: REST over httpx (sync and async), WebSocket sessions, batching.

It needs httpx, msgspec and websockets only: installing it pulls in neither torch nor the server.

Example::

    from trackin_client import TrackinClient

    with TrackinClient("http://127.0.0.1:8000") as client:
        client.create_stream("ES", {"model": {"family": "ar", "dim": 1, "lags": 16}})
        [result] = client.observe("ES", {"value": [4321.25]})
"""

from trackin_client._batch import AsyncBatcher, Batcher
from trackin_client._client import AsyncTrackinClient, TrackinClient
from trackin_client._cluster import PartitionMap
from trackin_client._models import DEFAULT_URL, Observation, Result, TrackinError
from trackin_client._ws import AsyncWsSession, WsSession

__all__ = [
    "DEFAULT_URL",
    "AsyncBatcher",
    "AsyncTrackinClient",
    "AsyncWsSession",
    "Batcher",
    "Observation",
    "PartitionMap",
    "Result",
    "TrackinClient",
    "TrackinError",
    "WsSession",
]
__version__ = "0.2.0"
