"""A pool of streams that share one model structure, loss, optimizer kind and dtype, in stacked tensors.

Every per-stream quantity (parameters, optimizer state, hyperparameters, the ``ar`` lag window, running
figures, drift detector) is a row of one tensor in ``StreamPool.state``; dimension 0 is the slot. One call to
:meth:`StreamPool.observe` steps all the streams of a batch with one vectorised update per round (a round
holds at most one observation per stream), using the same functional core as :class:`models.TrackIn`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import functional as F
from .drift import page_hinkley
from .families import ar_features, init_params, param_shapes, stacked_forward
from .losses import loss_per_row, prediction
from .specs import AdamSpec, ARModel, SGDSpec, StreamSpec, TrackInSpec, layer_sizes

__all__ = ["LOSS_EWMA_ALPHA", "ObserveResult", "StreamPool"]

LOSS_EWMA_ALPHA = 0.05
"""Weight of the newest loss in a stream's loss EWMA (about the last 20 observations)."""

_HYPER = {
    "trackin": (
        "lr",
        "gamma",
        "beta",
        "beta_rule",
        "debias",
        "eta",
        "eps_decay",
        "weight_decay",
        "max_grad_norm",
    ),
    "sgd": ("lr", "momentum", "dampening", "debias", "weight_decay", "max_grad_norm"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm"),
}
_FIGURES = ("last_loss", "loss_ewma", "grad_norm", "beta", "eps_norm")
_COUNTERS = ("nonfinite", "drift/count", "drift/last_step", "drift/n")


@dataclass(frozen=True, slots=True)
class ObserveResult:
    """Per-observation outcomes, in input order, on the host (one copy per batch)."""

    predictions: Tensor  # [n, out] made before learning; NaN for warming ar streams
    losses: Tensor  # [n]; NaN where nothing was scored
    steps: Tensor  # [n] the stream's step count after this observation
    applied: Tensor  # [n] bool: one optimizer step was taken
    warming: Tensor  # [n] bool: ar stream still filling its lag window (no step)
    nonfinite: Tensor  # [n] bool: loss or gradient not finite, state left as it was
    drift: Tensor  # [n] bool: the drift detector fired on this observation
    forecasts: Tensor | None  # [n, dim] next forecast of ar streams (NaN until the window is full)


def _occurrence_rounds(slots: np.ndarray) -> list[np.ndarray]:
    """Positions split into rounds so that each round holds a stream at most once, in arrival order."""
    if slots.size == 0:
        return []
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_slots)) + 1]
    run_id = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, sorted_slots.size]))
    occurrence = np.empty_like(slots)
    occurrence[order] = np.arange(sorted_slots.size) - starts[run_id]
    if occurrence.max() == 0:
        return [np.arange(slots.size)]
    return [np.flatnonzero(occurrence == r) for r in range(int(occurrence.max()) + 1)]


