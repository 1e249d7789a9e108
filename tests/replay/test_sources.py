"""The readers of ``trackin replay``: formats, filters, times, and clear errors for what they cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trackin.replay.errors import InputError
from trackin.replay.sources import EXPECTED_HEADERS, detect_format, is_mot15, read_mot, read_steps


def write_mot15(path: Path, world: bool = False) -> int:
    """MOT15 ground truth: ``frame,id,box,conf,x,y,z``; world coordinates (floats) or -1 where MOT17 has
    the class. Two objects for 20 frames, and one row with conf 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in range(1, 21):
        for obj in (1, 2):
            xyz = f"{3.5 * f},{-2.25 * obj},0" if world else "-1,-1,-1"
            rows.append(f"{f},{obj},{100 * obj + 3 * f + f % 2},{50 + f},40,90,1,{xyz}")
    rows.append("5,9,10,10,5,5,0,-1,-1,-1")
    path.write_text("\n".join(rows) + "\n")
    return 40


@pytest.mark.parametrize("world", [False, True])
def test_mot15_is_filtered_on_its_confidence(tmp_path: Path, world: bool) -> None:
    gt = tmp_path / "TUD-Stadtmitte" / "gt" / "gt.txt"
    n = write_mot15(gt, world)
    assert detect_format(gt) == "mot"
    steps = read_mot(gt)
    assert (steps.name, len(steps), sorted(set(steps.keys))) == ("TUD-Stadtmitte", n, ["1", "2"])


def test_mot15_detection() -> None:
    mot17 = np.array([[1, 1, 0, 0, 5, 5, 1, 1, 0.5], [1, 2, 0, 0, 5, 5, 0, 7, 1.0]])
    assert not is_mot15(mot17)
    assert is_mot15(np.c_[mot17[:, :7], -np.ones((2, 3))])  # 10 columns
    assert is_mot15(np.c_[mot17[:, :7], [[-1.0], [-1.0]], [[0.0], [0.0]]])  # -1 is no class
    assert is_mot15(np.c_[mot17[:, :7], [[3.25], [1.0]], [[0.0], [0.0]]])  # nor is a coordinate


def test_nothing_left_after_the_filter_is_an_error(tmp_path: Path) -> None:
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,0,0,5,5,0,1,1\n2,1,0,0,5,5,1,3,1\n")  # consider 0; a class-3 object
    with pytest.raises(InputError, match=r"no boxes to replay: none of its 2 rows passes the MOT16/17"):
        read_mot(gt)
    gt.write_text("")
    with pytest.raises(InputError, match="unrecognised first line"):
        read_steps(gt)
    with pytest.raises(InputError, match="expected rows frame,id"):
        read_steps(gt, "mot")


def test_quotes_take_the_mid(tmp_path: Path) -> None:
    path = tmp_path / "eurusd.csv"
    path.write_text(
        "timestamp,bid,ask\n2024-01-02T00:00:00Z,1.1000,1.1002\n2024-01-02T00:00:01Z,1.1001,1.1004\n"
    )
    steps = read_steps(path)
    assert steps.format == "quotes"
    assert steps.values[:, 0] == pytest.approx([1.1001, 1.10025])
    assert steps.times is not None
    assert steps.times.tolist() == [1704153600.0, 1704153601.0]


def test_times(tmp_path: Path) -> None:
    naive = tmp_path / "a.csv"
    naive.write_text("DateTime,Price\n2013-09-01 17:00:00.083,1.0\n2013-09-01 17:00:01.583,2.0\n")
    times = read_steps(naive).times
    assert times is not None
    assert np.diff(times).tolist() == pytest.approx([1.5])
    seconds = tmp_path / "b.csv"
    seconds.write_text("time,close\n10,1.0\n70,2.0\n")
    assert read_steps(seconds).times is not None
    assert (read_steps(seconds).times == [10.0, 70.0]).all()  # type: ignore[union-attr]
    untimed = tmp_path / "c.csv"
    untimed.write_text("symbol,price\nES,1.0\nES,2.0\n")
    assert read_steps(untimed).times is None


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("time,value\n1,2\n", "auto", "unrecognised first line 'time,value'"),
        ("timestamp,open,high,low,close\n1,1,1,1,1\n", "ticks", "has no price column for --format ticks"),
        ("timestamp,bid\n1,1\n", "quotes", "has no bid and ask column"),
        ("DateTime,Price,Volume\n", "auto", "no prices after the header"),
        ("DateTime,Price,Volume\n1,2,3\n2,,3\n", "auto", "line 3: no number in column"),
        ("DateTime,Price,Volume\n1,inf,3\n", "auto", "line 2: price inf is not finite"),
    ],
)
def test_unreadable_prices_are_clear_errors(tmp_path: Path, text: str, fmt: str, message: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as raised:
        read_steps(path, fmt)  # type: ignore[arg-type]
    if "has no" in message or "unrecognised" in message:
        assert EXPECTED_HEADERS in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        read_steps(tmp_path / "nothing.csv")
