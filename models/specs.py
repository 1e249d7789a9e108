"""Validated specs of a stream: its model family, loss, optimizer, dtype, drift detector.

A spec is the whole recipe for a stream's model: two streams with equal specs start in the same state (given
the seed). Specs are frozen pydantic models; unknown fields are errors, so a typo never silently becomes a
default. The optimizer specs are built from the declarations in :mod:`models.hyper` (one field per
hyperparameter, with its default and bounds), so they agree with the optimizer classes and the pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, model_validator

from trackin.models.hyper import ADAM, OPTIMIZERS, SGD, TRACKIN, Hyper, Hyperparameters
from trackin.models.layout import BOOL

__all__ = [
    "TRACKIN_DEFAULTS",
    "ARModel",
    "AdamSpec",
    "BaseOptimizerSpec",
    "DriftSpec",
    "LinearModel",
    "MLPModel",
    "ModelSpec",
    "OptimizerSpec",
    "SGDSpec",
    "StreamSpec",
    "TrackInSpec",
    "TrackModel",
    "layer_sizes",
]

MAX_WIDTH = 4096
Init = Literal["zeros", "random"]
Activation = Literal["relu", "tanh", "gelu", "sigmoid"]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
FLOAT_LIMIT = 1e30
"""Upper bound of every unbounded float setting: it must stay finite in a float32 pool column (3.4e38), with
room for the arithmetic done on it."""
MAX_SEED = 2**63 - 1
"""Seeds are int64 (torch's generator refuses 2**64)."""
MAX_COUNT = 10**9
"""Upper bound of counts kept in int64 columns, so arithmetic on them cannot overflow."""
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Spec(BaseModel):
    # Infinite or NaN hyperparameters (JSON 1e999, Python NaN) are never meaningful: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LinearModel(_Spec):
    """``y = W x + b``: in_dim -> out_dim."""

    family: Literal["linear"] = "linear"
    in_dim: Width
    out_dim: Width = 1
    init: Init = "zeros"
    seed: Seed = 0


class MLPModel(_Spec):
    """A multilayer perceptron: in_dim -> hidden... -> out_dim, one activation between layers."""

    family: Literal["mlp"] = "mlp"
    in_dim: Width
    hidden: tuple[Width, ...] = Field(default=(32,), min_length=1, max_length=8)
    activation: Activation = "tanh"
    out_dim: Width = 1
    init: Init = "random"
    seed: Seed = 0


class ARModel(_Spec):
    """A series model: from the last ``lags`` observations of ``dim`` values (or their changes, for target
    ``delta``) predict the next observation. ``hidden`` turns the linear head into an MLP."""

    family: Literal["ar"] = "ar"
    dim: Width = 1
    lags: Annotated[int, Field(ge=1, le=256)] = 4
    target: Literal["level", "delta"] = "delta"
    hidden: tuple[Width, ...] = Field(default=(), max_length=8)
    activation: Activation = "tanh"
    init: Init = "zeros"
    seed: Seed = 0

    @property
    def window(self) -> int:
        """Observations the lag buffer holds: one more than ``lags`` for changes."""
        return self.lags + 1 if self.target == "delta" else self.lags


class TrackModel(_Spec):
    """Boxes (or any positions) of a tracked object: constant velocity from the second observation on, plus
    a learned residual from the last ``lags`` velocities (docs/trackin.md, "Boxes"). Observations may carry
    ``ts`` (a frame number or a time): velocities are per unit of it, so gaps in frames are bridged."""

    family: Literal["track"] = "track"
    dim: Width = 4
    lags: Annotated[int, Field(ge=1, le=256)] = 4
    seed: Seed = 0


ModelSpec = Annotated[LinearModel | MLPModel | ARModel | TrackModel, Field(discriminator="family")]


def layer_sizes(model: LinearModel | MLPModel | ARModel | TrackModel) -> list[int]:
    """Widths from input to output; every family is a stack of affine layers."""
    if isinstance(model, LinearModel):
        return [model.in_dim, model.out_dim]
    if isinstance(model, MLPModel):
        return [model.in_dim, *model.hidden, model.out_dim]
    if isinstance(model, TrackModel):
        return [model.lags * model.dim, model.dim]
    return [model.lags * model.dim, *model.hidden, model.dim]


class BaseOptimizerSpec(_Spec):
    """Base of the optimizer specs, whose fields are derived from the declarations in :mod:`models.hyper`."""

    if TYPE_CHECKING:  # the fields exist at run time only; ``name`` is the first, the optimizer's tag

        def __init__(self, **hyperparameters: Any) -> None: ...

        @property
        def name(self) -> str: ...


def _field(h: Hyper) -> tuple[Any, Any]:
    """A declared hyperparameter as a pydantic field definition: its type, and its default and bounds."""
    kind: Any = float | None if h.optional else float
    if h.choices:
        kind = Literal[h.choices]
    elif h.kind == BOOL:
        kind = bool
    le = h.le
    if kind in (float, float | None) and h.le is None and h.lt is None:
        le = FLOAT_LIMIT
    return kind, Field(h.default, gt=h.gt, ge=h.ge, lt=h.lt, le=le)


def _optimizer_spec(
    cls_name: str, hyper: Hyperparameters, doc: str, **extra: tuple[Any, Any]
) -> type[BaseOptimizerSpec]:
    """The spec class of an optimizer: ``name`` (its tag), then one field per declared hyperparameter, then
    ``extra`` fields that shape the pool rather than the functional core's step."""
    fields: dict[str, Any] = {"name": (Literal[hyper.name], hyper.name)}
    fields.update((h.name, _field(h)) for h in hyper)
    fields.update(extra)
    return create_model(cls_name, __base__=BaseOptimizerSpec, __doc__=doc, __module__=__name__, **fields)


PRECONDITIONS = ("auto", "none", "rls")
Forget = Annotated[float, Field(ge=0.5, le=1)]
FORGET_HEADS: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99, 0.999)
"""The default ``forget``: one RLS head per forgetting factor, mixed by their recent errors
(docs/trackin.md, "Tracking real data"): fast drifts want 0.8-0.95, real data long memory."""


