"""The real data sets of the benchmark, read from the shared data directory (never copied into the project).

Each becomes a :class:`DataSet`: observations in arrival order, grouped into the steps that arrive together
(one video frame of boxes, one price), with per observation its stream, its clock (frame number, or its
index in its stream) and its time in seconds. The readers are ``trackin replay``'s
(:mod:`trackin.replay.sources`), so the benchmark and replay read the files the same way.

- ``tracking/**/gt/gt.txt``: every MOTChallenge sequence found; pedestrians (MOT16/17: ``consider == 1`` and
  ``class == 1``), one stream per track id, boxes as ``[cx, cy, w, h]``; times are frame / fps
  (``seqinfo.ini``).
- ``finance/emini_sp500_ticks_2013-09.csv.gz``: E-mini trade ticks, keeping the ticks whose price differs
  from the previous tick's (the series of distinct prices), at most ``limit`` of them.
- ``finance/gbpusd_1min_bid_2012-02.csv.gz``: GBP/USD one-minute bid bars, the close.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from trackin.replay.scoring import previous_index, scored_set, session_gaps
from trackin.replay.sources import read_mot, read_prices

__all__ = ["EMINI", "GBPUSD", "DataSet", "load_all"]

EMINI = "finance/emini_sp500_ticks_2013-09.csv.gz"
GBPUSD = "finance/gbpusd_1min_bid_2012-02.csv.gz"


@dataclass(frozen=True)
class DataSet:
    """A data set's observations in arrival order; ``starts[k]:starts[k + 1]`` arrive together."""

    name: str
    kind: Literal["boxes", "prices"]
    values: np.ndarray  # [n, dim] float64: [cx, cy, w, h] or [price]
    codes: np.ndarray  # [n] int64 stream
    clock: np.ndarray  # [n] frame number (boxes) or index in the stream (prices)
    times: np.ndarray | None  # [n] seconds
    starts: np.ndarray  # [steps + 1] int64
    note: str  # what was read

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def streams(self) -> int:
        return int(self.codes.max()) + 1 if self.codes.size else 0

    @property
    def previous(self) -> np.ndarray:
        return previous_index(self.codes)

    @property
    def gaps(self) -> np.ndarray:
        """``[n]`` bool: first observation after a session gap (prices with times only)."""
        return session_gaps(self.times if self.kind == "prices" else None, self.previous)

    @property
    def scored(self) -> np.ndarray:
        """The fixed scored set: each stream's third observation on, minus the first after a session gap."""
        return scored_set(self.codes, self.gaps)


def _fps(gt: Path) -> float:
    info = configparser.ConfigParser()
    info.read(gt.parent.parent / "seqinfo.ini")
    return float(info.get("Sequence", "frameRate", fallback="30"))


def load_mot(gt: Path) -> DataSet:
    steps = read_mot(gt)
    _, codes = np.unique(np.asarray(steps.keys), return_inverse=True)
    box = steps.values
    centred = np.c_[box[:, :2] + box[:, 2:] / 2, box[:, 2:]]
    frames = steps.step_of().astype(np.float64)
    note = f"{len(steps):,} boxes, {codes.max() + 1} tracks, {len(steps.labels)} frames"
    return DataSet(
        steps.name, "boxes", centred, codes.astype(np.int64), frames, frames / _fps(gt), steps.starts, note
    )


def load_prices(
    path: Path, name: str, fmt: Literal["ticks", "bars"], distinct: bool, limit: int | None
) -> DataSet:
    steps = read_prices(path, fmt)
    values, times = steps.values, steps.times
    rows = len(values)
    if distinct:
        keep = np.r_[True, values[1:, 0] != values[:-1, 0]]
        values, times = values[keep], times[keep] if times is not None else None
    total = len(values)
    if limit is not None:
        values, times = values[:limit], times[:limit] if times is not None else None
    n = len(values)
    if distinct:
        used = f"the first {n:,}" if n < total else "all"
        cap = f"; --limit {limit:,}" if limit is not None else ""
        note = f"{used} of {total:,} distinct-price ticks ({rows:,} ticks{cap})"
    else:
        note = f"{n:,} bars"
    order = np.arange(n, dtype=np.int64)
    return DataSet(
        name, "prices", values, np.zeros(n, np.int64), order.astype(np.float64), times, np.r_[order, n], note
    )


def load_all(data: Path, limit: int | None) -> tuple[list[DataSet], list[str]]:
    """Every data set found under ``data``, and a line for each one missing."""
    found: list[DataSet] = []
    missing: list[str] = []
    for gt in sorted((data / "tracking").glob("**/gt/gt.txt")):
        found.append(load_mot(gt))
    if not found:
        missing.append(f"no MOTChallenge gt/gt.txt under {data / 'tracking'}")
    for relative, name, fmt, distinct in (
        (EMINI, "E-mini S&P 500 ticks", "ticks", True),
        (GBPUSD, "GBP/USD 1-min bars", "bars", False),
    ):
        path = data / relative
        if path.exists():
            found.append(load_prices(path, name, fmt, distinct, limit if distinct else None))  # type: ignore[arg-type]
        else:
            missing.append(f"missing {path}")
    return found, missing
