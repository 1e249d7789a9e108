"""End-to-end tests of the service: a real ``trackin serve`` process (tests/support/server.py), real httpx
and websockets clients. Fixtures live in conftest.py; the plain helpers every module uses live here.

The reference for every served number is an in-process `models.engine.Engine` fed the same observations
in the same order (`Reference`): the service must add transport, never change the arithmetic.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import httpx
import numpy as np
import torch

from tests.support.tolerances import memory, step_ops, tolerance
from trackin.models.engine import Engine, ItemResult
from trackin.models.specs import TRACKIN_DEFAULTS, ARModel, MLPModel, StreamSpec, TrackModel

__all__ = [
    "AR",
    "LINEAR",
    "MLP",
    "Reference",
    "assert_close",
    "assert_error",
    "assert_results_match",
    "check_error_body",
    "create",
    "state_of",
    "unique",
]

LINEAR: dict[str, Any] = {"model": {"family": "linear", "in_dim": 3, "init": "random", "seed": 7}}
MLP: dict[str, Any] = {"model": {"family": "mlp", "in_dim": 4, "hidden": [8], "seed": 3}}
AR: dict[str, Any] = {"model": {"family": "ar", "dim": 2, "lags": 3, "target": "delta"}}

# The engine runs in float32 by default. The server and the reference run the same engine code, but the
# server merges concurrent requests (other streams share the pool) into batches of other sizes, whose kernels
# (vector body or scalar tail, reduction order) may round the last bits differently, and differences add up
# over a stream's memory. So served values equal the reference's within the rule of tests/support/
# tolerances.py: the largest model here (MLP), the steps taken up to the default optimizers' memory (momentum
# gamma 0.98: 50 steps), inputs, targets and parameter terms below 4 (squared for losses).
OPS = step_ops(cast(MLPModel, StreamSpec.model_validate(MLP).model))
_DEFAULTS: Any = TRACKIN_DEFAULTS  # the optimizer spec's fields are made at run time (models/specs.py)
MEMORY = memory(
    decays=(_DEFAULTS.gamma, _DEFAULTS.eps_decay, 0.9), lrs=(_DEFAULTS.lr, 0.02, 0.01)
)  # also covers test_observations_api's sgd (momentum 0.9, lr 0.02) and adam (lr 0.01)
SCALE = 4.0


def unique(prefix: str = "s") -> str:
    """A stream id no other test uses (tests share one server)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create(http: httpx.Client, stream_id: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    response = http.put(f"/v1/streams/{stream_id}", json=dict(spec))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    *,
    field: str | None = None,
    stream: str | None = None,
) -> dict[str, Any]:
    """The response is the service's one error shape, with this status, code, field and stream."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body = response.json()
    return check_error_body(body, code, field=field, stream=stream)


def check_error_body(
    body: Any, code: str, *, field: str | None = None, stream: str | None = None
) -> dict[str, Any]:
    """``{"error": {"code", "message", "field", "stream"}}`` and nothing else (also inside WS answers)."""
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "seq"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "field", "stream"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error["field"] == field, error
    assert error["stream"] == stream, error
    result: dict[str, Any] = error
    return result


def state_of(http: httpx.Client, stream_id: str, probe: Sequence[float] | None) -> tuple[Any, Any]:
    """Everything observable about a stream: its description (spec, figures, times) and a prediction
    (for ``probe`` inputs, or the ar forecast when ``probe`` is None). Equal before and after a rejected
    request means the request changed neither the step count nor the parameters."""
    described = http.get(f"/v1/streams/{stream_id}")
    assert described.status_code == 200, described.text
    body = {"x": list(probe)} if probe is not None else None
    predicted = http.post(f"/v1/streams/{stream_id}/predict", json=body)
    assert predicted.status_code == 200, predicted.text
    return described.json(), predicted.json()["prediction"]


class Reference:
    """One stream in an in-process engine, fed observations as the wire sends them."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = StreamSpec.model_validate(dict(spec))
        self.engine = Engine("cpu")
        self.engine.add("ref", self.spec)

    def observe(self, observation: Mapping[str, Any]) -> ItemResult:
        if isinstance(self.spec.model, ARModel | TrackModel):
            value = observation["value"]
            inputs = np.asarray(value if isinstance(value, list) else [value], dtype=np.float64)
            return self.engine.observe(["ref"], [inputs], [None], [observation.get("ts")])[0]
        y = observation["y"]
        x = np.asarray(observation["x"], dtype=np.float64)
        target = np.asarray(y if isinstance(y, list) else [y], dtype=np.float64)
        return self.engine.observe(["ref"], [x], [target])[0]

    def observe_all(self, observations: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        return [self.observe(o) for o in observations]

    def predict(self, x: Sequence[float] | None) -> list[float] | None:
        inputs = None if x is None else np.asarray(x, dtype=np.float64)
        return self.engine.predict(["ref"], [inputs])[0]


def _values(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def assert_close(
    served: Any, expected: list[float] | None, what: str, *, step: int | None = None, squared: bool = False
) -> None:
    """Served float32 values equal the reference's up to rounding (see OPS): after ``step`` steps of the
    stream (None: any number), ``squared`` for losses."""
    got = _values(served)
    if expected is None or got is None:
        assert (got, expected) == (None, None), f"{what}: served {served}, engine {expected}"
        return
    steps = MEMORY if step is None else min(step, MEMORY)
    tol = tolerance(torch.float32, ops=OPS, steps=steps + 1, scale=SCALE**2 if squared else SCALE)
    np.testing.assert_allclose(got, expected, **tol, err_msg=what)


def assert_results_match(served: Sequence[Mapping[str, Any]], expected: Sequence[ItemResult]) -> None:
    """Served answers equal the engine's item by item: step, prediction, loss, and for ar forecast and
    warming (float32 tolerance)."""
    assert len(served) == len(expected)
    for i, (got, want) in enumerate(zip(served, expected, strict=True)):
        where = f"item {i} (step {want.step})"
        assert got["step"] == want.step, f"{where}: {got}"
        assert got["applied"] == want.applied, f"{where}: {got}"
        loss = None if want.loss is None else [want.loss]
        assert_close(got["prediction"], want.prediction, f"{where} prediction", step=want.step)
        assert_close(got["loss"], loss, f"{where} loss", step=want.step, squared=True)
        if "forecast" in got:
            assert_close(got["forecast"], want.forecast, f"{where} forecast", step=want.step)
            assert got["warming"] == want.warming, f"{where}: {got}"