class StreamPool:
    """Streams of one pool key (see :meth:`StreamSpec.pool_key`), stacked along dimension 0 (the slot)."""

    def __init__(self, template: StreamSpec, device: torch.device | str = "cpu", capacity: int = 16) -> None:
        self.template = template
        self.model = template.model
        self.device = torch.device(device)
        self.dtype = getattr(torch, template.dtype)
        self.optimizer = template.optimizer.name
        self.param_names = list(param_shapes(self.model))
        self.out_dim = layer_sizes(self.model)[-1]
        self.capacity = 0
        self.state: dict[str, Tensor] = {}
        self._free: list[int] = []
        self._layout = self._state_layout()
        self._grow(max(1, capacity))

    # ----- layout and slots -------------------------------------------------------------------------------

    def _state_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Every stacked tensor's per-stream shape and dtype."""
        dt, i64, b = self.dtype, torch.int64, torch.bool
        layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        shapes = param_shapes(self.model)
        for name, shape in shapes.items():
            layout[f"param/{name}"] = (shape, dt)
        opt = self.template.optimizer
        slots_per_param: list[str] = []
        if isinstance(opt, TrackInSpec):
            slots_per_param = ["momentum"] + (["eps"] if opt.eta > 0 else [])
            layout["opt/sq_avg"] = ((), dt)
        elif isinstance(opt, SGDSpec) and opt.momentum > 0:
            slots_per_param = ["momentum"]
        elif isinstance(opt, AdamSpec):
            slots_per_param = ["exp_avg", "exp_avg_sq"]
        for kind in slots_per_param:
            for name, shape in shapes.items():
                layout[f"opt/{kind}/{name}"] = (shape, dt)
        layout["opt/step"] = ((), i64)
        for h in _HYPER[self.optimizer]:
            layout[f"hyper/{h}"] = ((), i64 if h == "beta_rule" else b if h == "debias" else dt)
        layout["hyper/huber_delta"] = ((), dt)
        if isinstance(self.model, ARModel):
            layout["ar/window"] = ((self.model.window, self.model.dim), dt)
            layout["ar/filled"] = ((), i64)
        for f in _FIGURES:
            layout[f"fig/{f}"] = ((), dt)
        layout["fig/nonfinite"] = ((), i64)
        for f in ("mean", "total", "min", "delta", "threshold"):
            layout[f"drift/{f}"] = ((), dt)
        for f in ("n", "count", "last_step", "warmup"):
            layout[f"drift/{f}"] = ((), i64)
        layout["drift/enabled"] = ((), b)
        layout["drift/reset"] = ((), b)
        return layout

    def _grow(self, capacity: int) -> None:
        """Reallocate every stacked tensor to ``capacity`` rows (amortised doubling by the caller)."""
        for key, (shape, dtype) in self._layout.items():
            new = torch.zeros((capacity, *shape), dtype=dtype, device=self.device)
            if key in self.state:
                new[: self.capacity].copy_(self.state[key])
            self.state[key] = new
        self._free.extend(range(capacity - 1, self.capacity - 1, -1))
        self.capacity = capacity

    @property
    def size(self) -> int:
        """Streams resident in the pool."""
        return self.capacity - len(self._free)

    def used_mask(self) -> Tensor:
        """``[capacity]`` bool: which slots hold a stream."""
        mask = torch.ones(self.capacity, dtype=torch.bool, device=self.device)
        if self._free:
            mask[torch.as_tensor(self._free, dtype=torch.int64, device=self.device)] = False
        return mask

    def state_bytes(self) -> int:
        """Bytes of the stacked tensors (all slots, used or free)."""
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def add(self, spec: StreamSpec) -> int:
        """Place a new stream in a free slot (growing by doubling when full), initialised from its spec."""
        if spec.pool_key() != self.template.pool_key():
            raise ValueError("spec does not belong to this pool")
        if not self._free:
            self._grow(self.capacity * 2)
        slot = self._free.pop()
        for tensor in self.state.values():
            tensor[slot].zero_()
        for name, value in init_params(spec.model, self.dtype, self.device).items():
            self.state[f"param/{name}"][slot].copy_(value)
        opt = spec.optimizer.model_dump()
        for h in _HYPER[self.optimizer]:
            raw = opt[h]
            if h == "beta_rule":
                raw = F.beta_rule_code(raw)
            elif h == "max_grad_norm" and raw is None:
                raw = float("inf")
            self.state[f"hyper/{h}"][slot].fill_(raw)
        self.state["hyper/huber_delta"][slot].fill_(spec.huber_delta)
        d = spec.drift
        for key, setting in (
            ("delta", d.delta),
            ("threshold", d.threshold),
            ("warmup", d.warmup),
            ("enabled", d.enabled),
            ("reset", d.reset_momentum),
        ):
            self.state[f"drift/{key}"][slot].fill_(setting)
        for f in ("last_loss", "loss_ewma", "grad_norm", "beta", "eps_norm"):
            self.state[f"fig/{f}"][slot].fill_(float("nan"))
        return slot

    def remove(self, slot: int) -> None:
        """Free a slot for reuse."""
        if slot in self._free or not 0 <= slot < self.capacity:
            raise KeyError(slot)
        self._free.append(slot)

    def export(self, slot: int) -> dict[str, Tensor]:
        """One stream's complete state, as CPU tensors (for checkpoints)."""
        return {key: tensor[slot].detach().cpu().clone() for key, tensor in self.state.items()}

    def load(self, slot: int, state: Mapping[str, Tensor]) -> None:
        """Overwrite one stream's state with an exported one (all keys required, shapes checked)."""
        missing = set(self.state) - set(state)
        if missing:
            raise KeyError(f"state lacks {sorted(missing)}")
        for key, tensor in self.state.items():
            value = state[key]
            if tuple(value.shape) != tuple(tensor.shape[1:]):
                raise ValueError(f"{key}: shape {tuple(value.shape)}, expected {tuple(tensor.shape[1:])}")
            tensor[slot].copy_(value)

    # ----- learning ---------------------------------------------------------------------------------------

    def predict(self, slots: np.ndarray, inputs: Tensor | None = None) -> Tensor:
        """Predictions without learning: ``[n, out]`` on the host. For ``ar`` pools, the current forecast."""
        s = torch.as_tensor(slots, dtype=torch.int64).to(self.device)
        params = {n: self.state[f"param/{n}"].index_select(0, s) for n in self.param_names}
        with torch.no_grad():
            if isinstance(self.model, ARModel):
                window = self.state["ar/window"].index_select(0, s)
                full = self.state["ar/filled"].index_select(0, s) >= self.model.window
                out = self._ar_level(params, window)
                out = out.where(full.unsqueeze(-1), torch.nan)
            else:
                assert inputs is not None
                out = prediction(
                    self.template.loss, stacked_forward(self.model, params, inputs.to(params["weight0"]))
                )
        return out.cpu()

    def observe(self, slots: np.ndarray, inputs: Tensor, targets: Tensor | None = None) -> ObserveResult:
        """Predict, score and step once per observation, in arrival order.

        ``inputs``: ``[n, in]`` features (``ar``: ``[n, dim]`` newly arrived values); ``targets``:
        ``[n, out]`` (None for ``ar``, whose target is the arriving value).
        """
        n = int(slots.size)
        dev, dt = self.device, self.dtype
        inputs = inputs.to(device=dev, dtype=dt)
        targets = targets.to(device=dev, dtype=dt) if targets is not None else None
        is_ar = isinstance(self.model, ARModel)
        out = {
            "pred": torch.full((n, self.out_dim), torch.nan, dtype=dt, device=dev),
            "loss": torch.full((n,), torch.nan, dtype=dt, device=dev),
            "step": torch.zeros(n, dtype=torch.int64, device=dev),
            "applied": torch.zeros(n, dtype=torch.bool, device=dev),
            "warming": torch.zeros(n, dtype=torch.bool, device=dev),
            "nonfinite": torch.zeros(n, dtype=torch.bool, device=dev),
            "drift": torch.zeros(n, dtype=torch.bool, device=dev),
        }
        if is_ar:
            out["forecast"] = torch.full((n, self.out_dim), torch.nan, dtype=dt, device=dev)
        for positions in _occurrence_rounds(slots):
            pos = torch.as_tensor(positions, dtype=torch.int64).to(dev)
            s = torch.as_tensor(slots[positions], dtype=torch.int64).to(dev)
            x = inputs.index_select(0, pos)
            y = targets.index_select(0, pos) if targets is not None else None
            for key, value in self._round(s, x, y).items():
                out[key].index_copy_(0, pos, value)
        host = {k: v.cpu() for k, v in out.items()}
        return ObserveResult(
            predictions=host["pred"],
            losses=host["loss"],
            steps=host["step"],
            applied=host["applied"],
            warming=host["warming"],
            nonfinite=host["nonfinite"],
            drift=host["drift"],
            forecasts=host.get("forecast"),
        )

    def _ar_level(self, params: Mapping[str, Tensor], window: Tensor) -> Tensor:
        """Forecast of the next level from a full window."""
        assert isinstance(self.model, ARModel)
        out = stacked_forward(self.model, params, ar_features(self.model, window))
        return out + window[:, -1] if self.model.target == "delta" else out

    def _round(self, s: Tensor, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """One vectorised step for distinct slots ``s``; returns per-row outcomes."""
        model = self.model
        rows = {k: v.index_select(0, s) for k, v in self.state.items()}
        params = {n: rows[f"param/{n}"].requires_grad_() for n in self.param_names}
        rows_n = s.shape[0]
        result: dict[str, Tensor] = {}
        with torch.enable_grad():
            if isinstance(model, ARModel):
                window = rows["ar/window"]
                ready = rows["ar/filled"] >= model.window
                feats = ar_features(model, window)
                last = window[:, -1]
                target = x - last if model.target == "delta" else x
                output = stacked_forward(model, params, feats)
                pred = output + last if model.target == "delta" else output
            else:
                ready = torch.ones(rows_n, dtype=torch.bool, device=s.device)
                assert y is not None
                target = y
                output = stacked_forward(model, params, x)
                pred = prediction(self.template.loss, output)
            loss = loss_per_row(self.template.loss, output, target, rows["hyper/huber_delta"])
            grads = torch.autograd.grad(loss.sum(), list(params.values()))
        loss = loss.detach()
        pred = pred.detach()
        for p in params.values():
            p.requires_grad_(False)
        finite = torch.isfinite(loss)
        for g in grads:
            finite &= torch.isfinite(g.flatten(1)).all(1)
        ok = ready & finite
        stats = self._optimizer_step(rows, list(grads))

        # Commit the stepped state only where a finite step was taken; elsewhere keep the rows unchanged.
        for key in self.state:
            if key.startswith(("param/", "opt/")):
                self._scatter(key, s, ok, rows[key])

        value_finite = torch.isfinite(x).flatten(1).all(1) if isinstance(model, ARModel) else ok
        if isinstance(model, ARModel):
            pushed = (~ready & value_finite) | ok
            new_window = torch.cat([window[:, 1:], x.unsqueeze(1)], dim=1)
            self._scatter("ar/window", s, pushed, new_window)
            filled = (rows["ar/filled"] + 1).clamp(max=model.window)
            self._scatter("ar/filled", s, pushed, filled)
            stepped = {n: self.state[f"param/{n}"].index_select(0, s) for n in self.param_names}
            full = filled >= model.window
            with torch.no_grad():
                forecast = self._ar_level(stepped, torch.where(pushed.view(-1, 1, 1), new_window, window))
            has_forecast = torch.where(pushed, full, ready)
            result["forecast"] = forecast.where(has_forecast.unsqueeze(-1), torch.nan)
            result["warming"] = ~ready
        else:
            result["warming"] = torch.zeros_like(ok)

        self._update_figures(s, rows, ok, ready & ~finite, loss, stats)
        result["drift"] = self._update_drift(s, rows, ok, loss)
        result["pred"] = pred.where(ready.unsqueeze(-1), torch.nan)
        result["loss"] = loss.where(ready, torch.nan)
        result["step"] = self.state["opt/step"].index_select(0, s)
        result["applied"] = ok
        result["nonfinite"] = ready & ~finite
        return result

    def _scatter(self, key: str, s: Tensor, mask: Tensor, new: Tensor) -> None:
        """Write ``new`` rows into slots ``s`` where ``mask``; other rows keep their current value."""
        target = self.state[key]
        current = target.index_select(0, s)
        m = mask.view(-1, *([1] * (new.dim() - 1)))
        target.index_copy_(0, s, torch.where(m, new.to(target.dtype), current))

    def _optimizer_step(self, rows: dict[str, Tensor], grads: list[Tensor]) -> F.StepStats:
        """The functional core on the gathered rows (in place on ``rows``)."""
        names = self.param_names
        params = [rows[f"param/{n}"] for n in names]
        h = {k.removeprefix("hyper/"): v for k, v in rows.items() if k.startswith("hyper/")}

        def per_param(kind: str) -> list[Tensor]:
            return [rows[f"opt/{kind}/{n}"] for n in names]

        if self.optimizer == "trackin":
            eps_on = f"opt/eps/{names[0]}" in rows
            return F.trackin(
                params,
                grads,
                per_param("momentum"),
                per_param("eps") if eps_on else None,
                rows["opt/sq_avg"],
                rows["opt/step"],
                lr=h["lr"],
                gamma=h["gamma"],
                beta=h["beta"],
                beta_rule=h["beta_rule"],
                debias=h["debias"],
                eta=h["eta"],
                eps_decay=h["eps_decay"],
                weight_decay=h["weight_decay"],
                max_grad_norm=h["max_grad_norm"],
                foreach=False,
            )
        if self.optimizer == "sgd":
            momentum_on = f"opt/momentum/{names[0]}" in rows
            return F.sgd(
                params,
                grads,
                per_param("momentum") if momentum_on else None,
                rows["opt/step"],
                lr=h["lr"],
                momentum=h["momentum"],
                dampening=h["dampening"],
                debias=h["debias"],
                weight_decay=h["weight_decay"],
                max_grad_norm=h["max_grad_norm"],
            )
        return F.adam(
            params,
            grads,
            per_param("exp_avg"),
            per_param("exp_avg_sq"),
            rows["opt/step"],
            lr=h["lr"],
            beta1=h["beta1"],
            beta2=h["beta2"],
            eps=h["eps"],
            weight_decay=h["weight_decay"],
            max_grad_norm=h["max_grad_norm"],
        )

    def _update_figures(
        self,
        s: Tensor,
        rows: Mapping[str, Tensor],
        ok: Tensor,
        nonfinite: Tensor,
        loss: Tensor,
        stats: F.StepStats,
    ) -> None:
        first = rows["opt/step"] <= 1
        prev = rows["fig/loss_ewma"]
        ewma = torch.where(first | prev.isnan(), loss, prev + LOSS_EWMA_ALPHA * (loss - prev))
        self._scatter("fig/last_loss", s, ok, loss)
        self._scatter("fig/loss_ewma", s, ok, ewma)
        self._scatter("fig/grad_norm", s, ok, stats.grad_norm)
        self._scatter("fig/beta", s, ok, stats.beta)
        self._scatter("fig/eps_norm", s, ok, stats.eps_norm)
        self._scatter("fig/nonfinite", s, nonfinite, rows["fig/nonfinite"] + 1)

    def _update_drift(self, s: Tensor, rows: Mapping[str, Tensor], ok: Tensor, loss: Tensor) -> Tensor:
        n, mean, total, minimum, alarm = page_hinkley(
            loss.where(ok, 0.0),
            ok,
            rows["drift/n"],
            rows["drift/mean"],
            rows["drift/total"],
            rows["drift/min"],
            delta=rows["drift/delta"],
            threshold=rows["drift/threshold"],
            warmup=rows["drift/warmup"],
            enabled=rows["drift/enabled"],
        )
        everywhere = torch.ones_like(ok)
        self._scatter("drift/n", s, everywhere, n)
        self._scatter("drift/mean", s, everywhere, mean)
        self._scatter("drift/total", s, everywhere, total)
        self._scatter("drift/min", s, everywhere, minimum)
        self._scatter("drift/count", s, alarm, rows["drift/count"] + 1)
        step_now = self.state["opt/step"].index_select(0, s)
        self._scatter("drift/last_step", s, alarm, step_now)
        reset = alarm & rows["drift/reset"]
        for key in self.state:
            if key.startswith(("opt/momentum/", "opt/exp_avg/")):
                self._scatter(key, s, reset, torch.zeros_like(rows[key]))
        return alarm
