"""One round of a pool on the scale-free, preconditioned path (:mod:`models.tracking`).

The same frame as :class:`models.round.Round` (gather, step, restore what was not taken, drift, scatter),
reusing its optimizer step and drift detector; the model, the loss and the preconditioned gradient are
:func:`models.tracking.step`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from trackin.models import functional as F
from trackin.models import keys, tracking
from trackin.models.figures import LOSS_EWMA_ALPHA
from trackin.models.hyper import Hyperparameters
from trackin.models.layout import BOOL, FLOAT, INT, PackedState
from trackin.models.losses import Loss
from trackin.models.round import Round
from trackin.models.rows import Blocks, Settings
from trackin.models.specs import ModelSpec, StreamSpec, forgets

__all__ = ["TrackingNet", "TrackingRound"]


class TrackingNet:
    """The weights of a tracking pool: one ``[outputs, features]`` matrix per stream (``Round``'s view)."""

    closed_form = True

    def __init__(self, model: ModelSpec, heads: int = 1) -> None:
        self.model = model
        self.layout = tracking.layout(model, heads)
        lay = self.layout
        self.shapes = {"weight": (lay.heads * lay.outputs, lay.features)}  # the heads' weights stacked
        self.n_params = math.prod(self.shapes["weight"])
        self.out_dim = self.layout.outputs


class TrackingRound(Round):
    """The per-round step of a tracking pool; ``__call__`` steps the distinct slots ``s`` once each."""

    def __init__(
        self,
        packed: PackedState,
        net: TrackingNet,
        loss: Loss,
        hyper: Hyperparameters,
        buffers: Sequence[str],
        settings: Settings,
        spec: StreamSpec,
    ) -> None:
        super().__init__(packed, net, loss, hyper, buffers, settings)  # type: ignore[arg-type]
        self.layout = net.layout
        self._forgets = forgets(spec.optimizer)
        self._forget = torch.tensor(self._forgets, dtype=packed.dtypes[FLOAT], device=packed.device)
        self._standardize = spec.standardize
        self._mix_naive = spec.mix_naive
        float_keys = [(k, c) for k, c in packed.columns.items() if c.kind == FLOAT]
        self._float_keys = float_keys
        self._series_cols: tuple[int, int] | None = None  # where a series' first value is kept
        if self.layout.kind != "linear":
            columns = packed.columns
            self._series_cols = (columns[keys.SERIES_LAST].start, columns[keys.SERIES_SEEN].stop)

    def views(self, f: Tensor) -> dict[str, Tensor]:
        """Named views ``[rows, *shape]`` of a gathered float block."""
        n = f.shape[0]
        return {
            k: f[:, c.start] if c.shape == () else f[:, c.start : c.stop].view(n, *c.shape)
            for k, c in self._float_keys
        }

    def __call__(
        self, s: Tensor, x: Tensor, y: Tensor | None, *, sync_free: bool, ts: Tensor | None = None
    ) -> dict[str, Tensor]:
        packed, col, lay = self._packed, self._col, self.layout
        f0, i0 = packed.gather(s, FLOAT), packed.gather(s, INT)
        f, i = f0.clone(), i0.clone()
        b = packed.gather(s, BOOL) if self._settings.need_bool else None
        blocks: Blocks = (f, i, b)
        hd = self._settings.value(keys.HUBER_DELTA, blocks)
        assert not isinstance(hd, bool | int)
        v = self.views(f)
        stats: list[F.StepStats] = []

        def optimizer_step(grad: Tensor) -> None:
            stats.append(self._optimizer_step(blocks, grad))

        out = tracking.step(
            lay,
            v,
            x,
            y,
            ts,
            forget=self._forget,
            standardize=self._standardize,
            mix_naive=self._mix_naive,
            optimizer_step=optimizer_step,
        )
        ok, first, nonfinite = out["ok"], out["first"], out["nonfinite"]
        target = y if lay.kind == "linear" else x
        assert target is not None
        loss = self._loss(out["served"], target, hd)
        model_loss = self._loss(out["model"], target, hd)
        naive_loss = self._loss(out["naive"], target, hd)
        (st,) = stats
        ewma = _ewma(f[:, col[keys.LOSS_EWMA][0]], loss)
        a, z = col[keys.FIGURES[0]][0], col[keys.FIGURES[-1]][1]
        f[:, a:z] = torch.stack([loss, ewma, st.grad_norm, st.beta, st.eps_norm], 1)
        a, z = col[keys.SKILL_FIGURES[0]][0], col[keys.SKILL_FIGURES[-1]][1]
        skill = [
            _ewma(f[:, col[keys.MODEL_LOSS][0]], model_loss),
            _ewma(f[:, col[keys.NAIVE_LOSS][0]], naive_loss),
            out["weight"].mean(1),
        ]
        f[:, a:z] = torch.stack(skill, 1)
        # Only a step changes a row; a series' first value only sets where the series starts.
        okc = ok.unsqueeze(1)
        f_new = torch.where(okc, f, f0)
        if self._series_cols is not None:
            a, z = self._series_cols
            f_new[:, a:z] = torch.where((ok | first).unsqueeze(1), f[:, a:z], f0[:, a:z])
        i_new = torch.where(okc, i, i0)
        blocks = (f_new, i_new, b)
        i_new[:, col[keys.NONFINITE][0]] += nonfinite
        step = i_new[:, col[keys.STEP][0]]
        result = {
            "pred": out["served"].where(okc, torch.nan),
            "loss": loss.where(ok, torch.nan),
            "warming": first,
            "drift": self._drift(blocks, ok, loss, step),
            "step": step,
            "applied": ok,
            "nonfinite": nonfinite,
        }
        if lay.kind != "linear":
            result["forecast"] = tracking.forecast(lay, self.views(f_new), self._mix_naive)
        packed.scatter(s, FLOAT, f_new)
        packed.scatter(s, INT, i_new)
        return result

    def predict(self, s: Tensor, x: Tensor | None) -> Tensor:
        """Served predictions without learning: linear for inputs ``x``, series the next forecast."""
        v = self.views(self._packed.gather(s, FLOAT))
        if self.layout.kind == "linear":
            assert x is not None
            return tracking.linear_served(
                self.layout,
                v,
                x,
                forget=self._forget,
                standardize=self._standardize,
                mix_naive=self._mix_naive,
            )
        return tracking.forecast(self.layout, v, self._mix_naive)


def _ewma(previous: Tensor, value: Tensor) -> Tensor:
    return torch.where(previous.isnan(), value, previous.lerp(value, LOSS_EWMA_ALPHA))
