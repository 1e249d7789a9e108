"""The served app applies its thread settings to the process when it starts (service/threads.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from trackin.service.app import create_app
from trackin.service.settings import Settings


async def test_the_app_sets_the_gil_switch_interval_and_torch_threads(tmp_path: Path) -> None:
    before = sys.getswitchinterval(), torch.get_num_threads()
    settings = Settings(store="memory", data_dir=tmp_path, gil_switch_interval_ms=0.3, torch_threads=2)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            assert abs(sys.getswitchinterval() - 0.0003) < 1e-9
            assert torch.get_num_threads() == 2
    finally:
        sys.setswitchinterval(before[0])
        torch.set_num_threads(before[1])
