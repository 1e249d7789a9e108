"""The ``torch.optim.Optimizer`` frame TrackIn and the baselines share: each group is one row of the core.

A subclass names its declaration (``hyper``, from :mod:`models.hyper`) and the per-group state besides the
step count, and runs its functional core on one row. This frame validates hyperparameters against the
declaration, creates state lazily, gathers a group's tensors as ``[1, *shape]`` rows and writes the group's
scalars back to every parameter's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from trackin.models.hyper import Hyperparameters

__all__ = ["Row", "RowOptimizer"]


@dataclass(frozen=True, slots=True)
class Row:
    """One parameter group as one row of the functional core: ``[1, *shape]`` views of its parameters,
    gradients and each buffer (by state key), and the group's scalars (``step``, ``row_state``) as ``[1]``
    copies that the core updates in place."""

    params: list[Tensor]
    grads: list[Tensor]
    buffers: dict[str, list[Tensor]]
    scalars: dict[str, Tensor]


class RowOptimizer(Optimizer):
    """An optimizer whose parameter groups are rows of a functional core (``models.functional``).

    Class attributes of a subclass: ``hyper`` (its declaration), ``options`` (keyword arguments that are not
    hyperparameters, with their defaults: ``maximize``, ``foreach``) and ``row_state`` (the group's scalars
    besides ``step``, created in the parameters' dtype; a parameter that joins late starts at the group's
    values).
    """

    hyper: ClassVar[Hyperparameters]
    options: ClassVar[Mapping[str, Any]] = {"maximize": False}
    row_state: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], arguments: Mapping[str, Any]
    ) -> None:
        """``arguments``: the subclass constructor's arguments by name (its ``locals()``); the declared
        hyperparameters and the options are taken from it."""
        values = {name: arguments[name] for name in self.hyper.names}
        self.hyper.validate(values)
        super().__init__(params, {**values, **{name: arguments[name] for name in self.options}})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group's own hyperparameters before accepting it."""
        super().add_param_group(param_group)
        self.hyper.validate(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved before an option or hyperparameter existed
            for name, default in {**self.hyper.defaults, **self.options}.items():
                group.setdefault(name, default)

    def _buffers(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter buffers this group keeps, by state key: those the declaration keeps with the
        group's hyperparameters (TrackIn with eta = 0: no eps)."""
        return self.hyper.state_buffers(group)

    def _row_step(self, row: Row, hyper: dict[str, Any]) -> None:
        """Run the functional core on one row; ``hyper``: the group's hyperparameters and options by name."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step per group; ``closure`` re-evaluates the loss (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            row = Row([], [], {name: [] for name in self._buffers(group)}, {})
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(group, p, state)
                for name, column in row.buffers.items():
                    if name not in state:
                        state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    column.append(state[name].unsqueeze(0))
                row.params.append(p.unsqueeze(0))
                row.grads.append(p.grad.unsqueeze(0))
            if not row.params:
                continue
            first = self.state[next(p for p in group["params"] if p.grad is not None)]
            row.scalars.update((key, first[key].view(1).clone()) for key in ("step", *self.row_state))
            self._row_step(row, {name: group[name] for name in (*self.hyper.names, *self.options)})
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    for key, value in row.scalars.items():
                        state[key].copy_(value[0])
        return loss

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """A parameter's first state: the group's scalars belong to the row, so a late parameter joins at the
        group's values."""
        group_state = next((self.state[q] for q in group["params"] if self.state.get(q)), None)
        for key in ("step", *self.row_state):
            if group_state is not None:
                state[key] = group_state[key].clone()
            else:
                dtype = torch.int64 if key == "step" else p.dtype
                state[key] = torch.zeros((), dtype=dtype, device=p.device)
