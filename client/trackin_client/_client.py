"""A small Python client for trackin: REST over httpx (sync and async), WebSocket sessions, batching.

Example::

    with TrackinClient("http://127.0.0.1:8000") as client:
        client.create_stream("ES", {"model": {"family": "ar", "dim": 1, "lags": 16}})
        [result] = client.observe("ES", {"value": [4321.25]})
        with client.batcher(size=1000) as batch:  # many observations per request
            for price in prices:
                results = batch.add({"stream": "ES", "value": [price]})  # [] until a batch is sent
        with client.ws(max_in_flight=8) as ws:  # pipelined messages, answers in order
            for results in ws.stream(messages):
                ...

``AsyncTrackinClient`` has the same methods, awaited; its batcher also flushes on a timer. Observations
are mappings as on the wire (``{"x": [...], "y": ...}``, ``{"value": [...]}``, with ``"stream"`` when
several streams share a request); results are the server's per-observation answers (``step``,
``prediction`` made before learning, ``loss``, ``applied``, and for ``ar`` streams ``forecast`` and
``warming``). Every error answer raises :class:`TrackinError` with the server's ``code``, ``message``,
``field`` and ``stream`` and the HTTP status.

Each request is described once, without I/O (``_Call``); the sync and async clients only send it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import httpx
import msgspec

from trackin_client._batch import AsyncBatcher, Batcher
from trackin_client._models import DEFAULT_URL, Observation, Result, TrackinError

if TYPE_CHECKING:
    from trackin_client._ws import AsyncWsSession, WsSession

_JSON = {"content-type": "application/json"}

__all__ = ["AsyncTrackinClient", "TrackinClient"]


def _decode(response: httpx.Response) -> Any:
    """The JSON answer, or ``TrackinError`` for a 4xx/5xx."""
    if response.status_code >= 400:
        try:
            body: Any = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            body = response.text
        raise TrackinError.from_body(body, response.status_code)
    if response.status_code == 204 or not response.content:
        return None
    return msgspec.json.decode(response.content)


def _path(value: str) -> str:
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class _Call:
    """One request, described without I/O, and how to shape its decoded answer."""

    method: str
    path: str
    body: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    shape: Callable[[Any], Any] = lambda answer: answer

    def content(self) -> bytes | None:
        return None if self.body is None else msgspec.json.encode(self.body)


def _results(answer: Any) -> list[Result]:
    results: list[Result] = answer["results"]
    return results


def _create_stream(stream_id: str, spec: Mapping[str, Any], replace: bool) -> _Call:
    params = {"replace": "true"} if replace else {}
    return _Call("PUT", f"/v1/streams/{_path(stream_id)}", dict(spec), params)


def _create_streams(streams: Mapping[str, Mapping[str, Any]]) -> _Call:
    body = {"streams": [{"id": stream_id, "spec": dict(spec)} for stream_id, spec in streams.items()]}
    return _Call("PUT", "/v1/streams", body)


def _observe(stream_id: str, observations: Observation | Sequence[Observation]) -> _Call:
    body = dict(observations) if isinstance(observations, Mapping) else list(observations)
    return _Call("POST", f"/v1/streams/{_path(stream_id)}/observations", body, shape=_results)


def _observe_many(observations: Sequence[Observation]) -> _Call:
    return _Call("POST", "/v1/observations", {"observations": list(observations)}, shape=_results)


def _predict(stream_id: str, x: Sequence[float] | None, request_id: str | None) -> _Call:
    body: dict[str, Any] = {}
    if x is not None:
        body["x"] = list(x)
    if request_id is not None:
        body["request_id"] = request_id
    return _Call("POST", f"/v1/streams/{_path(stream_id)}/predict", body)


def _label(stream_id: str, request_id: str, y: float | Sequence[float]) -> _Call:
    body = {"request_id": request_id, "y": y if isinstance(y, float | int) else list(y)}
    return _Call("POST", f"/v1/streams/{_path(stream_id)}/labels", body)


def _put_template(name: str, prefix: str, spec: Mapping[str, Any], idle_seconds: float) -> _Call:
    body = {"prefix": prefix, "spec": dict(spec), "idle_seconds": idle_seconds}
    return _Call("PUT", f"/v1/templates/{_path(name)}", body)


def _list_page(prefix: str, limit: int, cursor: str | None) -> _Call:
    params: dict[str, Any] = {"prefix": prefix, "limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return _Call("GET", "/v1/streams", params=params)


def _bearer(api_key: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {api_key}"} if api_key else None


def _ws_url(base_url: httpx.URL) -> str:
    scheme = "wss" if base_url.scheme == "https" else "ws"
    return str(base_url.copy_with(scheme=scheme, path=base_url.path.rstrip("/") + "/v1/ws"))


class TrackinClient:
    """Blocking client over one ``httpx.Client`` (connection pooling, keep-alive). Use as a context manager.

    Args:
        url: the service's base URL.
        timeout: seconds for each request.
        http: an ``httpx.Client`` to use instead of creating one (its ``base_url`` must be set).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer`` on every request and WebSocket handshake."""
        self.http = http or httpx.Client(base_url=url, timeout=timeout, headers=_bearer(api_key))
        self._owns_http = http is None
        self._api_key = api_key

    def _send(self, call: _Call) -> Any:
        response = self.http.request(
            call.method, call.path, content=call.content(), params=call.params or None, headers=_JSON
        )
        return call.shape(_decode(response))

    def create_stream(
        self, stream_id: str, spec: Mapping[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        """Create a stream (``outcome`` is ``created``, ``unchanged`` or ``replaced``); 409 if it differs."""
        answer: dict[str, Any] = self._send(_create_stream(stream_id, spec, replace))
        return answer

    def create_streams(self, streams: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Create many streams ({id: spec}, up to 10,000 a call) all or nothing: ``{"created", "unchanged"}``;
        409 if an id exists with another spec (nothing is created then)."""
        answer: dict[str, int] = self._send(_create_streams(streams))
        return answer

    def get_stream(self, stream_id: str) -> dict[str, Any]:
        """The stream's spec and figures (steps, losses, beta, warming, ...)."""
        answer: dict[str, Any] = self._send(_Call("GET", f"/v1/streams/{_path(stream_id)}"))
        return answer

    def delete_stream(self, stream_id: str) -> None:
        self._send(_Call("DELETE", f"/v1/streams/{_path(stream_id)}"))

    def list_streams(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[str]:
        """Every stream id starting with ``prefix``, in order, following the server's cursors."""
        cursor: str | None = None
        while True:
            page = self._send(_list_page(prefix, page_size, cursor))
            yield from page["streams"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def put_template(
        self, name: str, prefix: str, spec: Mapping[str, Any], *, idle_seconds: float = 300.0
    ) -> dict[str, Any]:
        """Streams whose ids start with ``prefix`` are created from ``spec`` on their first observation."""
        answer: dict[str, Any] = self._send(_put_template(name, prefix, spec, idle_seconds))
        return answer

    def delete_template(self, name: str) -> None:
        self._send(_Call("DELETE", f"/v1/templates/{_path(name)}"))

    def observe(self, stream_id: str, observations: Observation | Sequence[Observation]) -> list[Result]:
        """One stream's observation(s), applied in order; one result per observation."""
        results: list[Result] = self._send(_observe(stream_id, observations))
        return results

    def observe_many(self, observations: Sequence[Observation]) -> list[Result]:
        """Observations of several streams (each with ``"stream"``), validated as a whole, then applied."""
        results: list[Result] = self._send(_observe_many(observations))
        return results

    def predict(
        self, stream_id: str, x: Sequence[float] | None = None, *, request_id: str | None = None
    ) -> dict[str, Any]:
        """Predict without learning; with ``request_id`` the inputs are kept for a later :meth:`label`."""
        answer: dict[str, Any] = self._send(_predict(stream_id, x, request_id))
        return answer

    def label(self, stream_id: str, request_id: str, y: float | Sequence[float]) -> Result:
        """Apply the step for an earlier prediction's inputs, now that its label is known."""
        answer: Result = self._send(_label(stream_id, request_id, y))
        return answer

    def batcher(self, size: int = 1000, *, max_delay: float | None = None) -> Batcher:
        return Batcher(self, size, max_delay=max_delay)

    def ws(self, *, max_in_flight: int = 8, binary: bool = True) -> WsSession:
        """A WebSocket session (connects on ``with``): pipelined messages, answers in order."""
        from trackin_client._ws import WsSession

        url = _ws_url(self.http.base_url)
        return WsSession(url, max_in_flight=max_in_flight, binary=binary, api_key=self._api_key)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTrackinClient:
    """:class:`TrackinClient` for asyncio, over one ``httpx.AsyncClient``; every method is awaited."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = http or httpx.AsyncClient(base_url=url, timeout=timeout, headers=_bearer(api_key))
        self._owns_http = http is None
        self._api_key = api_key

    async def _send(self, call: _Call) -> Any:
        response = await self.http.request(
            call.method, call.path, content=call.content(), params=call.params or None, headers=_JSON
        )
        return call.shape(_decode(response))

    async def create_stream(
        self, stream_id: str, spec: Mapping[str, Any], *, replace: bool = False
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_create_stream(stream_id, spec, replace))
        return answer

    async def create_streams(self, streams: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        answer: dict[str, int] = await self._send(_create_streams(streams))
        return answer

    async def get_stream(self, stream_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_Call("GET", f"/v1/streams/{_path(stream_id)}"))
        return answer

    async def delete_stream(self, stream_id: str) -> None:
        await self._send(_Call("DELETE", f"/v1/streams/{_path(stream_id)}"))

    async def list_streams(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[str]:
        cursor: str | None = None
        while True:
            page = await self._send(_list_page(prefix, page_size, cursor))
            for stream_id in page["streams"]:
                yield stream_id
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def put_template(
        self, name: str, prefix: str, spec: Mapping[str, Any], *, idle_seconds: float = 300.0
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_put_template(name, prefix, spec, idle_seconds))
        return answer

    async def delete_template(self, name: str) -> None:
        await self._send(_Call("DELETE", f"/v1/templates/{_path(name)}"))

    async def observe(
        self, stream_id: str, observations: Observation | Sequence[Observation]
    ) -> list[Result]:
        results: list[Result] = await self._send(_observe(stream_id, observations))
        return results

    async def observe_many(self, observations: Sequence[Observation]) -> list[Result]:
        results: list[Result] = await self._send(_observe_many(observations))
        return results

    async def predict(
        self, stream_id: str, x: Sequence[float] | None = None, *, request_id: str | None = None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_predict(stream_id, x, request_id))
        return answer

    async def label(self, stream_id: str, request_id: str, y: float | Sequence[float]) -> Result:
        answer: Result = await self._send(_label(stream_id, request_id, y))
        return answer

    def batcher(self, size: int = 1000, *, max_delay: float = 0.05) -> AsyncBatcher:
        return AsyncBatcher(self, size, max_delay=max_delay)

    def ws(self, *, max_in_flight: int = 8, binary: bool = True) -> AsyncWsSession:
        from trackin_client._ws import AsyncWsSession

        url = _ws_url(self.http.base_url)
        return AsyncWsSession(url, max_in_flight=max_in_flight, binary=binary, api_key=self._api_key)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
