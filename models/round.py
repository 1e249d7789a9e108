"""One round of a pool: one vectorised step for distinct streams (docs/engine.md, "One round").

Each buffer's rows are gathered once; the model, the loss and its gradient, and the functional core (the
same as :class:`models.TrackIn`'s, on flat ``[rows, n_params]`` slices) update them in place; rows whose step
was not taken are restored; the ``ar`` window, counters and drift detector follow; one scatter per buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trackin.models import functional as F
from trackin.models import keys, naive_mix, standardize
from trackin.models.drift import page_hinkley
from trackin.models.families import FlatModel, ar_features
from trackin.models.figures import LOSS_EWMA_ALPHA
from trackin.models.hyper import Hyperparameters
from trackin.models.layout import BOOL, FLOAT, INT, PackedState
from trackin.models.losses import Loss
from trackin.models.rows import Blocks, Settings
from trackin.models.specs import ARModel

__all__ = ["Round"]


class Round:
    """The per-round step of one pool; ``__call__`` steps the distinct slots ``s`` once each."""

    def __init__(
        self,
        packed: PackedState,
        net: FlatModel,
        loss: Loss,
        hyper: Hyperparameters,
        buffers: Sequence[str],
        settings: Settings,
    ) -> None:
        self._packed = packed
        self._net = net
        self._loss = loss
        self._hyper = hyper
        self._settings = settings
        self._col = {key: (c.start, c.stop) for key, c in packed.columns.items()}
        first = next(iter(net.shapes))
        self._buffers = {kind: self._col[keys.buffer(kind, first)][0] for kind in buffers}
        # a drift with reset_momentum clears the momentum: the optimizer's first declared buffer, if kept
        self._momentum = self._buffers.get(hyper.buffers[0][0]) if hyper.buffers else None
        self._ones: dict[int, Tensor] = {}
        # standardisation (models/standardize.py): the inputs' statistics (ar: the series'), and the
        # targets' unless the loss is bce (ar: the series' statistics serve the target too)
        self._norm = keys.NORM_N in packed.columns
        self._norm_target = self._norm and standardize.standardizes_target(loss.name)
        self._norm_y = keys.NORM_Y_MEAN in packed.columns
        self._mix = keys.MIX_MODEL in packed.columns  # a first-order series' naive mix (models/naive_mix.py)

    def _stats(self, f: Tensor, mean: str, var: str) -> standardize.Stats:
        """The running statistics kept under ``mean`` and ``var`` in a gathered float block (views)."""
        (a, z), (c, d) = self._col[mean], self._col[var]
        return standardize.Stats(f[:, a:z], f[:, c:d], f[:, self._col[keys.NORM_N][0]])

    def _store(self, f: Tensor, mean: str, var: str, stats: standardize.Stats, rows: Tensor) -> None:
        """Write ``stats`` (and the count) into rows ``rows`` of a gathered float block (the others keep
        theirs)."""
        new = stats.where(rows, self._stats(f, mean, var))
        (a, z), (c, d) = self._col[mean], self._col[var]
        f[:, a:z], f[:, c:d], f[:, self._col[keys.NORM_N][0]] = new.mean, new.var, new.n

    def _ar_inputs(self, window: Tensor, stats: standardize.Stats | None) -> Tensor:
        """An ``ar`` model's inputs from its window, standardised by the series' statistics if kept."""
        model = self._net.model
        assert isinstance(model, ARModel)
        feats = ar_features(model, window)
        if stats is None:
            return feats
        return stats.z(feats.view(feats.shape[0], model.lags, model.dim), standardize.FEATURE_CLIP).flatten(1)

    def _served(self, output: Tensor, stats: standardize.Stats | None) -> Tensor:
        """A model's output in the target's units (bounded about the target's mean when standardised)."""
        return stats.served(output) if stats is not None and self._norm_target else output

    def ar_level(
        self, theta: Tensor, window: Tensor, stats: standardize.Stats | None, f: Tensor, steps: Tensor
    ) -> Tensor:
        """An ``ar`` stream's served forecast of the next level from a full window ``[rows, window, dim]``
        (mixed with the naive one, no change, when the pool keeps the mix in ``f``; ``steps``: the steps
        taken)."""
        model = self._net.model
        assert isinstance(model, ARModel)
        out = self._served(self._net(theta, self._ar_inputs(window, stats)), stats)
        last = window[:, -1]
        level = out + last if model.target == "delta" else out
        if not self._mix:
            return level
        return last + self._share(f, steps) * (level - last)

    def _share(self, f: Tensor, steps: Tensor) -> Tensor:
        """``[rows, dim]``: the model's share of a first-order series' served forecast."""
        col = self._col
        (a, z), (c, d) = col[keys.MIX_MODEL], col[keys.MIX_NAIVE]
        return naive_mix.weight(f[:, a:z], f[:, c:d], f[:, col[keys.MIX_N][0]], steps)

    def predict(self, s: Tensor, x: Tensor | None) -> Tensor:
        """Predictions without learning (``ar``: the current forecast, NaN while warming), as ``__call__``
        makes them."""
        packed, col, model = self._packed, self._col, self._net.model
        f = packed.gather(s, FLOAT)
        theta = f[:, : self._net.n_params]
        if isinstance(model, ARModel):
            a, z = col[keys.AR_WINDOW]
            window = f[:, a:z].view(f.shape[0], model.window, model.dim)
            i = packed.gather(s, INT)
            filled = i[:, col[keys.AR_FILLED][0]]
            stats = self._stats(f, keys.NORM_X_MEAN, keys.NORM_X_VAR) if self._norm else None
            level = self.ar_level(theta, window, stats, f, i[:, col[keys.STEP][0]])
            return level.where((filled >= model.window).unsqueeze(-1), torch.nan)
        assert x is not None
        if not self._norm:
            return self._loss.prediction(self._net(theta, x))
        xs = self._stats(f, keys.NORM_X_MEAN, keys.NORM_X_VAR).updated(x)
        output = self._net(theta, xs.z(x, standardize.FEATURE_CLIP))
        ys = self._stats(f, keys.NORM_Y_MEAN, keys.NORM_Y_VAR) if self._norm_y else None
        return self._loss.prediction(self._served(output, ys))

    def __call__(self, s: Tensor, x: Tensor, y: Tensor | None, *, sync_free: bool) -> dict[str, Tensor]:
        """Per-row outcomes of one step for distinct slots ``s``; ``x``: ``[rows, in]`` inputs (``ar``: the
        arriving values), ``y``: ``[rows, out]`` targets (None for ``ar``).

        Rows whose step is not taken are restored from the buffer (still untouched) before the remaining
        per-row updates. Finding them is data-dependent; with ``sync_free`` (on an accelerator, where that
        would mean a host sync) each buffer is gathered twice instead and every row taken from the stepped
        copy or the untouched one.
        """
        model, col, P = self._net.model, self._col, self._net.n_params
        packed = self._packed
        n = s.shape[0]
        if sync_free:
            twice = torch.cat([s, s])  # two copies of the rows: [:n] stays as it was, [n:] is stepped
            f_both, i_both = packed.gather(twice, FLOAT), packed.gather(twice, INT)
            f, i = f_both[n:], i_both[n:]
        else:
            f, i = packed.gather(s, FLOAT), packed.gather(s, INT)
        b = packed.gather(s, BOOL) if self._settings.need_bool else None
        blocks: Blocks = (f, i, b)
        theta = f[:, :P]
        hd = self._settings.value(keys.HUBER_DELTA, blocks)
        assert not isinstance(hd, bool | int)
        result: dict[str, Tensor] = {}
        ready: Tensor | None
        # statistics before this observation (they serve the prediction) and including it (they standardise
        # what the step learns from); None when the pool does not standardise
        old_x: standardize.Stats | None = None
        new_x: standardize.Stats | None = None
        old_y: standardize.Stats | None = None
        new_y: standardize.Stats | None = None
        if isinstance(model, ARModel):
            a, z = col[keys.AR_WINDOW]
            window = f[:, a:z].view(f.shape[0], model.window, model.dim).clone()
            filled_before = i[:, col[keys.AR_FILLED][0]]
            ready = filled_before >= model.window
            last = window[:, -1]
            target = x - last if model.target == "delta" else x
            if self._norm:
                old_x = self._stats(f, keys.NORM_X_MEAN, keys.NORM_X_VAR)
                new_x = old_x.updated(target)
                if self._norm_target:
                    old_y, new_y = old_x, new_x
            feats = self._ar_inputs(window, old_x)
        else:
            ready = None
            assert y is not None
            target = y
            feats = x
            if self._norm:
                new_x = self._stats(f, keys.NORM_X_MEAN, keys.NORM_X_VAR).updated(x)
                feats = new_x.z(x, standardize.FEATURE_CLIP)  # x is known when predicting
            if self._norm_y:
                old_y = self._stats(f, keys.NORM_Y_MEAN, keys.NORM_Y_VAR)
                new_y = old_y.updated(y)

        learn_target = target if new_y is None else new_y.z(target)
        output, grad = self._loss_and_grad(theta, feats, learn_target, hd, clip=new_y is not None)
        served = self._served(output, old_y)
        if self._mix and isinstance(model, ARModel):  # a series: the naive forecast is no change
            naive = torch.zeros_like(target) if model.target == "delta" else last
            share = self._share(f, i[:, col[keys.STEP][0]])
            model_served, served = served, naive + share * (served - naive)
        loss = self._loss(served, target, hd)  # in the user's units
        guard = loss
        for running in (new_x, new_y):
            if running is not None:  # statistics that overflowed are not kept: x * 0 is NaN for inf
                guard = guard + running.var.sum(1) * 0
        finite = self._finite(guard, grad)
        ok = finite if ready is None else finite & ready

        stats = self._optimizer_step(blocks, grad)
        prev = f[:, col[keys.LOSS_EWMA][0]]
        ewma = torch.where(prev.isnan(), loss, prev.lerp(loss, LOSS_EWMA_ALPHA))
        a, z = col[keys.FIGURES[0]][0], col[keys.FIGURES[-1]][1]
        f[:, a:z] = torch.stack([loss, ewma, stats.grad_norm, stats.beta, stats.eps_norm], 1)
        # Only the step has changed the rows so far: where it was not taken, restore the whole row.
        if sync_free:
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
        step = i[:, col[keys.STEP][0]]
        nonfinite = ~finite if ready is None else ready & ~finite

        if isinstance(model, ARModel):
            assert ready is not None
            value_finite = torch.isfinite(x).all(1)
            pushed = (~ready & value_finite) | ok
            nonfinite = nonfinite | (~ready & ~value_finite)
            kept: standardize.Stats | None = None
            if new_x is not None:  # warming values count too, once they make a change (target delta)
                has_target = filled_before >= 1 if model.target == "delta" else torch.ones_like(ready)
                warm = ~ready & value_finite & has_target & torch.isfinite(new_x.var.sum(1))
                self._store(f, keys.NORM_X_MEAN, keys.NORM_X_VAR, new_x, ok | warm)
                kept = self._stats(f, keys.NORM_X_MEAN, keys.NORM_X_VAR)
            if self._mix:
                self._learn_mix(f, ok, target, model_served, naive, share, hd)
            new_window = torch.cat([window[:, 1:], x.unsqueeze(1)], dim=1)
            a, z = col[keys.AR_WINDOW]
            f[:, a:z] = torch.where(pushed.unsqueeze(1), new_window.flatten(1), f[:, a:z])
            c = col[keys.AR_FILLED][0]
            filled = (i[:, c] + pushed).clamp(max=model.window)
            i[:, c] = filled
            view = f[:, a:z].view(f.shape[0], model.window, model.dim)
            level = self.ar_level(theta, view, kept, f, step)
            result["forecast"] = level.where((filled >= model.window).unsqueeze(-1), torch.nan)
            pred = served + last if model.target == "delta" else served
            result["pred"] = pred.where(ready.unsqueeze(-1), torch.nan)
            result["loss"] = loss.where(ready, torch.nan)
            result["warming"] = ~ready
        else:
            if new_x is not None:
                self._store(f, keys.NORM_X_MEAN, keys.NORM_X_VAR, new_x, ok)
                if new_y is not None:
                    self._store(f, keys.NORM_Y_MEAN, keys.NORM_Y_VAR, new_y, ok)
            result["pred"] = self._loss.prediction(served)
            result["loss"] = loss
            result["warming"] = torch.zeros_like(ok)
        i[:, col[keys.NONFINITE][0]] += nonfinite
        result["drift"] = self._drift(blocks, ok, loss, step)
        packed.scatter(s, FLOAT, f)
        packed.scatter(s, INT, i)
        result["step"] = step
        result["applied"] = ok
        result["nonfinite"] = nonfinite
        return result

    def _learn_mix(
        self,
        f: Tensor,
        ok: Tensor,
        target: Tensor,
        model: Tensor,
        naive: Tensor,
        share: Tensor,
        hd: float | Tensor,
    ) -> None:
        """The mix's discounted errors and the skill figures, for rows ``ok`` of a gathered float block."""
        col, okc = self._col, ok.unsqueeze(1)
        (a, z), (c, d), n = col[keys.MIX_MODEL], col[keys.MIX_NAIVE], col[keys.MIX_N][0]
        mm, mn, count = naive_mix.update(f[:, a:z], f[:, c:d], f[:, n], target - model, target - naive)
        f[:, a:z] = torch.where(okc, mm, f[:, a:z])
        f[:, c:d] = torch.where(okc, mn, f[:, c:d])
        f[:, n] = torch.where(ok, count, f[:, n])
        figures = (
            (keys.MODEL_LOSS, _ewma(f[:, col[keys.MODEL_LOSS][0]], self._loss(model, target, hd))),
            (keys.NAIVE_LOSS, _ewma(f[:, col[keys.NAIVE_LOSS][0]], self._loss(naive, target, hd))),
            (keys.MIX_WEIGHT, share.mean(1)),
        )
        for key, value in figures:
            c = col[key][0]
            f[:, c] = torch.where(ok, value, f[:, c])

    def _loss_and_grad(
        self, theta: Tensor, feats: Tensor, target: Tensor, hd: float | Tensor, *, clip: bool
    ) -> tuple[Tensor, Tensor]:
        """Output ``[rows, out]`` and the loss's gradient ``[rows, n_params]`` with respect to ``theta``: in
        closed form for single-layer models, by autograd otherwise. ``clip``: the target is standardised,
        and a step learns from it at most ``standardize.CLIP`` away from the output."""
        net, loss_fn = self._net, self._loss
        if net.closed_form and net.out_dim == 1:
            # one output: theta = [w, b] and the gradient is dL/dout * [x, 1]
            ext = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)
            output = (theta * ext).sum(1, keepdim=True)
            learn = standardize.learning_target(output, target) if clip else target
            return output, loss_fn.gradient(output, learn, hd) * ext
        if net.closed_form:
            output = net.affine(theta, feats)
            learn = standardize.learning_target(output, target) if clip else target
            g = loss_fn.gradient(output, learn, hd)
            return output, torch.cat([(g.unsqueeze(2) * feats.unsqueeze(1)).flatten(1), g], 1)
        leaf = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            output = net(leaf, feats)
            learn = standardize.learning_target(output, target) if clip else target
            (grad,) = torch.autograd.grad(loss_fn(output, learn, hd).sum(), leaf)
        return output.detach(), grad

    def _finite(self, loss: Tensor, grad: Tensor) -> Tensor:
        """``[rows]`` bool: the loss and every gradient entry are finite.

        ``(grad - grad) @ ones`` is 0 for a finite row and NaN otherwise (a matrix-vector product: much
        faster on the CPU than ``isfinite(grad).all(1)``, a reduction over a short inner dimension).
        """
        ones = self._ones.get(grad.shape[1])
        if ones is None:
            ones = self._ones[grad.shape[1]] = grad.new_ones(grad.shape[1])
        return torch.isfinite(loss + (grad - grad) @ ones)

    def _optimizer_step(self, blocks: Blocks, grad: Tensor) -> F.StepStats:
        """The functional core on the gathered rows, in place on flat ``[rows, n_params]`` slices of them."""
        f, i, _ = blocks
        P = self._net.n_params
        params = [f[:, :P]]
        buffers = {kind: [f[:, a : a + P]] for kind, a in self._buffers.items()}
        hyper = self._settings.core(blocks)
        step = i[:, self._col[keys.STEP][0]]
        name = self._hyper.name
        if name == "trackin":
            sq_avg = f[:, self._col[keys.opt("sq_avg")][0]]
            eps = buffers.get("eps")
            return F.trackin(params, [grad], buffers["momentum"], eps, sq_avg, step, foreach=False, **hyper)
        if name == "sgd":
            return F.sgd(params, [grad], buffers.get("momentum"), step, **hyper)
        return F.adam(params, [grad], buffers["exp_avg"], buffers["exp_avg_sq"], step, **hyper)

    def _drift(self, blocks: Blocks, ok: Tensor, loss: Tensor, step: Tensor) -> Tensor:
        """Page-Hinkley on the rows' losses (in place on the blocks); returns the alarms ``[rows]``."""
        f, i, _ = blocks
        col, setting = self._col, self._settings.value
        enabled = setting(keys.DRIFT_ENABLED, blocks)
        if enabled is False:
            return torch.zeros_like(ok)
        active = ok if enabled is True else ok & enabled  # type: ignore[operator]
        alarm = page_hinkley(
            loss,
            active,
            i[:, col[keys.DRIFT_N][0]],
            f[:, col[keys.DRIFT_MEAN][0]],
            f[:, col[keys.DRIFT_TOTAL][0]],
            f[:, col[keys.DRIFT_MIN][0]],
            delta=setting(keys.DRIFT_DELTA, blocks),  # type: ignore[arg-type]
            threshold=setting(keys.DRIFT_THRESHOLD, blocks),  # type: ignore[arg-type]
            warmup=setting(keys.DRIFT_WARMUP, blocks),  # type: ignore[arg-type]
        )
        i[:, col[keys.DRIFT_COUNT][0]].add_(alarm)
        c = col[keys.DRIFT_LAST_STEP][0]
        torch.where(alarm, step, i[:, c], out=i[:, c])
        reset = setting(keys.DRIFT_RESET, blocks)
        momentum = self._momentum
        if reset is not False and momentum is not None:
            mask = alarm if reset is True else alarm & reset  # type: ignore[operator]
            f[:, momentum : momentum + self._net.n_params].masked_fill_(mask.unsqueeze(1), 0)
        return alarm


def _ewma(previous: Tensor, value: Tensor) -> Tensor:
    """A loss EWMA's next value (the first loss when there was none)."""
    return torch.where(previous.isnan(), value, previous.lerp(value, LOSS_EWMA_ALPHA))
