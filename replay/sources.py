"""Readers for the files ``trackin replay`` streams: price CSVs (ticks, bars, quotes) and MOTChallenge boxes.

Every reader returns :class:`Steps`: observations grouped into the steps a feed delivers them in (one row of
prices, or one video frame of boxes), in order. Gzip files (``.gz``) are read as they are. A file that cannot
be replayed raises :class:`~trackin.replay.errors.InputError` naming what was expected.

- ticks CSV: a ``Price`` column (e.g. ``DateTime,Price,Volume``); one observation per row.
- bars CSV: a ``close`` column (e.g. ``timestamp,open,high,low,close``); the close of each bar.
- quotes CSV: ``bid`` and ``ask`` columns (e.g. ``timestamp,bid,ask``); the mid, (bid + ask) / 2.
- Price CSVs whose first column is an ISO 8601 time (or a number of seconds) carry times, which the scoring
  uses to find session gaps (:mod:`trackin.replay.scoring`).
- MOTChallenge ``gt.txt``, one stream per object id, boxes ``[left, top, width, height]``. MOT16/17 rows are
  ``frame,id,box,consider,class,visibility``: rows with ``consider == 1`` and ``class == 1`` (the evaluated
  pedestrians). MOT15 rows are ``frame,id,box,conf,x,y,z`` (10 columns, world coordinates or -1 where MOT17
  has the class): rows with ``conf > 0``. A file with 10 columns, or whose 8th column is not a class number
  (1 to 12), is read as MOT15.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from trackin.replay.errors import InputError

__all__ = [
    "EXPECTED_HEADERS",
    "FORMATS",
    "Format",
    "Steps",
    "detect_format",
    "read_mot",
    "read_prices",
    "read_steps",
]

Format = Literal["ticks", "bars", "quotes", "mot"]
FORMATS: tuple[Format, ...] = ("ticks", "bars", "quotes", "mot")
_PRICE_COLUMNS: dict[Format, tuple[str, ...]] = {
    "ticks": ("price",),
    "bars": ("close",),
    "quotes": ("bid", "ask"),
}
EXPECTED_HEADERS = (
    "a CSV header with a Price column (ticks, e.g. DateTime,Price,Volume), a close column (bars, e.g. "
    "timestamp,open,high,low,close) or bid and ask columns (quotes, e.g. timestamp,bid,ask), or a "
    "MOTChallenge gt.txt (rows frame,id,left,top,width,height,...)"
)
MOT_CLASSES = np.arange(1, 13)
"""MOT16/17 class numbers (1 pedestrian ... 12 occluder full)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True, slots=True)
class Steps:
    """A file's observations: ``values[starts[k]:starts[k+1]]`` arrived together at step ``k``.

    ``keys[i]`` names the instrument or object of observation ``i`` (one stream each); ``labels[k]`` is
    the step's position in the file (row number, or frame number); ``times[i]`` the observation's time in
    seconds, when the file has one.
    """

    name: str
    format: Format
    keys: list[str]  # [n]
    values: np.ndarray  # [n, dim] float64
    starts: np.ndarray  # [steps + 1] int64, offsets into the observations
    labels: np.ndarray  # [steps] int64
    times: np.ndarray | None = None  # [n] float64 seconds

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.keys)

    def step_slices(self) -> Iterator[slice]:
        for a, b in zip(self.starts[:-1].tolist(), self.starts[1:].tolist(), strict=True):
            yield slice(a, b)

    def step_of(self) -> np.ndarray:
        """``[n]`` the label (row, frame) of each observation's step."""
        return np.repeat(self.labels, np.diff(self.starts))


def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None


def safe_name(text: str) -> str:
    """``text`` turned into a valid stream id (``A-Z a-z 0-9 . _ : -``, at most 100 characters)."""
    return _UNSAFE.sub("_", text).strip("_")[:100] or "replay"


def _file_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".csv", ".txt"):
        name = name.removesuffix(suffix)
    return safe_name(name)


def _first_line(path: Path) -> str:
    try:
        with _open_text(path) as f:
            return f.readline().strip()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise InputError(f"{path}: not a text file ({error}); expected {EXPECTED_HEADERS}") from None


