"""The Redis store's Lua scripts, each behind a typed call.

A script makes a compare and a write one atomic step on the server (fencing), or a whole batch one
command (appends). Each script's KEYS and ARGV are documented next to its source, and the wrapper
that fills them sits right after, so the two cannot drift apart. Key names come from `RedisKeys`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import orjson
import redis.asyncio
import redis.exceptions

from trackin.service.store.base import Checkpoint, LogEntry
from trackin.service.store.keys import RedisKeys
from trackin.service.store.redis_replies import reply_bytes, reply_text

__all__ = [
    "APPEND_LUA",
    "DELETE_LUA",
    "READ_CHECKPOINTS_LUA",
    "READ_LOGS_LUA",
    "TRIM_BATCHES_LUA",
    "WRITE_LUA",
    "RedisScripts",
]

# KEYS: stream index, then one checkpoint hash per checkpoint. ARGV: six per checkpoint, in KEYS' order:
# id, epoch, step, log_position, meta, tensors. Returns 1 (stored) or 0 (refused as stale) per checkpoint.
# Many checkpoints are one command: with appendfsync always, Redis syncs its AOF once per command batch it
# reads, so a pipeline of one script call per checkpoint paid a sync every few dozen checkpoints.
WRITE_LUA = """
local out = {}
for i = 2, #KEYS do
  local a = (i - 2) * 6
  local epoch, step = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cur = redis.call('HMGET', KEYS[i], 'epoch', 'step', 'deleted')
  local fresh = 1
  if cur[1] then
    local stored_epoch, stored_step = tonumber(cur[1]), tonumber(cur[2])
    if cur[3] == '1' then
      if epoch < stored_epoch then fresh = 0 end
    elseif epoch < stored_epoch or (epoch == stored_epoch and step <= stored_step) then
      fresh = 0
    end
  end
  if fresh == 1 then
    redis.call('HSET', KEYS[i], 'epoch', ARGV[a + 2], 'step', ARGV[a + 3], 'log_position', ARGV[a + 4],
               'meta', ARGV[a + 5], 'tensors', ARGV[a + 6], 'deleted', '0')
    redis.call('ZADD', KEYS[1], 0, ARGV[a + 1])
  end
  out[#out + 1] = fresh
end
return out
"""

_WRITE_PAGE = 512
_WRITE_PAGE_BYTES = 8 * 2**20
"""Checkpoints per write command: at most this many, and about this many bytes of tensors."""


# KEYS: checkpoint hash, stream index, log stream, log index. ARGV: id, epoch.
DELETE_LUA = """
local stored = redis.call('HGET', KEYS[1], 'epoch')
if stored and tonumber(stored) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'step', '0', 'deleted', '1')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: log index, then one log stream per entry. ARGV: the entries' stream ids joined by newlines (not in
# the id alphabet), their payloads as one MessagePack array (raw strings: Redis 7.0 cmsgpack has no bin
# type). Returns the new positions joined by commas:
# three arguments and one reply instead of thousands, which is what an append of a large batch costs.
APPEND_LUA = """
local ids = {}
for id in string.gmatch(ARGV[1], '[^\\n]+') do ids[#ids + 1] = id end
local payloads = cmsgpack.unpack(ARGV[2])
local n = #KEYS - 1
if #ids ~= n or #payloads ~= n then
  return redis.error_reply('append: ' .. n .. ' keys, ' .. #ids .. ' ids, ' .. #payloads .. ' payloads')
end
for i = 1, n, 500 do
  redis.call('SADD', KEYS[1], unpack(ids, i, math.min(i + 499, n)))
end
local positions = {}
for i = 1, n do
  positions[i] = redis.call('XADD', KEYS[i + 1], '*', 'p', payloads[i])
end
return table.concat(positions, ',')
"""

# KEYS: the batch log. ARGV: an owner epoch, the last entry id to drop. Drops that owner's entries up to
# it (XTRIM cannot: the log holds other owners' entries too), a page at a time; returns how many.
TRIM_BATCHES_LUA = """
local dropped, low = 0, '-'
while true do
  local page = redis.call('XRANGE', KEYS[1], low, ARGV[2], 'COUNT', 500)
  local ids = {}
  for _, entry in ipairs(page) do
    local fields = entry[2]
    for k = 1, #fields, 2 do
      if fields[k] == 'e' and fields[k + 1] == ARGV[1] then ids[#ids + 1] = entry[1] end
    end
  end
  if #ids > 0 then
    redis.call('XDEL', KEYS[1], unpack(ids))
    dropped = dropped + #ids
  end
  if #page < 500 then return dropped end
  low = '(' .. page[#page][1]
end
"""

# Reads of many streams are one command each, instead of one per stream, which is what a restore of
# 100,000 streams spends most of its store time on. Checkpoints come back as a plain nested reply, which
# hiredis (a dependency) parses in C: cheaper on both sides than packing them into one MessagePack string
# in Lua and unpacking it here (about 16 against 24 ms of CPU per 1,000 checkpoints, both processes).
# Log tails stay MessagePack: without hiredis' help for their many small entries, it was the cheaper one.

