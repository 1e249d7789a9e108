"""A pool of streams that share one model structure, loss, optimizer kind and dtype, in stacked tensors.

Every per-stream quantity (parameters, optimizer state, hyperparameters, the ``ar`` lag window, running
figures, drift detector) is a row of one tensor in ``StreamPool.state``; dimension 0 is the slot. The keys
are views of three packed buffers (:mod:`models.layout`), so one call to :meth:`StreamPool.observe` steps all
the streams of a batch with one vectorised update per round (a round holds at most one observation per
stream): one gather per buffer, the model, the gradient, the same functional core as
:class:`models.TrackIn` on flat ``[rows, n_params]`` slices, and one scatter per buffer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trackin.models import functional as F
from trackin.models import losses
from trackin.models.drift import page_hinkley
from trackin.models.families import ar_features, init_params, param_shapes, stacked_forward
from trackin.models.hyper import OPTIMIZERS
from trackin.models.layout import BOOL, FLOAT, INT, PackedState
from trackin.models.specs import ARModel, StreamSpec, layer_sizes

__all__ = ["LOSS_EWMA_ALPHA", "ObserveResult", "StreamPool"]

LOSS_EWMA_ALPHA = 0.05
"""Weight of the newest loss in a stream's loss EWMA (about the last 20 observations)."""

_FIGURES = ("last_loss", "loss_ewma", "grad_norm", "beta", "eps_norm")
_DRIFT_SETTINGS = ("delta", "threshold", "warmup", "enabled", "reset")
_TEMPLATE_CACHE = 256


@dataclass(frozen=True, slots=True)
class ObserveResult:
    """Per-observation outcomes, in input order, on the host (one copy per batch)."""

    predictions: Tensor  # [n, out] made before learning; NaN for warming ar streams
    losses: Tensor  # [n]; NaN where nothing was scored
    steps: Tensor  # [n] the stream's step count after this observation
    applied: Tensor  # [n] bool: one optimizer step was taken
    warming: Tensor  # [n] bool: ar stream still filling its lag window (no step)
    nonfinite: Tensor  # [n] bool: loss, gradient (or arriving ar value) not finite, state left as it was
    drift: Tensor  # [n] bool: the drift detector fired on this observation
    forecasts: Tensor | None  # [n, dim] next forecast of ar streams (NaN until the window is full)


@dataclass(frozen=True, slots=True)
class _Template:
    """A spec's initial row of each buffer, and the values of the settings the pool tracks."""

    rows: list[Tensor]
    values: dict[str, object]


def _occurrence_rounds(slots: np.ndarray) -> list[np.ndarray]:
    """Positions split into rounds so that each round holds a stream at most once, in arrival order."""
    if slots.size <= 1:
        return [np.arange(slots.size)] if slots.size else []
    ordered = np.sort(slots)
    if ordered[-1] - ordered[0] + 1 >= slots.size and (ordered[1:] != ordered[:-1]).all():
        return [np.arange(slots.size)]  # no stream twice: one round (the common case, checked cheaply)
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_slots)) + 1]
    run_id = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, sorted_slots.size]))
    occurrence = np.empty_like(slots)
    occurrence[order] = np.arange(sorted_slots.size) - starts[run_id]
    return [np.flatnonzero(occurrence == r) for r in range(int(occurrence.max()) + 1)]


def _plain(t: Tensor) -> Tensor:
    """An ordinary tensor (results made in inference mode are copied, so callers may modify them)."""
    return t.clone() if t.is_inference() else t


