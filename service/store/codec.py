"""Turn a stream's tensors into checkpoint bytes and back, with a format version.

safetensors, never pickle: a checkpoint read from a shared Redis or a copied file must not be able to
run code, and safetensors blobs are plain, bounds-checked data. The format version lives in the
checkpoint meta (``meta["format"]``) so it can be checked before the blob is touched. The version is the
engine's (`trackin.models.keys.FORMAT_VERSION`, beside the state keys it versions); bump it when the tensor
layout changes, and add the step from the previous version to `_UPGRADES`:

- the current version loads as is;
- an older known version loads, then goes through `_UPGRADES` one version at a time;
- a newer or unknown version, or a blob that does not parse, raises `CorruptCheckpoint` naming the
  stream, so one bad record is reported instead of silently reset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import safetensors.numpy
import safetensors.torch
import torch

from trackin.models import keys
from trackin.models.keys import FORMAT_VERSION
from trackin.models.specs import StreamSpec
from trackin.service.store.errors import CorruptCheckpoint

__all__ = ["FORMAT_KEY", "FORMAT_VERSION", "decode_state", "encode_state", "upgrade_spec"]


FORMAT_KEY = "format"
"""The meta key the codec owns; whatever a caller puts there is overwritten on encode."""

Upgrade = Callable[[dict[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]
"""Turns tensors of format ``v`` into format ``v + 1``; meta is read-only context (e.g. the spec)."""


def _same_tensors(tensors: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return tensors


def _one_head(tensors: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A format-3 tracking stream as a one-head stream of format 4: its weight, covariance and residual
    statistics already have one head's shapes; the heads' errors start at zero (one head's share is 1)."""
    if keys.TRACK_COV not in tensors:
        return tensors
    out = dict(tensors)
    out[keys.HEAD_LOSS] = torch.zeros_like(tensors[keys.TRACK_RESID2])
    out[keys.HEAD_S2] = torch.zeros_like(tensors[keys.TRACK_NAIVE2])
    return out


_UPGRADES: dict[int, Upgrade] = {
    1: _same_tensors,  # format 2 added the scale-free path; a format-1 stream keeps its state (and its spec
    # is pinned to the first-order path it was written by: ``upgrade_spec``)
    2: _same_tensors,  # format 3 standardises the first-order path (``norm/*``); a format-2 first-order
    # stream keeps its state and learns in raw units as before (``upgrade_spec`` pins ``standardize``)
    3: _one_head,  # format 4 gives the tracking path several RLS heads; a format-3 tracking stream keeps its
    # one head (``upgrade_spec`` pins ``forget`` to a number), whose state only lacks the heads' errors
}


def upgrade_spec(spec: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec as this version reads it. Format 1 predates the scale-free path and its defaults: its
    streams keep learning the way they did (first order, in raw units, no naive mix). Formats 1 and 2
    predate the first-order path's standardisation: their first-order streams keep raw units."""
    out = dict(spec)
    if meta.get(FORMAT_KEY) == 1:
        optimizer = dict(out.get("optimizer") or {})
        if optimizer.get("name", "trackin") == "trackin":
            optimizer.setdefault("precondition", "none")
            out["optimizer"] = optimizer
        out.setdefault("standardize", False)
        out.setdefault("mix_naive", False)
    version = meta.get(FORMAT_KEY)
    if isinstance(version, int) and version <= 3:
        tracking = StreamSpec.model_validate(out).tracking
        if version <= 2 and not tracking:
            out["standardize"] = False  # before format 3, standardize applied to the scale-free path only
        if tracking:  # before format 4, the tracking path had one head, forget 0.999 by default
            optimizer = dict(out.get("optimizer") or {})
            optimizer.setdefault("forget", 0.999)
            out["optimizer"] = optimizer
    return out


def encode_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """Serialize ``tensors`` and return ``(blob, meta with the format version)``.

    Tensors are detached, moved to the CPU and made contiguous first, so state living on a GPU or
    as a strided view of a batched engine tensor encodes the same as a plain CPU tensor.
    """
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"encode_state expects dict[str, Tensor]; got entry {name!r}")
        plain[name] = tensor.detach().to("cpu").contiguous()
    try:
        # Through numpy: the same bytes as safetensors.torch.save, about 3x faster for a stream's many
        # small tensors (checkpoint passes encode thousands of streams).
        blob: bytes = safetensors.numpy.save({name: t.numpy() for name, t in plain.items()})
    except TypeError:  # a dtype numpy lacks (bfloat16)
        blob = safetensors.torch.save(plain)
    return blob, {**meta, FORMAT_KEY: FORMAT_VERSION}


def decode_state(stream_id: str, blob: bytes, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint of ``stream_id``, upgrading older formats to the current one.

    Raises `CorruptCheckpoint` (naming the stream) for a missing, unknown or newer format and for a
    blob that is truncated or otherwise does not parse.
    """
    version = _format_version(stream_id, meta)
    try:
        tensors = _load(blob)
    except Exception as exc:  # any parse failure of stored bytes means the record is corrupt
        raise CorruptCheckpoint(stream_id, f"tensor blob does not parse: {exc}") from exc
    while version < FORMAT_VERSION:
        upgrade = _UPGRADES.get(version)
        if upgrade is None:
            raise CorruptCheckpoint(stream_id, f"no upgrade from format {version}")
        tensors = upgrade(tensors, meta)
        version += 1
    return tensors


def _load(blob: bytes) -> dict[str, torch.Tensor]:
    """Parse a blob: through numpy, about twice as fast as torch's loader for a stream's many small
    tensors (what a restore of 100,000 streams spends most of its decode time on); torch's loader for the
    dtypes numpy lacks (bfloat16)."""
    try:
        arrays = safetensors.numpy.load(blob)
    except KeyError:
        loaded: dict[str, torch.Tensor] = safetensors.torch.load(blob)
        return loaded
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _format_version(stream_id: str, meta: Mapping[str, Any]) -> int:
    version = meta.get(FORMAT_KEY)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CorruptCheckpoint(stream_id, f"missing or invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CorruptCheckpoint(
            stream_id,
            f"format {version} is newer than this trackin supports ({FORMAT_VERSION}); upgrade trackin",
        )
    if version < 1:
        raise CorruptCheckpoint(stream_id, f"unknown format {version}")
    return version
