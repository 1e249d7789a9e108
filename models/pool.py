"""A pool of streams that share one model structure, loss, optimizer kind and dtype, in stacked tensors.

Every per-stream quantity (parameters, optimizer state, hyperparameters, the ``ar`` lag window, running
figures, drift detector) is a row of one tensor in ``StreamPool.state``; dimension 0 is the slot. The keys
(:mod:`models.keys`, laid out by :mod:`models.rows`) are views of three packed buffers (:mod:`models.layout`),
so one call to :meth:`StreamPool.observe` steps all the streams of a batch with one vectorised update per
round (:mod:`models.round`; a round holds at most one observation per stream).

The pool's own job is the slots: placing streams (growing by doubling), freeing them, exporting and loading
one stream's state, and splitting a batch into rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from trackin.models import losses, naive_mix, standardize
from trackin.models.families import FlatModel
from trackin.models.figures import figure_rows, fleet_rows
from trackin.models.fused_round import FusedRound
from trackin.models.hyper import OPTIMIZERS
from trackin.models.kernels import Kernels, fused_applies
from trackin.models.layout import KINDS, Entries, PackedState, row_nbytes
from trackin.models.round import Round
from trackin.models.rows import Settings, Templates, state_entries
from trackin.models.specs import ARModel, StreamSpec, TrackModel, forgets
from trackin.models.tracking_round import TrackingNet, TrackingRound

if TYPE_CHECKING:
    from trackin.models.fused_tracking import FusedTrackingRound

__all__ = [
    "INITIAL_POOL_BYTES",
    "HostResult",
    "ObserveResult",
    "StreamPool",
    "initial_capacity",
    "slot_bytes",
]

INITIAL_POOL_BYTES = 1 << 20
"""A new pool starts with up to 16 slots, but no more than fit in this: a pool of wide models starts with
one slot and doubles as streams arrive, instead of reserving 16 streams' worth of memory for the first."""


def _layout(template: StreamSpec) -> tuple[FlatModel | TrackingNet, Entries]:
    """The model of a pool of ``template`` and its state entries."""
    hyper = OPTIMIZERS[template.optimizer.name]
    buffers = hyper.state_buffers(template.optimizer.model_dump())
    if template.tracking:
        tracking = TrackingNet(template.model, len(forgets(template.optimizer)))
        extra = tracking.layout.entries()
        return tracking, state_entries(template.model, hyper, buffers, shapes=tracking.shapes, extra=extra)
    assert not isinstance(template.model, TrackModel)
    norm = standardize.entries(template) + naive_mix.entries(template)
    return FlatModel(template.model), state_entries(template.model, hyper, buffers, norm=norm)


def slot_bytes(spec: StreamSpec) -> int:
    """Bytes one stream of ``spec`` holds in its pool (parameters, optimizer state, figures...)."""
    return row_nbytes(_layout(spec)[1], getattr(torch, spec.dtype))


