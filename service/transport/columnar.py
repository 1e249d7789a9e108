"""Decoding the columnar form of an observations body (REST JSON, WebSocket JSON or MessagePack) into arrays.

JSON columns are nested lists, converted with one ``np.array`` each; MessagePack columns may be raw
little-endian float buffers (``bin``), read with ``np.frombuffer``: no Python object per value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trackin.service.domain.columns import Columns
from trackin.service.errors import InvalidInput
from trackin.service.transport.wire import ObservationsBody

__all__ = ["column_array", "columns_of"]

_DTYPES = {"f8": "<f8", "f4": "<f4"}


def column_array(values: Any, name: str, rows: int, dtype: str = "f8") -> np.ndarray | None:
    """A column as ``[rows, width]`` float64: from nested lists (JSON) or a raw little-endian buffer of
    ``rows * width`` floats (MessagePack ``bin``; ``dtype`` ``f8`` or ``f4``)."""
    if values is None:
        return None
    if isinstance(values, bytes | bytearray | memoryview):
        if dtype not in _DTYPES:
            raise InvalidInput("dtype must be 'f8' or 'f4'", field="dtype")
        item = np.dtype(_DTYPES[dtype]).itemsize
        size = len(values)
        if rows == 0 or size % (item * rows):
            raise InvalidInput(f"a buffer of {size} bytes is not {rows} rows of {dtype} floats", field=name)
        return np.frombuffer(values, dtype=_DTYPES[dtype]).astype(np.float64).reshape(rows, -1)
    try:
        array = np.array(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInput("rows must all have the same number of values", field=name) from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != rows:
        raise InvalidInput(f"expected {rows} rows (one per stream), got {array.shape[0]}", field=name)
    return array


def columns_of(body: ObservationsBody) -> Columns | None:
    """The columnar form of a body as arrays (None when it uses ``observations``); ``InvalidInput`` names
    the field when both forms or neither are given, or a column does not fit."""
    if body.streams is None:
        if body.observations is None:
            raise InvalidInput("missing 'observations' (or the columnar 'streams')", field="observations")
        for name in ("x", "y", "value", "ts"):
            if getattr(body, name) is not None:
                raise InvalidInput(f"'{name}' belongs to the columnar form, with 'streams'", field=name)
        return None
    if body.observations is not None:
        raise InvalidInput("give 'observations' or 'streams', not both", field="streams")
    n = len(body.streams)
    if n == 0:
        raise InvalidInput("no observations", field="streams")
    return Columns(
        body.streams,
        column_array(body.x, "x", n, body.dtype),
        column_array(body.y, "y", n, body.dtype),
        column_array(body.value, "value", n, body.dtype),
        column_array(body.ts, "ts", n, body.dtype),
    )
