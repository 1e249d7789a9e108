"""The per-stream reference the batched engine must equal: a module and its optimizer, one step at a time.

``ReferenceStream`` holds a :class:`models.families.FamilyModule` and the stream's optimizer class
(:class:`models.trackin.TrackIn`, :class:`models.baselines.DebiasedSGD` or
:class:`models.baselines.AdamBaseline`), and answers each observation the way the engine promises to: the
prediction made before learning, the loss, then exactly one optimizer step, skipped (state untouched) when the
loss or a gradient is not finite. ``ar`` streams keep their lag window in a Python list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from tests.models.reference_tracking import TrackingReference
from trackin.models import naive_mix
from trackin.models import standardize as S
from trackin.models import tracking as M
from trackin.models.baselines import AdamBaseline, DebiasedSGD
from trackin.models.families import FamilyModule, ar_features
from trackin.models.losses import loss_per_row, prediction
from trackin.models.specs import (
    TRACKIN_EXTRA,
    AdamSpec,
    ARModel,
    SGDSpec,
    StreamSpec,
    TrackInSpec,
    layer_sizes,
)
from trackin.models.trackin import TrackIn

__all__ = ["Outcome", "ReferenceStream", "make_optimizer"]


def make_optimizer(spec: StreamSpec, module: FamilyModule) -> Optimizer:
    """The stream's optimizer class over the module's parameters (one group: one row of the core)."""
    opt = spec.optimizer
    params = list(module.parameters())
    if isinstance(opt, TrackInSpec):
        return TrackIn(params, **opt.model_dump(exclude={"name", *TRACKIN_EXTRA}))
    if isinstance(opt, SGDSpec):
        return DebiasedSGD(params, **opt.model_dump(exclude={"name"}))
    assert isinstance(opt, AdamSpec)
    return AdamBaseline(params, **opt.model_dump(exclude={"name"}))


@dataclass
class Outcome:
    """What the reference says about one observation (None where the engine reports NaN)."""

    prediction: list[float] | None
    loss: float | None
    step: int
    applied: bool
    warming: bool
    nonfinite: bool
    forecast: list[float] | None


@dataclass(frozen=True)
class RunningStats:
    """A running mean and variance of one stream's values, weight ``max(1 / n, ALPHA)`` on the n-th."""

    mean: Tensor
    var: Tensor
    n: int = 0

    def __init__(self, size: int = 0, dtype: torch.dtype = torch.float64, **fields: Any) -> None:
        object.__setattr__(self, "mean", fields.get("mean", torch.zeros(size, dtype=dtype)))
        object.__setattr__(self, "var", fields.get("var", torch.ones(size, dtype=dtype)))
        object.__setattr__(self, "n", fields.get("n", 0))

    def including(self, value: Tensor) -> RunningStats:
        n = self.n + 1
        w = max(1.0 / n, S.ALPHA)
        d = value - self.mean
        var = (1 - w) * (self.var + w * d.square())
        return RunningStats(mean=self.mean + w * d, var=var, n=min(n, round(1 / S.ALPHA)))

    def std(self) -> Tensor:
        return (self.var + torch.finfo(self.var.dtype).tiny).sqrt()

    def z(self, value: Tensor) -> Tensor:
        return (value - self.mean) / self.std()

    def finite(self) -> bool:
        return bool(torch.isfinite(self.var).all())


