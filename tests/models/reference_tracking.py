"""The per-stream reference of the scale-free, preconditioned path (docs/trackin.md, "Tracking real data").

One stream, one observation at a time, written for reading rather than speed: the scales, the RLS
covariance, the residual over the naive forecast, the naive mix and the bounds, with the optimizer step taken
by a real :class:`models.trackin.TrackIn` on the preconditioned gradient. The batched engine must equal it
(tests/models/test_tracking.py): tightly in float64, within float32 tolerances in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trackin.models import tracking as T
from trackin.models.specs import ARModel, LinearModel, StreamSpec, TrackInSpec, TrackModel, forgets
from trackin.models.trackin import TrackIn

__all__ = ["TrackingOutcome", "TrackingReference"]


@dataclass
class TrackingOutcome:
    prediction: list[float] | None  # served (None while no forecast exists: a series' first value)
    loss: float | None
    applied: bool
    nonfinite: bool
    forecast: list[float] | None  # series: the next forecast after learning (None before two values)


class TrackingReference:
    """One stream of a closed-form family on the scale-free path."""

    def __init__(self, spec: StreamSpec) -> None:
        model = spec.model
        assert isinstance(spec.optimizer, TrackInSpec)
        self.spec, self.model = spec, model
        self.dt = getattr(torch, spec.dtype)
        self.series = isinstance(model, ARModel | TrackModel)
        if self.series:
            assert isinstance(model, ARModel | TrackModel)
            self.k = model.dim
            self.lags = model.lags
            self.level_features = isinstance(model, ARModel) and model.target == "level"
            n_feat = model.lags * model.dim + (model.dim if self.level_features else 0)
            self.n_scale = model.dim * (2 if self.level_features else 1)
        else:
            assert isinstance(model, LinearModel)
            self.k = model.out_dim
            n_feat = model.in_dim
            self.n_scale = model.in_dim + model.out_dim
        self.p = n_feat + 1
        z = lambda *shape: torch.zeros(*shape, dtype=self.dt)  # noqa: E731
        opt = spec.optimizer
        self.forgets = forgets(opt)
        self.h = len(self.forgets)
        self.weight = torch.nn.Parameter(z(self.h * self.k, self.p))  # the heads' [k, p] matrices stacked
        self.opt = TrackIn([self.weight], **T.optimizer_kwargs(opt))
        self.prior = T.PRIOR if self.series else T.LINEAR_PRIOR
        self.cov = [torch.eye(self.p, dtype=self.dt) * self.prior for _ in self.forgets]
        self.scale_m2, self.scale_n = z(self.n_scale), 0
        self.resid2, self.naive2, self.stat_w = z(self.h, self.k), z(self.k), 0.0
        self.head_loss, self.head_s2 = z(self.h, self.k), z(self.k)
        self.mix_model, self.mix_naive, self.mix_n = z(self.k), z(self.k), 0.0
        self.mean, self.mean_w = z(self.k), 0.0  # linear: the naive forecast, the running mean of y
        self.learned = 0
        # series
        self.last: Tensor | None = None
        self.last_ts = 0.0
        self.count = 0
        self.rate = z(self.k)
        self.rates = z(self.lags if self.series else 0, self.k)  # newest first

    # --- pieces -------------------------------------------------------------------------------------------

    def _scales(self, m2: Tensor | None = None, count: int | None = None) -> Tensor:
        """The scales (1 where nothing was measured); a linear stream's inputs, during the warm-up, on the
        way from their mean log scale to their own: ``exp(w log s_j + (1 - w) mean log s)`` over the inputs
        measured, ``w`` the share of the log scales' variance across inputs beyond sampling noise
        (``SCALE_POOL / n``)."""
        m2 = self.scale_m2 if m2 is None else m2
        count = self.scale_n if count is None else count
        s = m2.sqrt()
        s = torch.where(s > 0, s, torch.ones_like(s))
        inputs = 0 if self.series else self.n_scale - self.k
        if inputs < 2 or T.SCALE_POOL <= 0 or count >= T.SCALE_WARMUP:
            return s
        measured = [j for j in range(inputs) if m2[j] > 0]
        if len(measured) < 2:
            return s
        logs = [float(s[j].log()) for j in measured]
        mean = sum(logs) / len(logs)
        spread = sum((v - mean) ** 2 for v in logs) / (len(logs) - 1)  # the inputs' log scales' variance
        noise = T.SCALE_POOL / max(count, 1)  # a log scale's sampling variance
        between = max(spread - noise, 0.0)
        w = between / (between + noise)
        s = s.clone()
        for j in measured:
            s[j] = torch.exp(w * s[j].log() + (1 - w) * mean)
        return s

    def _features(self, x: Tensor | None) -> Tensor:
        s = self._scales()
        if self.series:
            feats = (self.rates / s[: self.k]).flatten()
            if self.level_features:
                assert self.last is not None
                feats = torch.cat([feats, self.last / s[self.k :]])
        else:
            assert x is not None
            feats = x / s[: -self.k]
        feats = feats.clamp(-T.FEATURE_CLIP, T.FEATURE_CLIP)
        return torch.cat([feats, torch.ones(1, dtype=self.dt)])

    def _unit(self) -> Tensor:
        """Units of the model's output: the rate scale (series) or the target scale (linear)."""
        s = self._scales()
        return s[: self.k] if self.series else s[-self.k :]

    def _weight(self) -> Tensor:
        """The share of the model in the served forecast, per output."""
        if not self.spec.mix_naive:
            return torch.ones(self.k, dtype=self.dt)
        # no parameters in a series' naive forecast: it starts ahead; a linear stream's running mean does not
        bias, warmup = (T.MIX_BIAS, T.MIX_WARMUP) if self.series else (T.LINEAR_MIX_BIAS, T.LINEAR_MIX_WARMUP)
        if self.learned < warmup:
            return torch.zeros(self.k, dtype=self.dt)
        total = (self.mix_model + self.mix_naive).clamp_min(torch.finfo(self.dt).tiny)
        advantage = 2 * self.mix_n * (self.mix_naive - self.mix_model) / total
        return torch.sigmoid(T.MIX_ETA * advantage - bias)

    def _heads(self) -> Tensor:
        return self.weight.detach().view(self.h, self.k, self.p)

    def _model(self, phi: Tensor) -> Tensor:
        """The model's output in scaled units: each head's, weighted per output by
        ``softmax_h(-(L_h - min L) / (2 s2))``."""
        per_head = self._heads() @ phi  # [heads, k]
        if self.stat_w == 0 and not bool(self.head_loss.any()):
            return per_head.mean(0)  # nothing measured: equal shares
        tiny = torch.finfo(self.dt).tiny
        s2 = (self.head_s2 / max(self.stat_w, tiny)).clamp_min(tiny)
        gap = self.head_loss - self.head_loss.min(0).values
        shares = torch.exp(-gap / (2 * s2))
        return (shares / shares.sum(0) * per_head).sum(0)

    def _bounded(self, residual: Tensor) -> Tensor:
        """The model's departure from the naive forecast, at most BOUND times the naive's typical error."""
        if self.stat_w == 0:
            return residual
        bound = T.BOUND * (self.naive2 / self.stat_w).sqrt()
        return torch.minimum(torch.maximum(residual, -bound), bound)

    # --- one observation ----------------------------------------------------------------------------------

    def observe(self, x: Tensor, y: Tensor | None = None, ts: float | None = None) -> TrackingOutcome:
        x = x.to(self.dt)
        if self.series:
            return self._observe_series(x, ts)
        assert y is not None
        y = y.to(self.dt)
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            return TrackingOutcome(None, None, False, True, None)
        # the scales take this observation before it is predicted: the input's features are divided by
        # scales that include it; the target's scale does not move the prediction (the fold keeps the raw
        # mapping), and the step learns in the same scales
        self._update_scales(torch.cat([x, y]))
        naive = self.mean / self.mean_w if self.mean_w > 0 else torch.zeros(self.k, dtype=self.dt)
        model = naive + self._bounded(self._unit() * self._model(self._features(x)) - naive)
        served = naive + self._weight() * (model - naive)
        self._learn(self._features(x), y / self._unit(), y, model, naive)
        self.mean = self.mean * (1 - T.STAT_ALPHA) + y
        self.mean_w = self.mean_w * (1 - T.STAT_ALPHA) + 1
        return TrackingOutcome(served.tolist(), self._loss(served, y), True, False, None)

    def _observe_series(self, value: Tensor, ts: float | None) -> TrackingOutcome:
        t = self.last_ts + 1.0 if ts is None else float(ts)
        if not bool(torch.isfinite(value).all()) or (self.last is not None and not t > self.last_ts):
            return TrackingOutcome(None, None, False, True, self._forecast())
        self.count += 1
        if self.last is None:
            self.last, self.last_ts = value.clone(), t
            return TrackingOutcome(None, None, False, False, self._forecast())
        gap = t - self.last_ts
        naive_rate, model_rate, served_rate, _ = self._rates()
        served = self.last + gap * served_rate
        rate = (value - self.last) / gap
        self._update_scales(torch.cat([rate, value]) if self.level_features else rate)
        phi = self._features(None)  # in the scales that include this value
        self._learn(phi, (rate - naive_rate) / self._unit(), rate, model_rate, naive_rate)
        self.rates = torch.cat([rate.unsqueeze(0), self.rates[:-1]])
        self.rate = rate
        self.last, self.last_ts = value.clone(), t
        return TrackingOutcome(served.tolist(), self._loss(served, value), True, False, self._forecast())

    def _rates(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Naive, model and served rates of change for the next value, and the features."""
        is_track = isinstance(self.model, TrackModel)
        naive = self.rate.clone() if is_track else torch.zeros(self.k, dtype=self.dt)
        phi = self._features(None)
        model = naive + self._bounded(self._unit() * self._model(phi))
        served = naive + self._weight() * (model - naive)
        return naive, model, served, phi

    def _forecast(self) -> list[float] | None:
        """The next value one time unit ahead (what ``predict`` answers)."""
        if self.last is None:
            return None
        return (self.last + self._rates()[2]).tolist()

    def _learn(self, phi: Tensor, target: Tensor, y: Tensor, model: Tensor, naive: Tensor) -> None:
        """One preconditioned TrackIn step of every head on the residual ``target`` (model units), then the
        statistics."""
        residual = target - self._heads() @ phi  # [heads, k]
        stepped = residual  # the step's residual, clipped at CLIP; the statistics' at STAT_CLIP
        if self.stat_w > 0 and self.learned >= 2:
            rms = (self.resid2 / self.stat_w).sqrt()
            stepped = torch.minimum(torch.maximum(residual, -T.CLIP * rms), T.CLIP * rms)
            residual = torch.minimum(torch.maximum(residual, -T.STAT_CLIP * rms), T.STAT_CLIP * rms)
        grads, covs = [], []
        for h, forget in enumerate(self.forgets):
            p_phi = self.cov[h] @ phi
            gain = p_phi / (forget + phi @ p_phi)
            grads.append(-stepped[h].unsqueeze(1) * gain.unsqueeze(0))
            cov = (self.cov[h] - gain.unsqueeze(1) * p_phi.unsqueeze(0)) / forget
            cov = 0.5 * (cov + cov.T)
            peak = cov.diagonal().max()
            covs.append(cov * (T.COV_CAP / peak) if peak > T.COV_CAP else cov)
        self.weight.grad = torch.stack(grads).view(self.h * self.k, self.p)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.cov = covs
        best = self.head_loss.argmin(0)  # per output: the head the shares trusted most
        self.head_s2 = self.head_s2 * (1 - T.STAT_ALPHA) + residual[best, torch.arange(self.k)].square()
        self.head_loss = self.head_loss * T.HEAD_RHO + residual.square()
        self.resid2 = self.resid2 * (1 - T.STAT_ALPHA) + residual.square()
        self.naive2 = self.naive2 * (1 - T.STAT_ALPHA) + (y - naive).square()
        self.stat_w = self.stat_w * (1 - T.STAT_ALPHA) + 1
        self.mix_model = T.MIX_RHO * self.mix_model + (y - model).abs() ** T.MIX_POWER
        self.mix_naive = T.MIX_RHO * self.mix_naive + (y - naive).abs() ** T.MIX_POWER
        self.mix_n = T.MIX_RHO * self.mix_n + 1
        self.learned += 1

    def _update_scales(self, values: Tensor) -> None:
        """Mean squares over the first SCALE_WARMUP observations, then frozen: a scale that no longer moves
        leaves the mapping from inputs to predictions as learned."""
        if self.spec.standardize and self.scale_n < T.SCALE_WARMUP:
            m2_old, n_old = self.scale_m2, self.scale_n
            self.scale_n += 1
            self.scale_m2 = self.scale_m2 + (values.square() - self.scale_m2) / self.scale_n
            new = self._scales()
            self._fold(
                torch.where(m2_old > 0, self._scales(m2_old, n_old), new), new
            )  # not measured before: as new

    def _fold(self, old: Tensor, new: Tensor) -> None:
        """Each head re-expressed in the new scales: the same raw mapping, covariance and errors, and the
        prior still held (``forget^t / PRIOR`` per feature, in the old scales) moved to the new ones."""
        k = self.k
        if self.series:
            f_old = torch.cat([old[:k].repeat(self.lags), old[k:], torch.ones(1, dtype=self.dt)])
            f_new = torch.cat([new[:k].repeat(self.lags), new[k:], torch.ones(1, dtype=self.dt)])
            r = old[:k] / new[:k]
        else:
            f_old = torch.cat([old[:-k], torch.ones(1, dtype=self.dt)])
            f_new = torch.cat([new[:-k], torch.ones(1, dtype=self.dt)])
            r = old[-k:] / new[-k:]
        q = f_new / f_old
        heads = self.weight.detach().view(self.h, k, self.p)
        with torch.no_grad():
            for h, forget in enumerate(self.forgets):
                w = heads[h] * (r.unsqueeze(1) * q.unsqueeze(0))
                cov = self.cov[h] * (q.unsqueeze(1) * q.unsqueeze(0))
                c = torch.tensor(forget, dtype=self.dt) ** self.learned / self.prior * (1 - 1 / q.square())
                for j in range(self.p):  # P <- (P^-1 + diag(c))^-1, one Sherman-Morrison update per feature
                    col = cov[:, j].clone()
                    g = 1 / (1 + c[j] * col[j])
                    cov = cov - c[j] * (col.unsqueeze(1) * col.unsqueeze(0)) * g
                    cov[:, j], cov[j, :] = col * g, col * g  # P_aj / (1 + c P_jj): no cancellation
                heads[h] = w - (w * c) @ cov.T
                self.cov[h] = cov
        self.resid2 = self.resid2 * r.square()
        self.head_loss = self.head_loss * r.square()
        self.head_s2 = self.head_s2 * r.square()

    def _loss(self, served: Tensor, target: Tensor) -> float:
        r = served - target
        if self.spec.loss == "huber":
            d = self.spec.huber_delta
            a = r.abs()
            return float(torch.where(a <= d, 0.5 * r.square(), d * (a - 0.5 * d)).mean())
        return float(r.square().mean())


def finite_or_none(values: list[float] | None) -> list[float] | None:
    return None if values is None or not all(math.isfinite(v) for v in values) else values