def forgets(opt: BaseOptimizerSpec) -> tuple[float, ...]:
    """The forgetting factors of a TrackIn spec's RLS heads (a number: one head)."""
    value = opt.forget  # type: ignore[attr-defined]
    return (float(value),) if isinstance(value, int | float) else tuple(float(f) for f in value)


TRACKIN_EXTRA = {"precondition", "forget"}
"""TrackInSpec's fields that are not arguments of the TrackIn optimizer class."""

TrackInSpec = _optimizer_spec(
    "TrackInSpec",
    TRACKIN,
    "TrackIn's hyperparameters (docs/trackin.md). ``precondition``: ``rls`` preconditions the step with a "
    "per-stream RLS covariance (closed-form families, mse or huber loss), one head per forgetting factor in "
    "``forget`` (a number: one head); "
    "``auto`` (the default) does so wherever it applies; with it, ``lr`` defaults to 1 (the full RLS gain).",
    precondition=(Literal[PRECONDITIONS], "auto"),
    forget=(Forget | Annotated[tuple[Forget, ...], Field(min_length=1, max_length=8)], FORGET_HEADS),
)
SGDSpec = _optimizer_spec("SGDSpec", SGD, "SGD with optional momentum, dampening and debiasing (a baseline).")
AdamSpec = _optimizer_spec("AdamSpec", ADAM, "Adam (a baseline).")

TRACKIN_DEFAULTS = TrackInSpec()
"""TrackIn's defaults, chosen with bench/accuracy.py (docs/trackin.md), as a spec."""


def _optimizer_name(value: Any) -> str:
    """The optimizer's ``name``; left out, it is TrackIn's (defaults fill whatever is left out)."""
    found = value.get("name", "trackin") if isinstance(value, dict) else getattr(value, "name", "trackin")
    return str(found)


if TYPE_CHECKING:
    OptimizerSpec = BaseOptimizerSpec
else:
    OptimizerSpec = Annotated[
        Annotated[TrackInSpec, Tag("trackin")]
        | Annotated[SGDSpec, Tag("sgd")]
        | Annotated[AdamSpec, Tag("adam")],
        Discriminator(_optimizer_name),
    ]


