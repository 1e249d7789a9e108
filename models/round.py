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
from trackin.models import keys
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

    def __call__(self, s: Tensor, x: Tensor, y: Tensor | None, *, sync_free: bool) -> dict[str, Tensor]:
        """Per-row outcomes of one step for distinct slots ``s``; ``x``: ``[rows, in]`` inputs (``ar``: the
        arriving values), ``y``: ``[rows, out]`` targets (None for ``ar``).

        Rows whose step is not taken are restored from the buffer (still untouched) before the remaining
        per-row updates. Finding them is data-dependent; with ``sync_free`` (on an accelerator, where that
        would mean a host sync) each buffer is gathered twice instead and every row taken from the stepped
        copy or the untouched one.
        """
        model, net, col, P = self._net.model, self._net, self._col, self._net.n_params
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
        if isinstance(model, ARModel):
            a, z = col[keys.AR_WINDOW]
            window = f[:, a:z].view(f.shape[0], model.window, model.dim).clone()
            ready = i[:, col[keys.AR_FILLED][0]] >= model.window
            feats = ar_features(model, window)
            last = window[:, -1]
            target = x - last if model.target == "delta" else x
        else:
            ready = None
            feats = x
            assert y is not None
            target = y

        output, loss, grad = self._loss_and_grad(theta, feats, target, hd)
        finite = self._finite(loss, grad)
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
            new_window = torch.cat([window[:, 1:], x.unsqueeze(1)], dim=1)
            a, z = col[keys.AR_WINDOW]
            f[:, a:z] = torch.where(pushed.unsqueeze(1), new_window.flatten(1), f[:, a:z])
            c = col[keys.AR_FILLED][0]
            filled = (i[:, c] + pushed).clamp(max=model.window)
            i[:, c] = filled
            level = net.ar_level(theta, f[:, a:z].view(f.shape[0], model.window, model.dim))
            result["forecast"] = level.where((filled >= model.window).unsqueeze(-1), torch.nan)
            pred = output + last if model.target == "delta" else output
            result["pred"] = pred.where(ready.unsqueeze(-1), torch.nan)
            result["loss"] = loss.where(ready, torch.nan)
            result["warming"] = ~ready
        else:
            result["pred"] = self._loss.prediction(output)
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

    def _loss_and_grad(
        self, theta: Tensor, feats: Tensor, target: Tensor, hd: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Output ``[rows, out]``, loss ``[rows]`` and the gradient ``[rows, n_params]`` with respect to
        ``theta``: in closed form for single-layer models, by autograd otherwise."""
        net, loss_fn = self._net, self._loss
        if net.closed_form and net.out_dim == 1:
            # one output: theta = [w, b] and the gradient is dL/dout * [x, 1]
            ext = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)
            output = (theta * ext).sum(1, keepdim=True)
            return output, loss_fn(output, target, hd), loss_fn.gradient(output, target, hd) * ext
        if net.closed_form:
            output = net.affine(theta, feats)
            g = loss_fn.gradient(output, target, hd)
            grad = torch.cat([(g.unsqueeze(2) * feats.unsqueeze(1)).flatten(1), g], 1)
            return output, loss_fn(output, target, hd), grad
        leaf = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            output = net(leaf, feats)
            loss = loss_fn(output, target, hd)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        return output.detach(), loss.detach(), grad

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
