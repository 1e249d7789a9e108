"""The per-stream reference the batched engine must equal: a module and its optimizer, one step at a time.

``ReferenceStream`` holds a :class:`models.families.FamilyModule` and the stream's optimizer class
(:class:`models.trackin.TrackIn`, :class:`models.baselines.DebiasedSGD` or
:class:`models.baselines.AdamBaseline`), and answers each observation the way the engine promises to: the
prediction made before learning, the loss, then exactly one optimizer step, skipped (state untouched) when the
loss or a gradient is not finite. ``ar`` streams keep their lag window in a Python list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from tests.models.reference_tracking import TrackingReference
from trackin.models.baselines import AdamBaseline, DebiasedSGD
from trackin.models.families import FamilyModule, ar_features
from trackin.models.losses import loss_per_row, prediction
from trackin.models.specs import TRACKIN_EXTRA, AdamSpec, ARModel, SGDSpec, StreamSpec, TrackInSpec
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

    def _scored(self, features: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Output and loss for one row; one step when finite. Returns (output, loss, applied)."""
        self.opt.zero_grad(set_to_none=True)
        output = self.module(features.unsqueeze(0))
        loss = loss_per_row(self.spec.loss, output, target.unsqueeze(0), self.spec.huber_delta)
        loss.sum().backward()
        grads = [p.grad for p in self.module.parameters()]
        finite = bool(torch.isfinite(loss).all()) and all(
            g is not None and bool(torch.isfinite(g).all()) for g in grads
        )
        if finite:
            self.opt.step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        return output.detach()[0], loss.detach()[0], finite

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
            output, loss, applied = self._scored(x, y.to(self.dtype))
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
                self.window.append(x.clone())
            return Outcome(None, None, self.steps, False, True, not value_finite, self._forecast())
        window = torch.stack(self.window)
        last = window[-1]
        target = x - last if model.target == "delta" else x
        output, loss, applied = self._scored(ar_features(model, window), target)
        pred = output + last if model.target == "delta" else output
        if applied:
            self.window = [*self.window[1:], x.clone()]
        return Outcome(pred.tolist(), float(loss), self.steps, applied, False, not applied, self._forecast())

    def _forecast(self) -> list[float] | None:
        model = self.spec.model
        assert isinstance(model, ARModel)
        if len(self.window) < model.window:
            return None
        window = torch.stack(self.window)
        with torch.no_grad():
            out = self.module(ar_features(model, window).unsqueeze(0))[0]
        return (out + window[-1] if model.target == "delta" else out).tolist()

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
        return out