# KEYS: checkpoint hashes. Returns per key its HMGET of the checkpoint fields (nil: none).
READ_CHECKPOINTS_LUA = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'epoch', 'step', 'log_position', 'meta', 'tensors', 'deleted')
end
return out
"""

# KEYS: log streams. ARGV[1]: entries per key at most; ARGV[i + 1]: the XRANGE start of KEYS[i]. Returns
# MessagePack: per key, its entries as a flat array of position, payload, position, payload, ...
READ_LOGS_LUA = """
local out = {}
for i = 1, #KEYS do
  local flat = {}
  for _, entry in ipairs(redis.call('XRANGE', KEYS[i], ARGV[i + 1], '+', 'COUNT', ARGV[1])) do
    local fields, payload = entry[2], nil
    for k = 1, #fields, 2 do
      if fields[k] == 'p' then payload = fields[k + 1] end
    end
    if not payload then return redis.error_reply('log entry ' .. entry[1] .. ' has no payload') end
    flat[#flat + 1] = entry[1]
    flat[#flat + 1] = payload
  end
  out[i] = flat
end
return cmsgpack.pack(out)
"""


def _pages(checkpoints: Sequence[Checkpoint]) -> list[Sequence[Checkpoint]]:
    pages: list[Sequence[Checkpoint]] = []
    start, size = 0, 0
    for i, c in enumerate(checkpoints):
        if i > start and (i - start >= _WRITE_PAGE or size + len(c.tensors) > _WRITE_PAGE_BYTES):
            pages.append(checkpoints[start:i])
            start, size = i, 0
        size += len(c.tensors)
    if start < len(checkpoints):
        pages.append(checkpoints[start:])
    return pages


class RedisScripts:
    """The three scripts registered on one client; redis-py errors pass through for the store to map."""

    def __init__(self, client: redis.asyncio.Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._write = client.register_script(WRITE_LUA)
        self._delete = client.register_script(DELETE_LUA)
        self._append = client.register_script(APPEND_LUA)
        self._read_checkpoints = client.register_script(READ_CHECKPOINTS_LUA)
        self._read_logs = client.register_script(READ_LOGS_LUA)
        self._trim_batches = client.register_script(TRIM_BATCHES_LUA)

    async def trim_batches(self, epoch: int, upto: str) -> None:
        """Drop owner ``epoch``'s batch-log entries up to the entry id ``upto``."""
        await self._trim_batches(keys=[self._keys.batches], args=[epoch, upto])

    async def write_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        """Run the fenced write, one command per page of checkpoints; True where it was stored."""
        stored: list[bool] = []
        for page in _pages(checkpoints):
            keys = [self._keys.stream_index, *(self._keys.checkpoint(c.stream_id) for c in page)]
            args: list[str | int | bytes] = []
            for c in page:
                args += [c.stream_id, c.epoch, c.step, c.log_position, orjson.dumps(c.meta), c.tensors]
            replies = await self._write(keys=keys, args=args)
            stored += [reply == 1 for reply in replies]
        return stored

    async def delete_stream(self, stream_id: str, epoch: int) -> bool:
        """Fenced delete leaving a tombstone at ``epoch``; False when a newer epoch is stored."""
        keys = [
            self._keys.checkpoint(stream_id),
            self._keys.stream_index,
            self._keys.log(stream_id),
            self._keys.log_index,
        ]
        return bool(await self._delete(keys=keys, args=[stream_id, epoch]))

    async def append_log(self, entries: Sequence[LogEntry]) -> list[str]:
        """Append a non-empty batch atomically in one command; the new positions, in order."""
        keys = [self._keys.log_index, *(self._keys.log(e.stream_id) for e in entries)]
        args = [
            "\n".join(e.stream_id for e in entries),
            msgpack.packb([e.payload for e in entries], use_bin_type=False),
        ]
        return reply_text(await self._append(keys=keys, args=args)).split(",")

    async def read_checkpoints(self, stream_ids: Sequence[str]) -> list[list[bytes | None]]:
        """The checkpoint fields of each stream (`CHECKPOINT_FIELDS` order, None where missing)."""
        keys = [self._keys.checkpoint(s) for s in stream_ids]
        replies = await self._read_checkpoints(keys=keys)
        if not isinstance(replies, list) or len(replies) != len(keys):
            raise redis.exceptions.DataError(f"checkpoint read answered {type(replies).__name__}")
        return replies

    async def read_logs(self, starts: Sequence[tuple[str, str]], count: int) -> list[list[tuple[str, bytes]]]:
        """Up to ``count`` log entries of each ``(stream, XRANGE start)``, as ``(position, payload)``."""
        keys = [self._keys.log(s) for s, _ in starts]
        reply = await self._read_logs(keys=keys, args=[count, *(low for _, low in starts)])
        return [
            [(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]
            for flat in msgpack.unpackb(reply_bytes(reply), raw=True)
        ]