def detect_format(path: Path) -> Format:
    """From the first line: its header's price columns (ticks, bars, quotes), or 7+ numbers (mot)."""
    first = _first_line(path)
    columns = [c.strip().lower() for c in first.split(",")]
    for fmt, wanted in _PRICE_COLUMNS.items():
        if all(w in columns for w in wanted):
            return fmt
    try:
        numbers = [float(c) for c in columns]
    except ValueError:
        numbers = []
    if len(numbers) >= 7:
        return "mot"
    raise InputError(f"{path}: unrecognised first line {first[:80]!r}; expected {EXPECTED_HEADERS}")


def _seconds(text: str) -> float:
    """An ISO 8601 time (naive: UTC) or a number, as seconds."""
    try:
        return float(text)
    except ValueError:
        stamp = datetime.fromisoformat(text.strip())
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def read_prices(path: Path, fmt: Format, *, limit: int | None = None, name: str | None = None) -> Steps:
    """One instrument's prices (ticks: ``Price``; bars: ``close``; quotes: the bid-ask mid), one per row."""
    wanted = _PRICE_COLUMNS[fmt]
    prices: list[float] = []
    times: list[float] | None = []
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [c.strip().lower() for c in next(reader, [])]
        if not all(w in header for w in wanted):
            raise InputError(
                f"{path}: header {','.join(header)[:80]!r} has no {' and '.join(wanted)} column "
                f"for --format {fmt}; expected {EXPECTED_HEADERS}"
            )
        columns = [header.index(w) for w in wanted]
        clock = 0 if 0 not in columns else None
        for row in reader:
            if limit is not None and len(prices) >= limit:
                break
            if not row:
                continue
            try:
                price = sum(float(row[c]) for c in columns) / len(columns)
            except (ValueError, IndexError):
                raise InputError(
                    f"{path}: line {reader.line_num}: no number in column(s) "
                    f"{' and '.join(wanted)}: {','.join(row)[:80]!r}"
                ) from None
            if not np.isfinite(price):
                raise InputError(f"{path}: line {reader.line_num}: price {price} is not finite")
            prices.append(price)
            if times is not None and clock is not None:
                try:
                    times.append(_seconds(row[clock]))
                except ValueError:
                    times = None  # no usable times: no session gaps
    n = len(prices)
    if n == 0:
        raise InputError(f"{path}: no prices after the header")
    stream = safe_name(name) if name else _file_name(path)
    return Steps(
        name=stream,
        format=fmt,
        keys=[stream] * n,
        values=np.asarray(prices, dtype=np.float64).reshape(n, 1),
        starts=np.arange(n + 1, dtype=np.int64),
        labels=np.arange(n, dtype=np.int64),
        times=np.asarray(times, dtype=np.float64) if times and clock is not None else None,
    )


def _sequence_name(path: Path) -> str:
    """``MOT17-09-FRCNN`` for ``.../MOT17-09-FRCNN/gt/gt.txt``; the file name otherwise."""
    if path.parent.name == "gt" and path.parent.parent.name:
        return safe_name(path.parent.parent.name)
    return _file_name(path)


def is_mot15(table: np.ndarray) -> bool:
    """MOT15 rows: 10 columns (conf, then world x, y, z), or an 8th column that is no MOT16/17 class."""
    return table.shape[1] == 10 or table.shape[1] < 8 or not np.isin(table[:, 7], MOT_CLASSES).all()


def _load_mot(path: Path) -> np.ndarray:
    try:
        with _open_text(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": handled below
            table = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise InputError(f"{path}: not a MOTChallenge file ({error})") from None
    if table.shape[0] == 0 or table.shape[1] < 7:
        raise InputError(f"{path}: expected rows frame,id,left,top,width,height,consider[,class,...]")
    return table


def read_mot(path: Path, *, limit: int | None = None, name: str | None = None) -> Steps:
    """Pedestrian boxes ``[left, top, width, height]`` grouped by frame (whole frames up to ``limit``)."""
    table = _load_mot(path)
    if is_mot15(table):
        kept = table[table[:, 6] > 0]
        rule = "MOT15 (conf > 0)"
    else:
        kept = table[(table[:, 6] == 1) & (table[:, 7] == 1)]
        rule = "MOT16/17 (consider == 1 and class == 1)"
    if not len(kept):
        raise InputError(
            f"{path}: no boxes to replay: none of its {len(table):,} rows passes the {rule} filter"
        )
    table = kept[np.lexsort((kept[:, 1], kept[:, 0]))]
    frames = table[:, 0].astype(np.int64)
    cut = np.r_[0, np.flatnonzero(np.diff(frames)) + 1, len(frames)].astype(np.int64)
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
