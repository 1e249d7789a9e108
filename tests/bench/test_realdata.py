"""bench/realdata.py and bench/datasets.py on a small data directory made here (never the shared data)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.datasets import EMINI, GBPUSD, load_all
from bench.realdata import box_scores, evaluate, main, run_trackin, user_spec
from trackin.models.engine import Engine

FRAMES = 40


def make_data(root: Path) -> Path:
    """Two MOT sequences, E-mini-like ticks (each price repeated 3 times) and minute bars."""
    for name, fps in (("SEQ-01", 30), ("SEQ-02", 10)):
        seq = root / "tracking" / "MOT17" / name
        (seq / "gt").mkdir(parents=True)
        (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nframeRate={fps}\nseqLength={FRAMES}\n")
        rows = []
        for obj in (1, 2):
            for f in range(1, FRAMES + 1):
                if obj == 2 and f in (10, 11):
                    continue  # occluded: a gap of frames
                rows.append(f"{f},{obj},{100 * obj + 2 * f + f % 3},{50 + f},40,80,1,1,1.0")
        rows.append("3,3,10,10,5,5,1,2,1.0")  # class 2: not a pedestrian
        (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    (root / "finance").mkdir()
    prices = 1640 + 0.25 * (np.arange(100) % 2)
    lines = ["DateTime,Price,Volume"]
    for i, p in enumerate(np.repeat(prices, 3)):
        lines.append(f"2013-09-01 17:00:{i // 100:02d}.{i % 100:02d}0,{p},1")
    with gzip.open(root / EMINI, "wt") as f:
        f.write("\n".join(lines) + "\n")
    close = 1.5 + 1e-4 * np.cumsum(np.random.default_rng(1).choice([-1, 0, 1], size=200))
    minutes = np.arange(200) + (np.arange(200) >= 150) * 2 * 24 * 60  # a weekend before bar 150
    stamps = np.datetime64("2012-02-03T00:00") + minutes.astype("timedelta64[m]")
    bars = ["timestamp,open,high,low,close"] + [
        f"{t}+00:00,{c},{c},{c},{c}" for t, c in zip(stamps, close, strict=True)
    ]
    with gzip.open(root / GBPUSD, "wt") as f:
        f.write("\n".join(bars) + "\n")
    return root


def test_box_scores() -> None:
    truth = np.array([[10.0, 10.0, 4.0, 8.0]] * 3)
    forecasts = np.array([[10.0, 10.0, 4.0, 8.0], [12.0, 10.0, 4.0, 8.0], [100.0, 10.0, 4.0, 8.0]])
    iou, centre = box_scores(forecasts, truth)
    assert iou == pytest.approx([1.0, 16 / 48, 0.0])
    assert centre == pytest.approx([0.0, 2 / 8, 90 / 8])
    iou, _ = box_scores(np.array([[10.0, 10.0, -4.0, 8.0]]), truth[:1])  # a negative width is an empty box
    assert iou == pytest.approx([0.0])


def test_datasets(tmp_path: Path) -> None:
    datasets, missing = load_all(make_data(tmp_path), limit=60)
    assert missing == []
    names = [d.name for d in datasets]
    assert names == ["SEQ-01", "SEQ-02", "E-mini S&P 500 ticks", "GBP/USD 1-min bars"]
    seq, _, ticks, bars = datasets
    assert (seq.kind, len(seq.values), seq.streams, len(seq.starts) - 1) == (
        "boxes",
        2 * FRAMES - 2,
        2,
        FRAMES,
    )
    first = seq.values[0]
    assert first.tolist() == [100 + 2 + 1 + 20, 51 + 40, 40, 80]  # [cx, cy, w, h]
    assert datasets[1].times is not None
    assert datasets[1].times[:2].tolist() == [0.1, 0.1]  # frame 1 at 10 fps, both boxes of frame 1
    assert (ticks.kind, len(ticks.values)) == ("prices", 60)  # 100 distinct prices, the first 60
    assert (np.diff(ticks.values[:, 0]) != 0).all()
    assert ticks.note == "the first 60 of 100 distinct-price ticks (300 ticks; --limit 60)"
    assert ticks.scored.sum() == 58
    assert (bars.gaps.sum(), bars.scored.sum()) == (1, 200 - 3)
    assert seq.scored.sum() == 2 * FRAMES - 2 - 4  # from each track's third box
    _, missing = load_all(tmp_path / "nowhere", limit=None)
    assert len(missing) == 3


def test_one_engine_for_all_equals_one_run_each(tmp_path: Path) -> None:
    datasets, _ = load_all(make_data(tmp_path), limit=None)
    together, _ = run_trackin(datasets)
    for ds, answers in zip(datasets, together, strict=True):
        [alone], _ = run_trackin([ds])
        np.testing.assert_array_equal(alone.predictions, answers.predictions)
        np.testing.assert_array_equal(alone.warming, answers.warming)


def test_boxes_carry_their_frames_and_prices_no_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets, _ = load_all(make_data(tmp_path), limit=None)
    observe = Engine.observe
    seen: list[float | None] = []

    def recording(
        self: Engine, ids: Sequence[str], inputs: Sequence[np.ndarray], targets: Any, times: Any = None
    ) -> Any:
        seen.extend(times)
        return observe(self, ids, inputs, targets, times)

    monkeypatch.setattr(Engine, "observe", recording)
    prices = next(d for d in datasets if d.kind == "prices")
    boxes = next(d for d in datasets if d.kind == "boxes")
    _, timed = run_trackin([prices])
    assert timed
    assert seen == [None] * len(prices.values), "prices: one step per tick"
    seen.clear()
    run_trackin([boxes])
    assert sorted(t for t in seen if t is not None) == sorted(boxes.clock.tolist())


def test_evaluate_counts_warming_answers_as_the_last_value(tmp_path: Path) -> None:
    datasets, _ = load_all(make_data(tmp_path), limit=None)
    answers, _ = run_trackin(datasets)
    ticks = evaluate(datasets[2], answers[2])
    assert ticks.scores["last value"] == (1.0,)
    assert ticks.scores["trackin defaults"][0] < 1.0  # the bounce is learnable
    spec, _ = user_spec("prices")
    assert spec == {"model": {"family": "ar", "dim": 1}}
    assert ticks.warming == 0  # the default path forecasts from the second value on
    boxes = evaluate(datasets[0], answers[0])
    assert boxes.metrics == ("mean IoU ↑", "centre error / height ↓")
    assert boxes.scores["constant velocity"][0] > 0.9
    assert set(boxes.settings) == {"Kalman RW-AR (tuned)", "RLS (tuned)"}


@pytest.mark.parametrize("markdown", [False, True])
def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str], markdown: bool) -> None:
    data = make_data(tmp_path)
    main(["--data", str(data), *(["--markdown"] if markdown else [])])
    out = capsys.readouterr().out
    for name in ("SEQ-01", "SEQ-02", "E-mini S&P 500 ticks", "GBP/USD 1-min bars"):
        assert name in out
    assert "wall time" in out
    assert "trackin defaults: prices" in out
    if markdown:
        assert "| data set | metric | scored | trackin defaults | last value | constant velocity |" in out
    with pytest.raises(SystemExit, match="no data sets"):
        main(["--data", str(tmp_path / "nowhere")])
