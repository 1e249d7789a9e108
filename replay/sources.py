"""Readers for the files ``trackin replay`` streams: ticks or bars CSV and MOTChallenge ``gt.txt``.

Every reader returns :class:`Steps`: observations grouped into the steps a feed delivers them in (one row of
prices, or one video frame of boxes), in order. Gzip files (``.gz``) are read as they are.

- ticks CSV: header with ``Price`` (e.g. ``DateTime,Price,Volume``); one observation per row.
- bars CSV: header with ``close`` (e.g. ``timestamp,open,high,low,close``); the close of each bar.
- MOTChallenge ``gt.txt``: rows ``frame,id,bb_left,bb_top,bb_width,bb_height,consider,class,visibility``;
  rows with ``consider == 1`` and ``class == 1`` (the evaluated pedestrians), one stream per object id.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["FORMATS", "Format", "Steps", "detect_format", "read_mot", "read_prices", "read_steps"]

Format = Literal["ticks", "bars", "mot"]
FORMATS: tuple[Format, ...] = ("ticks", "bars", "mot")
_PRICE_COLUMN = {"ticks": "price", "bars": "close"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True, slots=True)
class Steps:
    """A file's observations: ``values[starts[k]:starts[k+1]]`` arrived together at step ``k``.

    ``keys[i]`` names the instrument or object of observation ``i`` (one stream each); ``labels[k]`` is
    the step's position in the file (row number, or frame number).
    """

    name: str
    format: Format
    keys: list[str]  # [n]
    values: np.ndarray  # [n, dim] float64
    starts: np.ndarray  # [steps + 1] int64, offsets into the observations
    labels: np.ndarray  # [steps] int64

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.keys)

    def step_slices(self) -> Iterator[slice]:
        for a, b in zip(self.starts[:-1].tolist(), self.starts[1:].tolist(), strict=True):
            yield slice(a, b)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def safe_name(text: str) -> str:
    """``text`` turned into a valid stream id (``A-Z a-z 0-9 . _ : -``, at most 100 characters)."""
    return _UNSAFE.sub("_", text).strip("_")[:100] or "replay"


def _file_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".txt"):
        name = name.removesuffix(suffix)
    return safe_name(name)


def detect_format(path: Path) -> Format:
    """From the first line: a ``Price`` column (ticks), a ``close`` column (bars), or 9+ numbers (mot)."""
    with _open_text(path) as f:
        first = f.readline().strip()
    columns = [c.strip().lower() for c in first.split(",")]
    if "price" in columns:
        return "ticks"
    if "close" in columns:
        return "bars"
    try:
        numbers = [float(c) for c in columns]
    except ValueError:
        numbers = []
    if len(numbers) >= 7:
        return "mot"
    raise ValueError(f"{path}: cannot tell the format from its first line {first[:80]!r}; pass --format")


def read_prices(path: Path, fmt: Format, *, limit: int | None = None, name: str | None = None) -> Steps:
    """One instrument's prices (ticks: ``Price``; bars: ``close``), one observation per row."""
    wanted = _PRICE_COLUMN[fmt]
    prices: list[float] = []
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [c.strip().lower() for c in next(reader)]
        if wanted not in header:
            raise ValueError(f"{path}: no {wanted!r} column in {header}")
        column = header.index(wanted)
        for row in reader:
            if limit is not None and len(prices) >= limit:
                break
            if row:
                prices.append(float(row[column]))
    n = len(prices)
    stream = safe_name(name) if name else _file_name(path)
    return Steps(
        name=stream,
        format=fmt,
        keys=[stream] * n,
        values=np.asarray(prices, dtype=np.float64).reshape(n, 1),
        starts=np.arange(n + 1, dtype=np.int64),
        labels=np.arange(n, dtype=np.int64),
    )


def _sequence_name(path: Path) -> str:
    """``MOT17-09-FRCNN`` for ``.../MOT17-09-FRCNN/gt/gt.txt``; the file name otherwise."""
    if path.parent.name == "gt" and path.parent.parent.name:
        return safe_name(path.parent.parent.name)
    return _file_name(path)


def read_mot(path: Path, *, limit: int | None = None, name: str | None = None) -> Steps:
    """Pedestrian boxes ``[left, top, width, height]`` grouped by frame (whole frames up to ``limit``)."""
    with _open_text(path) as f:
        table = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
    if table.size and table.shape[1] < 8:
        raise ValueError(f"{path}: expected 9 columns (frame,id,box,consider,class,visibility)")
    if table.size:
        table = table[(table[:, 6] == 1) & (table[:, 7] == 1)]
    table = table[np.lexsort((table[:, 1], table[:, 0]))] if len(table) else np.empty((0, 9))
    frames = table[:, 0].astype(np.int64)
    cut = (
        np.r_[0, np.flatnonzero(np.diff(frames)) + 1, len(frames)].astype(np.int64)
        if len(frames)
        else np.zeros(1, np.int64)
    )
    if limit is not None and len(frames) > limit:
        cut = cut[: max(2, int(np.searchsorted(cut, limit, side="right")))]
    n = int(cut[-1])
    sequence = safe_name(name) if name else _sequence_name(path)
    return Steps(
        name=sequence,
        format="mot",
        keys=[str(int(i)) for i in table[:n, 1]],
        values=table[:n, 2:6].copy(),
        starts=cut,
        labels=frames[cut[:-1]],
    )


def read_steps(
    path: Path, fmt: Format | Literal["auto"] = "auto", *, limit: int | None = None, name: str | None = None
) -> Steps:
    """Read ``path`` in ``fmt`` (``auto``: :func:`detect_format`)."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "mot":
        return read_mot(path, limit=limit, name=name)
    return read_prices(path, kind, limit=limit, name=name)
