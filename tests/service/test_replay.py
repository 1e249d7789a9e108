"""``trackin replay`` (replay/*.py) on tiny generated files: in-process and against a real server.

The files are made so that the figures are known in advance: every tick changes the price by one tick
(the no-change baseline's squared error is exactly 0.0625 per observation), every box moves right by 1 and
3 px on alternate frames and down by 1 px a frame (the constant-velocity baseline is off by 2 px in x every
frame: 4 px^2), and the ticks' bounce is learnable, so trackin must beat the baseline there.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from tests.replay.test_sources import write_mot15
from tests.support.server import TrackinServer
from trackin.cli import main
from trackin.models.specs import StreamSpec
from trackin.replay.cli import AR_BOX_SPEC, PRICE_SPEC, TRACK_SPEC, ReplayOptions, Summary, box_spec, replay
from trackin.replay.errors import InputError
from trackin.replay.sources import detect_format, read_mot, read_steps

TICKS = 600
WINDOW = 9  # the default ar spec: lags 8 of changes, 9 values before the first forecast
_names = itertools.count()


def write_ticks(path: Path, n: int = TICKS, gap_at: int | None = None) -> np.ndarray:
    """Bid-ask bounce: the price alternates between two levels one tick (0.25) apart, a tick every 10 ms
    (and, with ``gap_at``, 18 hours without a tick before tick ``gap_at``)."""
    prices = 1640.0 + 0.25 * (np.arange(n) % 2)
    start = np.datetime64("2013-09-01T17:00:00.000")
    times = start + np.arange(n) * np.timedelta64(10, "ms")
    if gap_at is not None:
        times[gap_at:] += np.timedelta64(18, "h")
    lines = ["DateTime,Price,Volume"]
    lines += [f"{str(t).replace('T', ' ')},{p},1" for t, p in zip(times, prices, strict=True)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return prices


def write_bars(path: Path, n: int = 300, gap_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(3)
    close = 1.5 + np.cumsum(rng.choice([-1e-4, 0.0, 1e-4], size=n))
    minutes = np.arange(n) + (np.arange(n) >= gap_at) * 2 * 24 * 60 if gap_at is not None else np.arange(n)
    stamps = np.datetime64("2012-02-03T00:00") + minutes.astype("timedelta64[m]")
    lines = ["timestamp,open,high,low,close"]
    lines += [f"{t}+00:00,{c + 1e-3},{c + 2e-3},{c - 2e-3},{c}" for t, c in zip(stamps, close, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return close


def write_gt(path: Path) -> dict[int, int]:
    """Three pedestrians (right by 1 and 3 px on alternate frames, down by 1 px a frame), plus rows replay
    must skip; rows in id order as in MOT."""
    path.parent.mkdir(parents=True)
    tracks = {1: range(1, 121), 2: range(5, 96), 3: range(20, 151)}
    rows = []
    for obj, frames in tracks.items():
        for f in frames:
            rows.append(f"{f},{obj},{100 * obj + 2 * f + f % 2},{50 + f},40,90,1,1,1.0")
    rows += [f"{f},7,10,10,5,5,0,1,1.0" for f in range(1, 30)]  # consider == 0
    rows += [f"{f},8,10,10,5,5,1,3,1.0" for f in range(1, 30)]  # class 3: not a pedestrian
    path.write_text("\n".join(rows) + "\n")
    return {obj: len(frames) for obj, frames in tracks.items()}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["replay", *argv, "--in-process", "--no-progress"])
    out, err = capsys.readouterr()
    return status, out, err


def test_formats_and_readers(tmp_path: Path) -> None:
    write_ticks(tmp_path / "es.csv.gz")
    write_bars(tmp_path / "fx.csv")
    counts = write_gt(tmp_path / "SEQ-1" / "gt" / "gt.txt")
    assert detect_format(tmp_path / "es.csv.gz") == "ticks"
    assert detect_format(tmp_path / "fx.csv") == "bars"
    assert detect_format(tmp_path / "SEQ-1" / "gt" / "gt.txt") == "mot"
    ticks = read_steps(tmp_path / "es.csv.gz", limit=10)
    assert (ticks.name, len(ticks), ticks.dim) == ("es", 10, 1)
    assert ticks.times is not None
    assert np.diff(ticks.times) == pytest.approx(0.01)
    mot = read_mot(tmp_path / "SEQ-1" / "gt" / "gt.txt")
    assert mot.name == "SEQ-1"
    assert len(mot) == sum(counts.values())
    assert sorted(set(mot.keys)) == ["1", "2", "3"]
    assert list(mot.labels) == list(range(1, 151))  # steps are frames, in order
    frame_20 = slice(mot.starts[19], mot.starts[20])
    assert mot.keys[frame_20] == ["1", "2", "3"]
    limited = read_mot(tmp_path / "SEQ-1" / "gt" / "gt.txt", limit=9)  # frames of 1, 1, 1, 1, 2, 2, 2 boxes
    assert (len(limited), list(limited.labels)) == (8, [1, 2, 3, 4, 5, 6])  # whole frames only


def test_ticks_in_process_with_the_user_default(tmp_path: Path) -> None:
    write_ticks(tmp_path / "es.csv.gz")
    summary = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False))
    assert (summary.observations, summary.streams, summary.transport) == (TICKS, 1, "in-process")
    assert summary.requested == PRICE_SPEC
    assert summary.spec == StreamSpec.model_validate(PRICE_SPEC).model_dump(mode="json")
    assert summary.unit == 1.0
    assert summary.scored == TICKS - 2  # from the third tick on
    assert summary.warming == 0  # the scale-free default forecasts from the second tick on
    assert summary.applied == TICKS - 1
    assert summary.baseline_mse == pytest.approx(0.0625)  # no change: one tick (0.25) off every time
    assert summary.ratio < 0.5  # the bounce is learnable
    assert summary.mse == pytest.approx(summary.ratio * summary.baseline_mse)
    assert np.isfinite(summary.mean_loss)
    assert summary.failure() is None


@pytest.mark.parametrize("lags", [1, 8, 32])
def test_the_scored_set_does_not_depend_on_lags(tmp_path: Path, lags: int) -> None:
    write_ticks(tmp_path / "es.csv.gz", 200)
    summary = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False, lags=lags))
    assert summary.requested == {"model": {"family": "ar", "dim": 1, "lags": lags}}
    assert summary.scored == 200 - 2
    assert summary.warming == 0  # no lag window to fill on the default path, whatever lags
    assert summary.baseline_mse == pytest.approx(0.0625)
    first_order = {"model": {"family": "ar", "dim": 1, "lags": lags}, "optimizer": {"precondition": "none"}}
    windowed = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False, spec=first_order))
    assert windowed.scored == 200 - 2
    assert windowed.warming == lags + 1 - 2
    warming = windowed.scored_mask & (np.arange(200) < lags + 1)  # answered before the window was full
    assert (windowed.forecasts[warming] == windowed.values[np.flatnonzero(warming) - 1]).all()


def test_a_session_gap_is_not_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ticks(tmp_path / "es.csv.gz", 300, gap_at=150)
    summary = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False))
    assert (summary.gaps, summary.scored) == (1, 300 - 2 - 1)
    assert not summary.scored_mask[150]
    close = write_bars(tmp_path / "fx.csv", gap_at=100)
    bars = replay(ReplayOptions(tmp_path / "fx.csv", url=None, progress=False, lags=4, batch=7))
    assert (bars.observations, bars.gaps, bars.scored) == (len(close), 1, len(close) - 3)
    changes = np.diff(close) ** 2
    assert bars.baseline_mse == pytest.approx(np.delete(changes, [0, 99]).mean())  # the first, and the gap
    status, out, _ = run([str(tmp_path / "fx.csv"), "--gap-factor", "1e9"], capsys)
    assert status == 0
    assert "0 change(s) across session gaps not scored" in out


def test_quotes_replay_the_mid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "quotes.csv"
    mid = 1.1 + 1e-4 * (np.arange(50) % 3)
    path.write_text(
        "timestamp,bid,ask\n" + "".join(f"{i},{m - 5e-5},{m + 5e-5}\n" for i, m in enumerate(mid))
    )
    status, out, err = run([str(path)], capsys)
    assert (status, err) == (0, "")
    assert "replay quotes (quotes, 1 stream(s), in-process)" in out
    summary = replay(ReplayOptions(path, url=None, progress=False))
    assert summary.values[:, 0] == pytest.approx(mid)


def test_mot_in_process_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "SEQ-2" / "gt" / "gt.txt"
    counts = write_gt(gt)
    out = tmp_path / "plot.png"
    status, printed, _ = run([str(gt), "--plot", str(out)], capsys)
    assert status == 0
    assert "replay SEQ-2 (mot, 3 stream(s), in-process)" in printed
    assert f"observations   {sum(counts.values())} " in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = replay(ReplayOptions(gt, url=None, progress=False))
    assert summary.requested == box_spec()
    assert summary.scored == sum(n - 2 for n in counts.values())
    assert summary.baseline.startswith("constant velocity")
    assert summary.baseline_mse == pytest.approx(4.0)  # 2 px off in x every frame
    assert summary.failure() is None


def test_box_spec_is_track_when_the_engine_has_it() -> None:
    try:
        StreamSpec.model_validate(TRACK_SPEC)
    except ValueError:
        assert box_spec() == AR_BOX_SPEC
    else:
        assert box_spec() == TRACK_SPEC


def test_mot15(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "PETS09-S2L1" / "gt" / "gt.txt"
    n = write_mot15(gt)
    status, out, _ = run([str(gt)], capsys)
    assert status == 0
    assert f"observations   {n} " in out
    assert "ratio          nan" not in out


def test_nothing_to_replay_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,0,0,5,5,0,1,1\n2,1,0,0,5,5,0,1,1\n")
    status, out, err = run([str(gt)], capsys)
    assert (status, out) == (2, "")
    assert "no boxes to replay" in err


def test_a_spec_without_loss_gets_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ticks(tmp_path / "es.csv.gz", 100)
    status, out, _ = run(
        [str(tmp_path / "es.csv.gz"), "--spec", '{"model": {"family": "ar", "dim": 1}}'], capsys
    )
    assert status == 0
    assert "loss mse" in out
    status, out, _ = run(
        [str(tmp_path / "es.csv.gz"), "--spec", '{"model": {"family": "ar"}}', "--loss", "huber"], capsys
    )
    assert status == 0
    assert '{"model": {"family": "ar"}, "loss": "huber"}' in out


def test_a_bad_spec_fails_before_the_replay_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_ticks(tmp_path / "es.csv.gz", 100)
    nowhere = ReplayOptions(
        tmp_path / "es.csv.gz", url="http://127.0.0.1:9", spec={"model": {"family": "ar", "lagz": 4}}
    )
    with pytest.raises(InputError, match=r"invalid stream spec .*model\.ar\.lagz: Extra inputs"):
        replay(nowhere)  # no server there: validated before connecting
    status, out, err = run([str(tmp_path / "es.csv.gz"), "--lags", "0"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith("trackin replay: error: invalid stream spec")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "argv", "message"),
    [
        ("time,value\n1,2\n", [], "unrecognised first line 'time,value'; expected a CSV header with a Price"),
        ("timestamp,bid,ask\n1,2,3\n", ["--format", "ticks"], "no price column for --format ticks"),
        ("DateTime,Price\n1,1\n", ["--unit", "0"], "--unit must be a positive number"),
    ],
)
def test_input_errors_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, argv: list[str], message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    status, out, err = run([str(path), *argv], capsys)
    assert (status, out) == (2, "")
    assert message in err
    assert "Traceback" not in err


def test_a_diverged_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ticks(tmp_path / "es.csv.gz", 200)
    first_order = (
        '{"model": {"family": "ar", "dim": 1}, "optimizer": {"precondition": "none", "lr": 100},'
        ' "standardize": false, "mix_naive": false}'
    )  # raw units: standardised (the default), the same learning rate stays bounded (below)
    status, out, err = run([str(tmp_path / "es.csv.gz"), "--spec", first_order], capsys)
    assert status == 1
    assert "ratio" in out  # the summary first
    assert "trackin replay: error: es: trackin diverged" in err
    spec = json.loads(first_order)
    summary = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False, spec=spec))
    assert summary.nonfinite > 0
    assert summary.failure() is not None
    del spec["standardize"], spec["mix_naive"]
    bounded = replay(ReplayOptions(tmp_path / "es.csv.gz", url=None, progress=False, spec=spec))
    assert bounded.nonfinite == 0
    assert bounded.failure() is None


def _same_figures(a: Summary, b: Summary) -> None:
    assert (a.observations, a.scored, a.applied, a.streams, a.warming) == (
        b.observations,
        b.scored,
        b.applied,
        b.streams,
        b.warming,
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
