"""``trackin replay`` (service/replay*.py) on tiny generated files: in-process and against a real server.

The files are made so that the figures are known in advance: every tick changes the price by one tick
(the no-change baseline's squared error is exactly 0.0625 per observation), every box moves by (2, 1) px
a frame (5 px^2), and both patterns are learnable, so trackin must beat the baseline.
"""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from tests.support.server import TrackinServer
from trackin.cli import main
from trackin.replay.cli import ReplayOptions, Summary, replay
from trackin.replay.sources import detect_format, read_mot, read_steps

TICKS = 600
LAGS = 16  # the price default: lags + 1 values fill the window before the first forecast
_names = itertools.count()


def write_ticks(path: Path, n: int = TICKS) -> np.ndarray:
    """Bid-ask bounce: the price alternates between two levels one tick (0.25) apart."""
    prices = 1640.0 + 0.25 * (np.arange(n) % 2)
    lines = ["DateTime,Price,Volume"]
    lines += [f"2013-09-01 17:00:{i // 1000:02d}.{i % 1000:03d},{p},1" for i, p in enumerate(prices)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return prices


def write_bars(path: Path, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(3)
    close = 1.5 + np.cumsum(rng.choice([-1e-4, 0.0, 1e-4], size=n))
    lines = ["timestamp,open,high,low,close"]
    lines += [
        f"2012-02-01 00:{i:05d}+00:00,{c + 1e-3},{c + 2e-3},{c - 2e-3},{c}" for i, c in enumerate(close)
    ]
    path.write_text("\n".join(lines) + "\n")
    return close


def write_gt(path: Path) -> dict[int, int]:
    """Three pedestrians moving (2, 1) px a frame, plus rows replay must skip; rows in id order as in MOT."""
    path.parent.mkdir(parents=True)
    tracks = {1: range(1, 121), 2: range(5, 96), 3: range(20, 151)}
    rows = []
    for obj, frames in tracks.items():
        for f in frames:
            rows.append(f"{f},{obj},{100 * obj + 2 * f},{50 + f},40,90,1,1,1.0")
    rows += [f"{f},7,10,10,5,5,0,1,1.0" for f in range(1, 30)]  # consider == 0
    rows += [f"{f},8,10,10,5,5,1,3,1.0" for f in range(1, 30)]  # class 3: not a pedestrian
    path.write_text("\n".join(rows) + "\n")
    return {obj: len(frames) for obj, frames in tracks.items()}


def scored_baseline(values: np.ndarray, track_lengths: list[int], window: int) -> float:
    """Mean squared error of the no-change forecast over the observations trackin scores."""
    errors = []
    start = 0
    for n in track_lengths:
        track = values[start : start + n]
        errors.extend(((track[1:] - track[:-1]) ** 2).sum(axis=1)[window - 1 :])
        start += n
    return float(np.mean(errors))


def test_formats_and_readers(tmp_path: Path) -> None:
    write_ticks(tmp_path / "es.csv.gz")
    write_bars(tmp_path / "fx.csv")
    counts = write_gt(tmp_path / "SEQ-1" / "gt" / "gt.txt")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert detect_format(tmp_path / "es.csv.gz") == "ticks"
    assert detect_format(tmp_path / "fx.csv") == "bars"
    assert detect_format(tmp_path / "SEQ-1" / "gt" / "gt.txt") == "mot"
    with pytest.raises(ValueError, match="--format"):
        detect_format(tmp_path / "other.csv")
    ticks = read_steps(tmp_path / "es.csv.gz", limit=10)
    assert (ticks.name, len(ticks), ticks.dim) == ("es", 10, 1)
    mot = read_mot(tmp_path / "SEQ-1" / "gt" / "gt.txt")
    assert mot.name == "SEQ-1"
    assert len(mot) == sum(counts.values())
    assert sorted(set(mot.keys)) == ["1", "2", "3"]
    assert list(mot.labels) == list(range(1, 151))  # steps are frames, in order
    frame_20 = slice(mot.starts[19], mot.starts[20])
    assert mot.keys[frame_20] == ["1", "2", "3"]
    limited = read_mot(tmp_path / "SEQ-1" / "gt" / "gt.txt", limit=9)  # frames of 1, 1, 1, 1, 2, 2, 2 boxes
    assert (len(limited), list(limited.labels)) == (8, [1, 2, 3, 4, 5, 6])  # whole frames only


def test_ticks_in_process(tmp_path: Path) -> None:
    prices = write_ticks(tmp_path / "es.csv.gz")
    summary = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False))
    assert (summary.observations, summary.streams, summary.transport) == (TICKS, 1, "in-process")
    assert summary.scored == TICKS - (LAGS + 1)
    assert summary.applied == summary.scored
    assert summary.unit == 0.25
    assert summary.baseline_mse == pytest.approx(scored_baseline(prices[:, None], [TICKS], LAGS + 1))
    assert summary.baseline_mse == pytest.approx(0.0625)
    assert summary.ratio < 0.5  # the bounce is learnable
    assert summary.mse == pytest.approx(summary.ratio * summary.baseline_mse)
    assert np.isfinite(summary.mean_loss)


def test_bars_use_the_close(tmp_path: Path) -> None:
    close = write_bars(tmp_path / "fx.csv")
    summary = replay(ReplayOptions(tmp_path / "fx.csv", url=None, progress=False, lags=4, batch=7))
    assert summary.observations == len(close)
    assert summary.baseline_mse == pytest.approx(scored_baseline(close[:, None], [len(close)], 5))


def test_mot_in_process_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "SEQ-2" / "gt" / "gt.txt"
    counts = write_gt(gt)
    out = tmp_path / "plot.png"
    assert main(["replay", str(gt), "--in-process", "--no-progress", "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "replay SEQ-2 (mot, 3 stream(s), in-process)" in printed
    assert f"observations   {sum(counts.values())} " in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = replay(ReplayOptions(gt, url=None, progress=False))
    window = 9  # lags 8 + 1
    assert summary.scored == sum(n - window for n in counts.values())
    assert summary.baseline_mse == pytest.approx(5.0)  # (2 px)^2 + (1 px)^2 every frame
    assert summary.ratio < 0.5


def _same_figures(a: Summary, b: Summary) -> None:
    assert (a.observations, a.scored, a.applied, a.streams) == (
        b.observations,
        b.scored,
        b.applied,
        b.streams,
    )
    assert a.baseline_mse == pytest.approx(b.baseline_mse)
    assert a.mse == pytest.approx(b.mse, rel=1e-6)  # the same engine answers, whatever the transport


@pytest.mark.parametrize("transport", ["rest", "ws"])
def test_against_a_server_equals_in_process(
    server: TrackinServer, tmp_path: Path, transport: Literal["rest", "ws"]
) -> None:
    ticks = tmp_path / f"replay-ticks-{next(_names)}.csv.gz"
    write_ticks(ticks, 200)
    gt = tmp_path / f"REPLAY-{next(_names)}" / "gt" / "gt.txt"
    write_gt(gt)
    for path, batch in ((ticks, 64), (gt, 2)):
        here = replay(ReplayOptions(path, url=None, progress=False, batch=batch))
        remote = ReplayOptions(path, url=server.url, transport=transport, progress=False, batch=batch)
        there = replay(remote)
        assert there.transport == transport
        _same_figures(there, here)
        _same_figures(replay(remote), here)  # a second replay starts from fresh streams