class ReferenceStream:
    """One stream stepped the ordinary way (on the tracking path: :class:`TrackingReference`'s way)."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.tracking = TrackingReference(spec) if spec.tracking else None
        if self.tracking is not None:
            self.steps = 0
            return
        self.dtype = getattr(torch, spec.dtype)
        self.module = FamilyModule(spec.model, self.dtype)
        self.opt = make_optimizer(spec, self.module)
        self.steps = 0
        self.window: list[Tensor] = []
        model = spec.model
        ar = isinstance(model, ARModel)
        self.norm = spec.standardize
        self.norm_target = spec.standardize and spec.loss != "bce"
        n_in = model.dim if ar else layer_sizes(model)[0]
        self.x_stats = RunningStats(n_in, self.dtype)  # ar: the series' (values or changes)
        self.y_stats = self.x_stats if ar else RunningStats(layer_sizes(model)[-1], self.dtype)
        # a first-order series' naive mix: discounted absolute errors of the model and of no change
        self.mix = ar and spec.mix_naive and spec.loss != "bce"
        k = model.dim if ar else 0
        self.mix_model, self.mix_naive = torch.zeros(k, dtype=self.dtype), torch.zeros(k, dtype=self.dtype)
        self.mix_n = 0.0
        self.model_served = torch.zeros(k, dtype=self.dtype)

    def _scored(
        self,
        features: Tensor,
        target: Tensor,
        learn_target: Tensor,
        y_before: RunningStats | None,
        stats_finite: bool = True,
        naive: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, bool]:
        """Served output and loss (the user's units) for one row; one step on ``learn_target`` when finite
        (and the statistics including this observation are). ``y_before``: the target's statistics before
        this observation (standardised targets), else None. ``naive``: the naive forecast the model's is
        mixed with (a first-order series; the model's own is kept in ``model_served``). Returns (served
        output, loss, applied)."""
        self.opt.zero_grad(set_to_none=True)
        output = self.module(features.unsqueeze(0))
        if y_before is not None:  # the step learns at most CLIP standard deviations from the output
            learn_target = output.detach()[0] + (learn_target - output.detach()[0]).clamp(-S.CLIP, S.CLIP)
            served = y_before.mean + y_before.std() * output.detach()[0].clamp(-S.BOUND, S.BOUND)
        else:
            served = output.detach()[0]
        self.model_served = served  # the model's own forecast, before the mix
        if naive is not None:
            served = naive + self._share() * (served - naive)
        learning = loss_per_row(self.spec.loss, output, learn_target.unsqueeze(0), self.spec.huber_delta)
        learning.sum().backward()
        loss = loss_per_row(self.spec.loss, served.unsqueeze(0), target.unsqueeze(0), self.spec.huber_delta)
        grads = [p.grad for p in self.module.parameters()]
        finite = stats_finite and bool(torch.isfinite(loss).all())
        finite = finite and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            self.opt.step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        return served, loss.detach()[0], finite

    def observe(self, x: Tensor, y: Tensor | None = None, ts: float | None = None) -> Outcome:
        if self.tracking is not None:
            o = self.tracking.observe(x, y, ts)
            self.steps += o.applied
            first = o.prediction is None and not o.nonfinite
            return Outcome(o.prediction, o.loss, self.steps, o.applied, first, o.nonfinite, o.forecast)
        x = x.to(self.dtype)
        model = self.spec.model
        if not isinstance(model, ARModel):
            assert y is not None
            y = y.to(self.dtype)
            features, learn_target, y_before = x, y, None
            x_after, y_after = self.x_stats.including(x), self.y_stats.including(y)
            if self.norm:
                features = x_after.z(x).clamp(-S.FEATURE_CLIP, S.FEATURE_CLIP)
            if self.norm_target:
                learn_target, y_before = y_after.z(y), self.y_stats
            kept = (not self.norm or x_after.finite()) and (not self.norm_target or y_after.finite())
            output, loss, applied = self._scored(features, y, learn_target, y_before, kept)
            if applied and self.norm:
                self.x_stats = x_after
                if self.norm_target:
                    self.y_stats = y_after
            return Outcome(
                prediction(self.spec.loss, output).tolist(),
                float(loss),
                self.steps,
                applied,
                False,
                not applied,
                None,
            )
        ready = len(self.window) == model.window
        if not ready:
            value_finite = bool(torch.isfinite(x).all())
            if value_finite:
                if self.norm and (model.target == "level" or self.window):
                    after = self.x_stats.including(x - self.window[-1] if model.target == "delta" else x)
                    if after.finite():
                        self.x_stats = after
                self.window.append(x.clone())
            return Outcome(None, None, self.steps, False, True, not value_finite, self._forecast())
        window = torch.stack(self.window)
        last = window[-1]
        target = x - last if model.target == "delta" else x
        after = self.x_stats.including(target)
        learn_target, y_before = (after.z(target), self.x_stats) if self.norm_target else (target, None)
        features = self._inputs(window)
        kept = not self.norm or after.finite()
        naive = (torch.zeros_like(target) if model.target == "delta" else last) if self.mix else None
        served, loss, applied = self._scored(features, target, learn_target, y_before, kept, naive)
        pred = served + last if model.target == "delta" else served
        if applied:
            self.window = [*self.window[1:], x.clone()]
            if self.norm:
                self.x_stats = after
            if naive is not None:
                self.mix_model = (
                    naive_mix.MIX_RHO * self.mix_model + (target - self.model_served).abs() ** M.MIX_POWER
                )
                self.mix_naive = naive_mix.MIX_RHO * self.mix_naive + (target - naive).abs() ** M.MIX_POWER
                self.mix_n = naive_mix.MIX_RHO * self.mix_n + 1
        return Outcome(pred.tolist(), float(loss), self.steps, applied, False, not applied, self._forecast())

    def _share(self) -> Tensor:
        """The model's share of a first-order series' served forecast (per dim)."""
        if self.steps < naive_mix.MIX_WARMUP:
            return torch.zeros_like(self.mix_model)
        total = (self.mix_model + self.mix_naive).clamp_min(torch.finfo(self.dtype).tiny)
        advantage = 2 * self.mix_n * (self.mix_naive - self.mix_model) / total
        return torch.sigmoid(M.MIX_ETA * advantage - naive_mix.MIX_BIAS)

    def _inputs(self, window: Tensor) -> Tensor:
        """An ``ar`` model's inputs: the window's features, standardised by the series' statistics."""
        model = self.spec.model
        assert isinstance(model, ARModel)
        feats = ar_features(model, window)
        if not self.norm:
            return feats
        z = self.x_stats.z(feats.view(model.lags, model.dim))
        return z.clamp(-S.FEATURE_CLIP, S.FEATURE_CLIP).flatten()

    def _forecast(self) -> list[float] | None:
        model = self.spec.model
        assert isinstance(model, ARModel)
        if len(self.window) < model.window:
            return None
        window = torch.stack(self.window)
        with torch.no_grad():
            out = self.module(self._inputs(window).unsqueeze(0))[0]
        if self.norm_target:
            out = self.x_stats.mean + self.x_stats.std() * out.clamp(-S.BOUND, S.BOUND)
        level = out + window[-1] if model.target == "delta" else out
        if self.mix:
            level = window[-1] + self._share() * (level - window[-1])
        return level.tolist()

    def state(self) -> dict[str, Tensor]:
        """Parameters and optimizer state under the engine's export keys."""
        out: dict[str, Tensor] = {}
        if self.tracking is not None:
            named = [("weight", self.tracking.weight)]
            opt: Optimizer = self.tracking.opt
        else:
            named = list(self.module.params.items())
            opt = self.opt
        for name, p in named:
            out[f"param/{name}"] = p.detach().clone()
            st = opt.state.get(p, {})
            for key, engine_key in (
                ("momentum", "momentum"),
                ("momentum_buffer", "momentum"),
                ("eps", "eps"),
                ("exp_avg", "exp_avg"),
                ("exp_avg_sq", "exp_avg_sq"),
            ):
                if key in st:
                    out[f"opt/{engine_key}/{name}"] = st[key].detach().clone()
            if "sq_avg" in st:
                out["opt/sq_avg"] = st["sq_avg"].detach().clone()
            if "step" in st:
                out["opt/step"] = st["step"].detach().clone()
        if self.tracking is None and self.norm:
            stats = [("x", self.x_stats)] + (
                [("y", self.y_stats)] if self.y_stats is not self.x_stats else []
            )
            for name, kept in stats:
                if name == "x" or self.norm_target:
                    out[f"norm/{name}_mean"], out[f"norm/{name}_var"] = kept.mean, kept.var
            out["norm/n"] = torch.tensor(float(self.x_stats.n), dtype=self.dtype)
        if self.tracking is None and self.mix:
            out["mix/model"], out["mix/naive"] = self.mix_model, self.mix_naive
            out["mix/n"] = torch.tensor(self.mix_n, dtype=self.dtype)
        return out
