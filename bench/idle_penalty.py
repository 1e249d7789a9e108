"""What a cold CPU costs on this machine: the same small piece of Python and NumPy work, timed back to back
and after the process slept for a while.

A request answered alone (the paced WebSocket row of bench.http, a lone REST call) runs on a core that was
idle a moment before. On a virtual machine that core may have been handed to another guest meanwhile, so
caches, TLB and branch predictors start cold, and the same code takes longer. This prints how much longer,
so the paced-latency and CPU-per-request figures of the other benchmarks can be read against it.

    .venv/bin/python -m bench.idle_penalty [--calls 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

__all__ = ["main"]

GAPS_MS = (0.0, 0.25, 1.0, 4.0)


def _work() -> int:
    """About what one small request costs: dict and string work, a few small NumPy calls."""
    table = {str(i): i * 2 for i in range(300)}
    values = np.arange(100.0)
    return len(table) + int(np.isnan(values).any()) + int((values * 2).sum() > 0)


def _timed(gap: float, calls: int) -> np.ndarray:
    spent = np.empty(calls)
    clock = time.perf_counter
    for k in range(calls):
        if gap:
            time.sleep(gap)
        started = clock()
        _work()
        spent[k] = clock() - started
    return spent[calls // 8 :] * 1e6  # past the first calls' warm-up


def main(argv: list[str] | None = None) -> int:
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.idle_penalty", description=description)
    parser.add_argument("--calls", type=int, default=400, help="timed calls per gap")
    args = parser.parse_args(argv)
    rows = [(gap, _timed(gap / 1e3, args.calls)) for gap in GAPS_MS]
    base = float(np.median(rows[0][1]))
    print(f"{'sleep before each call':>24} {'median us':>10} {'p90 us':>8} {'x back to back':>15}")
    for gap, spent in rows:
        median = float(np.median(spent))
        print(f"{gap:21.2f} ms {median:10.1f} {np.percentile(spent, 90):8.1f} {median / base:15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