class DriftSpec(_Spec):
    """Page-Hinkley test on the loss, in units of the stream's mean loss (so one default fits all scales).

    ``delta``: tolerated relative rise; ``threshold``: alarm level of the cumulative statistic; ``warmup``:
    losses that set the running mean before the test arms; ``reset_momentum``: clear the optimizer's momentum
    on a drift. The defaults were measured with the batched engine on linear streams with Gaussian noise
    (tests/models/test_pool.py, docs/engine.md): no false alarm in 200 streams x 5,000 steps, a jump of
    8 noise standard deviations flagged within a few observations.
    """

    enabled: bool = True
    delta: float = Field(default=2.0, ge=0, le=FLOAT_LIMIT)
    threshold: float = Field(default=50.0, gt=0, le=FLOAT_LIMIT)
    warmup: int = Field(default=50, ge=1, le=MAX_COUNT)
    reset_momentum: bool = False


class StreamSpec(_Spec):
    """Everything that defines a stream's model and how it learns.

    ``standardize``: learn on inputs and targets divided by scales the stream measures itself (off: for
    users who scale their own data). ``mix_naive``: serve a mix of the model and the naive forecast that fits
    the target, weighted by their recent errors (docs/trackin.md, "Tracking real data")."""

    model: ModelSpec
    loss: Literal["mse", "huber", "bce"] = "mse"
    huber_delta: float = Field(default=1.0, gt=0, le=FLOAT_LIMIT)
    optimizer: OptimizerSpec = Field(default_factory=TrackInSpec)
    dtype: Literal["float32", "float64"] = "float32"
    standardize: bool = True
    mix_naive: bool = True
    export_metrics: bool = False
    drift: DriftSpec = Field(default_factory=DriftSpec)

    @model_validator(mode="after")
    def _resolve_precondition(self) -> StreamSpec:
        """``precondition: auto`` becomes ``rls`` or ``none`` here, and ``lr`` left out becomes 1 with
        ``rls``: a stored spec then says exactly how its stream learns."""
        opt = self.optimizer
        if opt.name != "trackin":
            if isinstance(self.model, TrackModel):
                raise ValueError("model.family track learns with the trackin optimizer only")
            return self
        closed = isinstance(self.model, LinearModel | TrackModel) or (
            isinstance(self.model, ARModel) and not self.model.hidden
        )
        applies = closed and self.loss in ("mse", "huber")
        mode = opt.precondition  # type: ignore[attr-defined]
        if mode == "rls" and not applies:
            raise ValueError(
                "optimizer.precondition rls needs a linear, ar (without hidden layers) or track model "
                "and the mse or huber loss"
            )
        if isinstance(self.model, TrackModel) and (mode == "none" or not applies):
            raise ValueError("model.family track needs optimizer.precondition auto or rls, and mse or huber")
        if mode != "auto":
            return self
        resolved = "rls" if applies else "none"
        update: dict[str, Any] = {"precondition": resolved}
        if resolved == "rls" and "lr" not in opt.model_fields_set:
            update["lr"] = 1.0
        object.__setattr__(self, "optimizer", opt.model_copy(update=update))
        return self

    @property
    def tracking(self) -> bool:
        """Whether the stream learns on the scale-free, preconditioned path (:mod:`models.tracking`)."""
        return self.optimizer.name == "trackin" and self.optimizer.precondition == "rls"  # type: ignore[attr-defined]

    def pool_key(self) -> tuple[object, ...]:
        """Streams with equal keys share stacked tensors: same shapes, loss, optimizer kind and dtype, and
        the same choices of ``standardize`` and ``mix_naive`` (they decide the state a row holds)."""
        structure = self.model.model_dump(exclude={"init", "seed"})
        opt = self.optimizer
        return (
            tuple(sorted((k, str(v)) for k, v in structure.items())),
            self.loss,
            opt.name,
            OPTIMIZERS[opt.name].state_buffers(opt.model_dump()),  # eta > 0: TrackIn keeps eps, ...
            self.dtype,
            self.tracking,
            self.standardize,
            self.mix_naive,
            forgets(opt) if self.tracking else (),  # the heads of the tracking path
        )
