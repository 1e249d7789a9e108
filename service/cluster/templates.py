"""Templates in cluster mode: kept in a JetStream key-value bucket, mirrored by every replica, and carried
by each logged write that may create a stream from one.

A template is a key of the ``templates`` bucket (its internal name, hex-encoded: KV keys take few
characters). ``PUT`` and ``DELETE`` are compare-and-set on the key's revision, so concurrent changes
through different replicas are decided in one order, with single-node's outcomes; each replica mirrors the
bucket with a watch (every change within milliseconds; its own changes before it answers them).

Replaying a partition must apply exactly what its first owner applied, whatever the templates are by
then: so the front puts the template that matches each stream a write names into the message itself
(`TEMPLATES`, JSON), and the owner creates a stream it does not have from the template the message
carries, never from its own mirror. A stream created so is checkpointed at once at the position just
before the message, so a restore replays the message's observations onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from trackin.models.specs import StreamSpec
from trackin.service.cluster.jetstream import NATS_ERRORS
from trackin.service.domain.catalog import Catalog, Template
from trackin.service.errors import Unavailable, UnknownStream
from trackin.service.tasks import stop_task

__all__ = ["TEMPLATES", "TemplateBook", "carried", "template_json"]

log = logging.getLogger("trackin.cluster")

TEMPLATES = "Trackin-Templates"
"""On a logged write (and its check): ``{"streams": {stream: name}, "templates": {name: template}}``, the
template the front matched to each stream the write names."""
_SYNC_SECONDS = 1.0
_CHECK_SECONDS = 1.0


def template_json(template: Template) -> dict[str, Any]:
    return {
        "name": template.name,
        "prefix": template.prefix,
        "spec": template.spec.model_dump(mode="json"),
        "idle_seconds": template.idle_seconds,
    }


def _template(raw: dict[str, Any]) -> Template:
    spec = StreamSpec.model_validate(raw["spec"])
    return Template(raw["name"], raw["prefix"], spec, float(raw["idle_seconds"]))


def carried(headers: dict[str, str]) -> dict[str, Template]:
    """The templates a message carries, by the stream each one is for."""
    raw = headers.get(TEMPLATES)
    if not raw:
        return {}
    body = orjson.loads(raw)
    templates = {name: _template(t) for name, t in body["templates"].items()}
    return {stream: templates[name] for stream, name in body["streams"].items()}


def _key(name: str) -> str:
    return "t" + name.encode().hex()


class TemplateBook:
    """The cluster's templates: written with compare-and-set, mirrored here by a watch."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._mirror = Catalog()  # its templates only
        self._index: _PrefixIndex | None = None
        self._revision = 0
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="trackin-templates")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
                try:
                    await self._follow(watcher)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
                log.warning("template mirror behind the bucket; watching again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS went away: watch again (the mirror replaces what it knew)
                log.warning("template watch failed (%s); watching again", exc)
                await asyncio.sleep(0.5)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        """Apply the watch's updates; return when the mirror stayed behind the bucket for two quiet
        checks in a row (a watch whose consumer NATS lost in a restart delivers nothing more)."""
        behind = False
        while True:
            try:
                entry = await watcher.updates(timeout=_CHECK_SECONDS)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                entry = None
                last = await self._last()
                if last > self._revision and behind:
                    return
                behind = last > self._revision
            if entry is not None:
                self._apply(entry)

    async def _last(self) -> int:
        """The bucket's last revision (a change or a deletion)."""
        status = await self._kv.status()
        return int(status.stream_info.state.last_seq)

    async def _reload(self) -> None:
        """Read every template from the bucket (the watch is late): the mirror as the bucket is now."""
        last = await self._last()
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        mirror = Catalog()
        for key in keys:
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.NotFoundError:
                continue
            if entry.value:
                mirror.put_template(_template(orjson.loads(entry.value)))
        self._mirror, self._revision = mirror, max(self._revision, last)
        self._index = None

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            name = bytes.fromhex(entry.key[1:]).decode()
            self._mirror.remove_template(name)
        elif entry.value:
            self._mirror.put_template(_template(orjson.loads(entry.value)))
        self._index = None
        self._revision = max(self._revision, int(entry.revision or 0))
        self._moved.set()
        self._moved = asyncio.Event()

    async def _until(self, revision: int) -> None:
        """Until the mirror applied ``revision`` (or a couple of seconds passed: the watch is late)."""
        deadline = asyncio.get_running_loop().time() + _SYNC_SECONDS
        while self._revision < revision:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)

    # ----- what the routes call ---------------------------------------------------------------------------

    async def put(self, template: Template) -> str:
        """Create or replace; ``created``, ``unchanged`` or ``replaced``, as single-node answers."""
        key, value = _key(template.name), orjson.dumps(template_json(template))
        with _unavailable():
            while True:
                try:
                    entry = await self._kv.get(key)
                except nats.js.errors.NotFoundError:
                    entry = None
                old = _template(orjson.loads(entry.value)) if entry is not None and entry.value else None
                if old == template:
                    return "unchanged"
                try:
                    if entry is None:
                        revision = await self._kv.create(key, value)
                    else:
                        revision = await self._kv.update(key, value, last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # changed through another replica meanwhile: decide again
                await self._until(revision)
                return "created" if old is None else "replaced"

    async def delete(self, name: str) -> None:
        key = _key(name)
        with _unavailable():
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.NotFoundError:
                entry = None
            if entry is None:
                raise UnknownStream(f"unknown template {name!r}", field="name")
            try:
                await self._kv.delete(key, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise UnknownStream(f"unknown template {name!r}", field="name") from None
            await self._until(await self._last())

    async def templates(self) -> list[Template]:
        """Every template, as the bucket holds them now (the mirror caught up with its last change, or read
        again from the bucket if the watch is late)."""
        with _unavailable():
            last = await self._last()
            await self._until(last)
            if self._revision < last:
                await self._reload()
        return self._mirror.templates()

    def template(self, name: str) -> Template | None:
        """The template of that name as mirrored here now (the idle sweep's reading; no bucket read)."""
        return self._mirror.template(name)

    def matching(self, streams: Iterable[str]) -> dict[str, Template]:
        """The template each of ``streams`` would be created from, for those some template matches."""
        index = self._prefixes()
        if not index.lengths:
            return {}
        return {s: t for s in dict.fromkeys(streams) if (t := index.match(s)) is not None}

    def _prefixes(self) -> _PrefixIndex:
        if self._index is None:
            self._index = _PrefixIndex(self._mirror.templates())
        return self._index

    def header(self, streams: Iterable[str]) -> dict[str, str]:
        """The `TEMPLATES` header for a write naming ``streams`` (none if no template matches any)."""
        index = self._prefixes()
        if not index.lengths:
            return {}
        matched: dict[str, str] = {}
        used: dict[str, dict[str, Any]] = {}
        for stream in dict.fromkeys(streams):
            template = index.match(stream)
            if template is not None:
                matched[stream] = template.name
                used.setdefault(template.name, index.as_json[template.name])
        if not matched:
            return {}
        return {TEMPLATES: orjson.dumps({"streams": matched, "templates": used}).decode()}


class _PrefixIndex:
    """`Catalog.template_for` in a few dict lookups per stream (one per distinct prefix length), not one
    comparison per template: the front matches every stream of every write."""

    def __init__(self, templates: Iterable[Template]) -> None:
        best: dict[str, Template] = {}
        for template in templates:  # one prefix, several templates: the greatest name, as single-node
            held = best.get(template.prefix)
            if held is None or template.name > held.name:
                best[template.prefix] = template
        self.by_prefix = best
        self.lengths = sorted({len(prefix) for prefix in best}, reverse=True)
        self.as_json = {t.name: template_json(t) for t in best.values()}

    def match(self, stream: str) -> Template | None:
        """The template whose prefix is the longest match for ``stream``."""
        for length in self.lengths:
            if length <= len(stream) and (template := self.by_prefix.get(stream[:length])) is not None:
                return template
        return None


@contextlib.contextmanager
def _unavailable() -> Any:
    try:
        yield
    except NATS_ERRORS as exc:
        if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError | nats.js.errors.NotFoundError):
            raise
        raise Unavailable(
            f"templates unavailable ({type(exc).__name__}), nothing changed", retry_after=1
        ) from None