def initial_capacity(spec: StreamSpec) -> int:
    return max(1, min(16, INITIAL_POOL_BYTES // slot_bytes(spec)))


class ObserveResult(NamedTuple):
    """Per-observation outcomes, in input order, on the host (one copy per batch). A named tuple: built
    once per ``observe`` call, where a frozen dataclass's construction alone costs microseconds."""

    predictions: Tensor  # [n, out] made before learning; NaN for warming ar streams
    losses: Tensor  # [n]; NaN where nothing was scored
    steps: Tensor  # [n] the stream's step count after this observation
    applied: Tensor  # [n] bool: one optimizer step was taken
    warming: Tensor  # [n] bool: ar stream still filling its lag window (no step)
    nonfinite: Tensor  # [n] bool: loss, gradient (or arriving ar value) not finite, state left as it was
    drift: Tensor  # [n] bool: the drift detector fired on this observation
    forecasts: Tensor | None  # [n, dim] next forecast of ar streams (NaN until the window is full)


class HostResult(NamedTuple):
    """`ObserveResult`'s fields as NumPy arrays (`StreamPool.observe_host`)."""

    predictions: np.ndarray
    losses: np.ndarray
    steps: np.ndarray
    applied: np.ndarray
    warming: np.ndarray
    nonfinite: np.ndarray
    drift: np.ndarray
    forecasts: np.ndarray | None


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
    they are replaced when the pool grows). ``kernels``: ``auto`` steps with a fused CPU kernel where one
    applies (:mod:`models.kernels`), ``torch`` always with the torch rounds.
    """

    def __init__(
        self,
        template: StreamSpec,
        device: torch.device | str = "cpu",
        capacity: int | None = None,
        kernels: Kernels = "auto",
    ) -> None:
        self.template = template
        self.model = template.model
        self.device = torch.device(device)
        self.dtype: torch.dtype = getattr(torch, template.dtype)
        self.optimizer = template.optimizer.name
        hyper = OPTIMIZERS[self.optimizer]
        buffers = hyper.state_buffers(template.optimizer.model_dump())
        self.tracking = template.tracking
        self._loss = losses.get(template.loss)
        net, entries = _layout(template)
        self._net = net
        self.param_names = list(net.shapes)
        self.out_dim = net.out_dim
        if capacity is None:
            capacity = initial_capacity(template)
        self._packed = PackedState(entries, self.dtype, self.device, max(1, capacity))
        self._free: list[int] = list(range(self._packed.capacity - 1, -1, -1))
        self._settings = Settings(hyper, self._packed)
        self._templates = Templates(template.pool_key(), hyper, self._packed, self._settings)
        self._round: Round | FusedRound
        self._predictor: Round | FusedRound
        self._fused: FusedTrackingRound | None = None
        fused = kernels == "auto" and fused_applies(self.device, self.dtype)
        if isinstance(net, TrackingNet) and fused:
            from trackin.models.fused_tracking import FusedTrackingRound  # numba: imported when used

            args = (self._packed, net, self._loss, hyper, buffers, self._settings, template)
            self._round = self._fused = FusedTrackingRound(*args)
        elif isinstance(net, TrackingNet):
            self._round = TrackingRound(
                self._packed, net, self._loss, hyper, buffers, self._settings, template
            )
        elif fused and net.closed_form:
            self._round = FusedRound(self._packed, net, template.loss, hyper, buffers)
        else:
            self._round = Round(self._packed, net, self._loss, hyper, buffers, self._settings)
        self._predictor = self._round  # predictions without learning, from the same implementation
        self.fused = self._fused is not None or isinstance(self._round, FusedRound)
        """Steps run in a fused CPU kernel (models/kernels.py): it takes a whole batch, repeats too."""
        self._sync_free = self.device.type != "cpu"  # see Round.__call__

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

    # ----- slots ------------------------------------------------------------------------------------------

    def add(self, spec: StreamSpec) -> int:
        """Place a new stream in a free slot (growing by doubling when full), initialised from its spec."""
        template = self._templates(spec)
        if not self._free:
            old = self.capacity
            self._packed.grow(old * 2)
            self._free.extend(range(self.capacity - 1, old - 1, -1))
        slot = self._free.pop()
        self._packed.write_row(slot, template.rows)
        self._settings.count(template.values, +1)
        return slot

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.capacity or slot in self._free:
            raise KeyError(slot)

    def remove(self, slot: int) -> None:
        """Free a slot for reuse."""
        self._check_slot(slot)
        self._settings.count(self._settings.read(self._packed.views_of(self._packed.read_row(slot))), -1)
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
            self._settings.count(self._settings.read(views), -1)
        for key, view in views.items():
            view[0].copy_(state[key])
        self._packed.write_row(slot, rows)
        if resident:
            self._settings.count(self._settings.read(views), +1)

    # ----- many streams at once (batched checkpoints and restores) ----------------------------------------

    @property
    def packed(self) -> PackedState:
        """The stacked buffers and their layout: a checkpoint of many streams is their rows (read only)."""
        return self._packed

    def export_rows(self, slots: np.ndarray) -> list[Tensor]:
        """Streams ``slots``' rows of each buffer, ``[n, width]`` copies on the CPU: one gather per buffer."""
        s = torch.as_tensor(np.asarray(slots), dtype=torch.int64).to(self.device)
        return [self._packed.gather(s, kind).cpu() for kind in KINDS]

    def add_rows(self, spec: StreamSpec, rows: Sequence[Tensor]) -> np.ndarray:
        """Place many new streams of ``spec`` whose state is given as rows laid out like `packed` (a batched
        restore: one copy per buffer instead of one per stream and key); their slots."""
        self._templates(spec)  # the spec belongs to this pool
        n = int(rows[0].shape[0])
        for kind, block in zip(KINDS, rows, strict=True):
            if tuple(block.shape) != (n, self._packed.widths[kind]):
                raise ValueError(f"rows of buffer {kind}: shape {tuple(block.shape)}")
        while len(self._free) < n:
            old = self.capacity
            self._packed.grow(old * 2)
            self._free.extend(range(self.capacity - 1, old - 1, -1))
        slots = np.array([self._free.pop() for _ in range(n)], dtype=np.int64)
        s = torch.from_numpy(slots).to(self.device)
        placed = [
            block.to(device=self.device, dtype=self._packed.dtypes[kind])
            for kind, block in zip(KINDS, rows, strict=True)
        ]
        for kind, block in zip(KINDS, placed, strict=True):
            self._packed.buffers[kind].index_copy_(0, s, block)
        self._settings.count_rows(placed)
        return slots

    # ----- figures ----------------------------------------------------------------------------------------

    def figure_rows(self, slots: np.ndarray) -> np.ndarray:
        """The figures of streams ``slots``: ``[n, 13]`` float64 on the host (see
        :func:`models.figures.figure_rows`)."""
        window = self.model.window if isinstance(self.model, ARModel) and not self.tracking else None
        return figure_rows(self._packed, np.asarray(slots, dtype=np.int64), window)

    def fleet_rows(self) -> Tensor:
        """Loss EWMA, beta_t and ||eps|| of every resident stream that has stepped: ``[n, 3]`` float64."""
        return fleet_rows(self._packed, self.used_mask())

    # ----- learning ---------------------------------------------------------------------------------------

    def _mode(self) -> torch.autograd.grad_mode.no_grad | torch.autograd.grad_mode.inference_mode:
        """Inference mode where no gradient is recorded (single-layer models): about 15% less overhead per
        op; pools that need autograd for their gradient run under no_grad."""
        return torch.inference_mode() if self._net.closed_form else torch.no_grad()

    def predict(self, slots: np.ndarray, inputs: Tensor | None = None) -> Tensor:
        """Predictions without learning: ``[n, out]`` on the host. For ``ar`` pools, the current forecast."""
        s = torch.as_tensor(np.asarray(slots), dtype=torch.int64).to(self.device)
        x = None if inputs is None else inputs.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            out = self._predictor.predict(s, x)
        return _plain(out.cpu())

    def predict_host(self, slots: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        """:meth:`predict` with NumPy in and out: a fused tracking pool answers without a torch op (each
        costs microseconds, more than the kernel's prediction)."""
        if self._fused is not None:
            return self._fused.predict_rows(np.asarray(slots, dtype=np.int64), inputs)
        return self.predict(slots, None if inputs is None else torch.from_numpy(inputs)).numpy()

    def observe(
        self, slots: np.ndarray, inputs: Tensor, targets: Tensor | None = None, times: Tensor | None = None
    ) -> ObserveResult:
        """Predict, score and step once per observation, in arrival order.

        ``inputs``: ``[n, in]`` features (``ar``, ``track``: ``[n, dim]`` newly arrived values);
        ``targets``: ``[n, out]`` (None for series, whose target is the arriving value); ``times``: ``[n]``
        the series' times (tracking path only; NaN or None: one time unit after the previous value).
        """
        slots = np.asarray(slots, dtype=np.int64)
        if self._fused is not None:  # one kernel call for the whole batch, in arrival order
            return ObserveResult(*self._fused.observe(slots, inputs, targets, times))
        if isinstance(self._round, FusedRound):  # one kernel call, rows in arrival order: no rounds
            r = self._round.run(slots, inputs, targets)
            t = torch.from_numpy
            f = r.flags
            applied, warming, nonfinite, drift = t(f[0]), t(f[1]), t(f[2]), t(f[3])
            ar = None if r.forecast is None else t(r.forecast)
            return ObserveResult(t(r.pred), t(r.loss), t(r.step), applied, warming, nonfinite, drift, ar)
        dev, dt = self.device, self.dtype
        inputs = inputs.to(device=dev, dtype=dt)
        targets = targets.to(device=dev, dtype=dt) if targets is not None else None
        times = times.to(device=dev, dtype=dt) if times is not None and self.tracking else None
        rounds = _occurrence_rounds(slots)
        parts: list[dict[str, Tensor]] = []
        step, sync_free = self._round, self._sync_free
        assert isinstance(step, Round)

        def run(s: np.ndarray, x: Tensor, y: Tensor | None, ts: Tensor | None) -> dict[str, Tensor]:
            s_dev = torch.from_numpy(s).to(dev)
            if isinstance(step, TrackingRound):
                return step(s_dev, x, y, sync_free=sync_free, ts=ts)
            return step(s_dev, x, y, sync_free=sync_free)

        with self._mode():
            if len(rounds) <= 1:  # one round (or an empty batch): no regrouping of inputs and outcomes
                parts.append(run(slots, inputs, targets, times))
            else:
                for positions in rounds:
                    pos = torch.from_numpy(positions).to(dev)
                    y = targets.index_select(0, pos) if targets is not None else None
                    ts = times.index_select(0, pos) if times is not None else None
                    parts.append(run(slots[positions], inputs.index_select(0, pos), y, ts))
        if len(parts) == 1:
            out = parts[0]
        else:
            inverse = torch.from_numpy(np.argsort(np.concatenate(rounds))).to(dev)
            out = {k: torch.cat([p[k] for p in parts]).index_select(0, inverse) for k in parts[0]}
        return _result({k: _plain(v.cpu()) for k, v in out.items()})

    def observe_host(
        self,
        slots: np.ndarray,
        inputs: np.ndarray,
        targets: np.ndarray | None = None,
        times: np.ndarray | None = None,
    ) -> HostResult:
        """:meth:`observe` on NumPy arrays, outcomes as NumPy arrays. A fused pool hands the arrays to its
        kernel and returns the kernel's outputs as they are: at batch 1 the tensor wrapping around the call
        (``from_numpy`` in, ``.numpy()`` out, one per field) costs more than the kernel's round itself."""
        if self._fused is not None:
            return HostResult(*self._fused.host(slots, inputs, targets, times))
        if isinstance(self._round, FusedRound):
            r = self._round.run(np.asarray(slots, dtype=np.int64), inputs, targets)
            f = r.flags
            return HostResult(r.pred, r.loss, r.step, f[0], f[1], f[2], f[3], r.forecast)
        t = torch.from_numpy
        out = self.observe(
            slots, t(inputs), None if targets is None else t(targets), None if times is None else t(times)
        )
        return HostResult(*(None if v is None else v.numpy() for v in out))  # type: ignore[arg-type]


def _result(host: dict[str, Tensor]) -> ObserveResult:
    """Outcomes by name (host tensors) as an ``ObserveResult``."""
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