class StreamPool:
    """Streams of one pool key (see :meth:`StreamSpec.pool_key`), stacked along dimension 0 (the slot).

    ``state``: every per-stream tensor by name, each ``[capacity, *shape]`` (views of the packed buffers;
    they are replaced when the pool grows).
    """

    def __init__(self, template: StreamSpec, device: torch.device | str = "cpu", capacity: int = 16) -> None:
        self.template = template
        self.model = template.model
        self.device = torch.device(device)
        self.dtype: torch.dtype = getattr(torch, template.dtype)
        self.optimizer = template.optimizer.name
        self._key = template.pool_key()
        shapes = self._param_shapes = param_shapes(self.model)
        self.param_names = list(shapes)
        self.out_dim = layer_sizes(self.model)[-1]
        self._n_params = sum(math.prod(s) for s in shapes.values())
        self._closed_form = len(layer_sizes(self.model)) == 2
        self._loss = losses.get(template.loss)
        self._hyper = OPTIMIZERS[self.optimizer]
        self._buffers = list(self._hyper.state_buffers(template.optimizer.model_dump()))
        self._packed = PackedState(self._state_entries(), self.dtype, self.device, max(1, capacity))
        self._free: list[int] = list(range(self._packed.capacity - 1, -1, -1))
        self._templates: dict[StreamSpec, _Template] = {}
        self._last: tuple[StreamSpec, _Template] | None = None
        tracked = [f"hyper/{h}" for h in self._hyper.names]
        self._tracked: dict[str, Counter[object]] = {
            k: Counter() for k in [*tracked, "hyper/huber_delta", *(f"drift/{d}" for d in _DRIFT_SETTINGS)]
        }
        self._shared: dict[str, object] = dict.fromkeys(self._tracked)  # None: differs between streams
        self._need_bool = False  # some bool setting differs between streams: gather the bool buffer
        # the core's keyword arguments when every hyperparameter is shared by the resident streams
        self._shared_hyper: dict[str, Any] | None = None
        self._sync_free = self.device.type != "cpu"  # see _round
        cols = self._packed.columns
        self._col = {key: (c.start, c.stop) for key, c in cols.items()}
        self._hyper_columns = [
            (h, f"hyper/{h}", cols[f"hyper/{h}"].kind, cols[f"hyper/{h}"].start) for h in self._hyper.names
        ]
        self._ones: dict[int, Tensor] = {}

    # ----- layout and slots -------------------------------------------------------------------------------

    def _state_entries(self) -> list[tuple[str, tuple[int, ...], int]]:
        """Every key's per-stream shape and buffer, in layout order (see :mod:`models.layout`)."""
        shapes = param_shapes(self.model)
        entries = [(f"param/{name}", shape, FLOAT) for name, shape in shapes.items()]
        for kind in self._buffers:
            entries += [(f"opt/{kind}/{name}", shape, FLOAT) for name, shape in shapes.items()]
        entries += [(f"opt/{name}", (), FLOAT) for name in self._hyper.row_state]
        entries += [(f"fig/{f}", (), FLOAT) for f in _FIGURES]
        entries.append(("opt/step", (), INT))
        entries += [(f"hyper/{h.name}", (), h.kind) for h in self._hyper]
        entries.append(("hyper/huber_delta", (), FLOAT))
        if isinstance(self.model, ARModel):
            entries.append(("ar/window", (self.model.window, self.model.dim), FLOAT))
            entries.append(("ar/filled", (), INT))
        entries.append(("fig/nonfinite", (), INT))
        entries += [(f"drift/{f}", (), FLOAT) for f in ("mean", "total", "min", "delta", "threshold")]
        entries += [(f"drift/{f}", (), INT) for f in ("n", "count", "last_step", "warmup")]
        entries += [("drift/enabled", (), BOOL), ("drift/reset", (), BOOL)]
        return entries

    @property
    def state(self) -> dict[str, Tensor]:
        """Every per-stream tensor by name, ``[capacity, *shape]``."""
        return self._packed.views

    @property
    def capacity(self) -> int:
        """Slots allocated (used or free)."""
        return self._packed.capacity

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
        return self._packed.nbytes()

    def _template_for(self, spec: StreamSpec) -> _Template:
        """The initial rows of a spec (cached: adding many streams of one spec is a row copy each)."""
        if self._last is not None and self._last[0] is spec:
            return self._last[1]
        found = self._templates.get(spec)
        if found is None:
            if spec.pool_key() != self._key:
                raise ValueError("spec does not belong to this pool")
            found = self._build_template(spec)
            if len(self._templates) >= _TEMPLATE_CACHE:
                self._templates.clear()
            self._templates[spec] = found
        self._last = (spec, found)
        return found

    def _build_template(self, spec: StreamSpec) -> _Template:
        rows, views = self._packed.blank()
        for name, value in init_params(spec.model, self.dtype, self.device).items():
            views[f"param/{name}"][0].copy_(value)
        opt = spec.optimizer.model_dump()
        for h in self._hyper:
            views[f"hyper/{h.name}"].fill_(h.to_column(opt[h.name]))
        views["hyper/huber_delta"].fill_(spec.huber_delta)
        d = spec.drift
        settings = {
            "delta": d.delta,
            "threshold": d.threshold,
            "warmup": d.warmup,
            "enabled": d.enabled,
            "reset": d.reset_momentum,
        }
        for key, setting in settings.items():
            views[f"drift/{key}"].fill_(setting)
        for f in _FIGURES:
            views[f"fig/{f}"].fill_(float("nan"))
        return _Template(rows, self._tracked_values(views))

    def _tracked_values(self, views: Mapping[str, Tensor]) -> dict[str, object]:
        return {key: views[key][0].item() for key in self._tracked}

    def _core_value(self, name: str, value: object) -> object:
        """A shared setting as the functional core takes it (no clipping as None, the rule by name)."""
        return self._hyper[name].to_core(value)

    def _count(self, values: Mapping[str, object], sign: int) -> None:
        """Count the settings of a stream that arrives (+1) or leaves (-1); refresh the shared values."""
        for key, value in values.items():
            counter = self._tracked[key]
            counter[value] += sign
            if counter[value] <= 0:
                del counter[value]
            self._shared[key] = next(iter(counter)) if len(counter) == 1 else None
        self._shared_hyper = None
        if all(self._shared[key] is not None for _, key, _, _ in self._hyper_columns):
            self._shared_hyper = {
                name: self._core_value(name, self._shared[key]) for name, key, _, _ in self._hyper_columns
            }
        self._need_bool = any(
            self._shared[k] is None
            for k, c in self._packed.columns.items()
            if k in self._shared and c.kind == BOOL
        )

    def _setting(self, key: str, blocks: tuple[Tensor, Tensor, Tensor | None]) -> float | int | bool | Tensor:
        """A setting's value when every resident stream shares it (the core then skips work, e.g. no weight
        decay or clipping), else its column of the gathered rows."""
        value = self._shared[key]
        if value is None:
            c = self._packed.columns[key]
            block = blocks[c.kind]
            assert block is not None
            return block[:, c.start]
        assert isinstance(value, float | int | bool)
        return value

    def add(self, spec: StreamSpec) -> int:
        """Place a new stream in a free slot (growing by doubling when full), initialised from its spec."""
        template = self._template_for(spec)
        if not self._free:
            old = self.capacity
            self._packed.grow(old * 2)
            self._free.extend(range(self.capacity - 1, old - 1, -1))
        slot = self._free.pop()
        self._packed.write_row(slot, template.rows)
        self._count(template.values, +1)
        return slot

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.capacity or slot in self._free:
            raise KeyError(slot)

    def remove(self, slot: int) -> None:
        """Free a slot for reuse."""
        self._check_slot(slot)
        self._count(self._tracked_values(self._packed.views_of(self._packed.read_row(slot))), -1)
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
            if tuple(state[key].shape) != tuple(tensor.shape[1:]):
                raise ValueError(
                    f"{key}: shape {tuple(state[key].shape)}, expected {tuple(tensor.shape[1:])}"
                )
        resident = 0 <= slot < self.capacity and slot not in self._free
        rows = self._packed.read_row(slot)
        views = self._packed.views_of(rows)
        if resident:
            self._count(self._tracked_values(views), -1)
        for key, view in views.items():
            view[0].copy_(state[key])
        self._packed.write_row(slot, rows)
        if resident:
            self._count(self._tracked_values(views), +1)

    # ----- learning ---------------------------------------------------------------------------------------

    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        """Named parameter views ``[rows, *shape]`` of a flat ``[rows, n_params]`` slice."""
        out, start = {}, 0
        for name, shape in self._param_shapes.items():
            size = math.prod(shape)
            out[name] = theta[:, start : start + size].view(theta.shape[0], *shape)
            start += size
        return out

    def _mode(self) -> torch.autograd.grad_mode.no_grad | torch.autograd.grad_mode.inference_mode:
        """Inference mode where no gradient is recorded (single-layer models): about 15% less overhead per
        op; pools that need autograd for their gradient run under no_grad."""
        return torch.inference_mode() if self._closed_form else torch.no_grad()

    def _forward(self, theta: Tensor, x: Tensor) -> Tensor:
        if self._closed_form:
            return self._affine(theta, x)
        return stacked_forward(self.model, self._params(theta), x)

    def _affine(self, theta: Tensor, x: Tensor) -> Tensor:
        """``stacked_forward`` of a single-layer model, without its per-call Python (one output: a row dot
        product with ``[x, 1]``, as in ``_round``)."""
        n, out = theta.shape[0], self.out_dim
        if out == 1:
            return (theta * torch.cat([x, x.new_ones(n, 1)], 1)).sum(1, keepdim=True)
        weight = theta[:, : out * x.shape[1]].view(n, out, x.shape[1])
        bias = theta[:, out * x.shape[1] :]
        return torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(1), weight.mT).squeeze(1)

    def _ar_level(self, theta: Tensor, window: Tensor) -> Tensor:
        """Forecast of the next level from a full window ``[rows, window, dim]``."""
        assert isinstance(self.model, ARModel)
        out = self._forward(theta, ar_features(self.model, window))
        return out + window[:, -1] if self.model.target == "delta" else out

    def predict(self, slots: np.ndarray, inputs: Tensor | None = None) -> Tensor:
        """Predictions without learning: ``[n, out]`` on the host. For ``ar`` pools, the current forecast."""
        s = torch.as_tensor(np.asarray(slots), dtype=torch.int64).to(self.device)
        f = self._packed.gather(s, FLOAT)
        theta = f[:, : self._n_params]
        with torch.inference_mode():
            if isinstance(self.model, ARModel):
                a, b = self._col["ar/window"]
                window = f[:, a:b].view(f.shape[0], self.model.window, self.model.dim)
                filled = self._packed.gather(s, INT)[:, self._col["ar/filled"][0]]
                out = self._ar_level(theta, window).where(
                    (filled >= self.model.window).unsqueeze(-1), torch.nan
                )
            else:
                assert inputs is not None
                x = inputs.to(device=self.device, dtype=self.dtype)
                out = self._loss.prediction(self._forward(theta, x))
        return _plain(out.cpu())

    def observe(self, slots: np.ndarray, inputs: Tensor, targets: Tensor | None = None) -> ObserveResult:
        """Predict, score and step once per observation, in arrival order.

        ``inputs``: ``[n, in]`` features (``ar``: ``[n, dim]`` newly arrived values); ``targets``:
        ``[n, out]`` (None for ``ar``, whose target is the arriving value).
        """
        slots = np.asarray(slots, dtype=np.int64)
        dev, dt = self.device, self.dtype
        inputs = inputs.to(device=dev, dtype=dt)
        targets = targets.to(device=dev, dtype=dt) if targets is not None else None
        rounds = _occurrence_rounds(slots)
        parts: list[dict[str, Tensor]] = []
        with self._mode():
            if len(rounds) <= 1:  # one round (or an empty batch): no regrouping of inputs and outcomes
                parts.append(self._round(torch.from_numpy(slots).to(dev), inputs, targets))
            else:
                for positions in rounds:
                    pos = torch.from_numpy(positions).to(dev)
                    y = targets.index_select(0, pos) if targets is not None else None
                    x = inputs.index_select(0, pos)
                    parts.append(self._round(torch.from_numpy(slots[positions]).to(dev), x, y))
        if len(parts) == 1:
            out = parts[0]
        else:
            inverse = torch.from_numpy(np.argsort(np.concatenate(rounds))).to(dev)
            out = {k: torch.cat([p[k] for p in parts]).index_select(0, inverse) for k in parts[0]}
        host = {k: _plain(v.cpu()) for k, v in out.items()}
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

    def _round(self, s: Tensor, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """One vectorised step for distinct slots ``s``; returns per-row outcomes.

        Each buffer's rows are gathered once and the optimizer steps them in place. Rows whose step is not
        taken are then restored from the buffer (still untouched) before the remaining per-row updates
        (``ar`` window, counters, drift) and one scatter per buffer. Finding those rows is data-dependent;
        on an accelerator, where that would mean a host sync, each buffer is gathered twice instead and every
        row taken from the stepped copy or the untouched one (``_sync_free``).
        """
        model, col, P = self.model, self._col, self._n_params
        packed = self._packed
        n = s.shape[0]
        if self._sync_free:
            twice = torch.cat([s, s])  # two copies of the rows: [:n] stays as it was, [n:] is stepped
            f_both, i_both = packed.gather(twice, FLOAT), packed.gather(twice, INT)
            f, i = f_both[n:], i_both[n:]
        else:
            f, i = packed.gather(s, FLOAT), packed.gather(s, INT)
        b = packed.gather(s, BOOL) if self._need_bool else None
        blocks = (f, i, b)
        theta = f[:, :P]
        hd = self._setting("hyper/huber_delta", blocks)
        assert not isinstance(hd, bool | int)
        result: dict[str, Tensor] = {}
        ready: Tensor | None
        if isinstance(model, ARModel):
            a, z = col["ar/window"]
            window = f[:, a:z].view(f.shape[0], model.window, model.dim).clone()
            ready = i[:, col["ar/filled"][0]] >= model.window
            feats = ar_features(model, window)
            last = window[:, -1]
            target = x - last if model.target == "delta" else x
        else:
            ready = None
            feats = x
            assert y is not None
            target = y

        if self._closed_form and self.out_dim == 1:
            # one output: theta = [w, b] and the gradient is dL/dout * [x, 1]
            ext = torch.cat([feats, feats.new_ones(n, 1)], 1)
            output = (theta * ext).sum(1, keepdim=True)
            loss = self._loss(output, target, hd)
            grad = self._loss.gradient(output, target, hd) * ext
        elif self._closed_form:
            output = self._affine(theta, feats)
            loss = self._loss(output, target, hd)
            g = self._loss.gradient(output, target, hd)
            grad = torch.cat([(g.unsqueeze(2) * feats.unsqueeze(1)).flatten(1), g], 1)
        else:
            leaf = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                output = self._forward(leaf, feats)
                loss = self._loss(output, target, hd)
                (grad,) = torch.autograd.grad(loss.sum(), leaf)
            output, loss = output.detach(), loss.detach()
        finite = self._finite(loss, grad)
        ok = finite if ready is None else finite & ready

        stats = self._optimizer_step(blocks, grad)
        prev = f[:, col["fig/loss_ewma"][0]]
        ewma = torch.where(prev.isnan(), loss, prev.lerp(loss, LOSS_EWMA_ALPHA))
        a, z = col["fig/last_loss"][0], col["fig/eps_norm"][1]
        f[:, a:z] = torch.stack([loss, ewma, stats.grad_norm, stats.beta, stats.eps_norm], 1)
        # Only the step has changed the rows so far: where it was not taken, restore the whole row.
        if self._sync_free:
            src = torch.arange(n, device=s.device) + n * ok  # a row gather: cheaper than an elementwise where
            f, i = f_both.index_select(0, src), i_both.index_select(0, src)
        else:
            failed = (~ok).nonzero().squeeze(1)
            if failed.numel():
                slots = s.index_select(0, failed)
                f.index_copy_(0, failed, packed.gather(slots, FLOAT))
                i.index_copy_(0, failed, packed.gather(slots, INT))
        blocks = (f, i, b)
        theta = f[:, :P]
        step = i[:, col["opt/step"][0]]
        nonfinite = ~finite if ready is None else ready & ~finite

        if isinstance(model, ARModel):
            assert ready is not None
            value_finite = torch.isfinite(x).all(1)
            pushed = (~ready & value_finite) | ok
            nonfinite = nonfinite | (~ready & ~value_finite)
            new_window = torch.cat([window[:, 1:], x.unsqueeze(1)], dim=1)
            a, z = col["ar/window"]
            f[:, a:z] = torch.where(pushed.unsqueeze(1), new_window.flatten(1), f[:, a:z])
            c = col["ar/filled"][0]
            filled = (i[:, c] + pushed).clamp(max=model.window)
            i[:, c] = filled
            level = self._ar_level(theta, f[:, a:z].view(f.shape[0], model.window, model.dim))
            result["forecast"] = level.where((filled >= model.window).unsqueeze(-1), torch.nan)
            pred = output + last if model.target == "delta" else output
            result["pred"] = pred.where(ready.unsqueeze(-1), torch.nan)
            result["loss"] = loss.where(ready, torch.nan)
            result["warming"] = ~ready
        else:
            result["pred"] = self._loss.prediction(output)
            result["loss"] = loss
            result["warming"] = torch.zeros_like(ok)
        i[:, col["fig/nonfinite"][0]] += nonfinite
        result["drift"] = self._drift(blocks, ok, loss, step)
        packed.scatter(s, FLOAT, f)
        packed.scatter(s, INT, i)
        result["step"] = step
        result["applied"] = ok
        result["nonfinite"] = nonfinite
        return result

    def _finite(self, loss: Tensor, grad: Tensor) -> Tensor:
        """``[rows]`` bool: the loss and every gradient entry are finite.

        ``(grad - grad) @ ones`` is 0 for a finite row and NaN otherwise (a matrix-vector product: much
        faster on the CPU than ``isfinite(grad).all(1)``, a reduction over a short inner dimension).
        """
        ones = self._ones.get(grad.shape[1])
        if ones is None:
            ones = self._ones[grad.shape[1]] = grad.new_ones(grad.shape[1])
        return torch.isfinite(loss + (grad - grad) @ ones)

    def _optimizer_step(self, blocks: tuple[Tensor, Tensor, Tensor | None], grad: Tensor) -> F.StepStats:
        """The functional core on the gathered rows, in place on flat ``[rows, n_params]`` slices of them."""
        f, i, _ = blocks
        col, P = self._col, self._n_params
        params = [f[:, :P]]
        buffers = {}
        for kind in self._buffers:
            a = col[f"opt/{kind}/{self.param_names[0]}"][0]
            buffers[kind] = [f[:, a : a + P]]
        hyper: dict[str, Any] | None = self._shared_hyper
        if hyper is None:  # some hyperparameter differs between streams: that one is a column of the rows
            hyper = {}
            for name, key, which, c in self._hyper_columns:
                if self._shared[key] is None:
                    block = blocks[which]
                    assert block is not None
                    hyper[name] = block[:, c]
                else:
                    hyper[name] = self._core_value(name, self._shared[key])
        step = i[:, col["opt/step"][0]]
        if self.optimizer == "trackin":
            return F.trackin(
                params,
                [grad],
                buffers["momentum"],
                buffers.get("eps"),
                f[:, col["opt/sq_avg"][0]],
                step,
                foreach=False,
                **hyper,
            )
        if self.optimizer == "sgd":
            return F.sgd(params, [grad], buffers.get("momentum"), step, **hyper)
        return F.adam(params, [grad], buffers["exp_avg"], buffers["exp_avg_sq"], step, **hyper)

    def _drift(
        self, blocks: tuple[Tensor, Tensor, Tensor | None], ok: Tensor, loss: Tensor, step: Tensor
    ) -> Tensor:
        """Page-Hinkley on the rows' losses (in place on the blocks); returns the alarms ``[rows]``."""
        f, i, _ = blocks
        col = self._col
        enabled = self._setting("drift/enabled", blocks)
        if enabled is False:
            return torch.zeros_like(ok)
        active = ok if enabled is True else ok & enabled  # type: ignore[operator]
        alarm = page_hinkley(
            loss,
            active,
            i[:, col["drift/n"][0]],
            f[:, col["drift/mean"][0]],
            f[:, col["drift/total"][0]],
            f[:, col["drift/min"][0]],
            delta=self._setting("drift/delta", blocks),  # type: ignore[arg-type]
            threshold=self._setting("drift/threshold", blocks),  # type: ignore[arg-type]
            warmup=self._setting("drift/warmup", blocks),  # type: ignore[arg-type]
        )
        i[:, col["drift/count"][0]].add_(alarm)
        c = col["drift/last_step"][0]
        torch.where(alarm, step, i[:, c], out=i[:, c])
        reset = self._setting("drift/reset", blocks)
        kind = "exp_avg" if self.optimizer == "adam" else "momentum"
        if reset is not False and kind in self._buffers:
            m = col[f"opt/{kind}/{self.param_names[0]}"][0]
            mask = alarm if reset is True else alarm & reset  # type: ignore[operator]
            f[:, m : m + self._n_params].masked_fill_(mask.unsqueeze(1), 0)
        return alarm
