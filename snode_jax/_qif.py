"""Quadratic integrate-and-fire neuron."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractDynamics
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]


class QIFState(eqx.Module):
    """QIF state: membrane voltage `v`."""

    v: NeuronFloat


class QIFDynamics(AbstractDynamics):
    """Quadratic integrate-and-fire:
    `tau_mem dv/dt = k (v - v_rest)(v - v_critical) + R I`.

    Below `v_critical` the membrane relaxes to `v_rest`; above it the voltage runs
    away and reaches infinity in finite time. A spike is `v` reaching `v_peak`; then
    `v <- v_reset`.

    **Arguments:** `tau_mem` (ms, `> 0`), `k` (`> 0`, per unit voltage), `v_rest`,
    `v_critical`, `v_reset`, `v_peak`, `R` (input resistance): scalars or one per
    neuron, with `v_rest < v_critical` and `v_reset < v_peak`.
    """

    tau_mem: Float[Array, "*n"]
    k: Float[Array, "*n"]
    v_rest: Float[Array, "*n"]
    v_critical: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    v_peak: Float[Array, "*n"]
    R: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = (
        "tau_mem",
        "k",
        "v_rest",
        "v_critical",
        "v_reset",
        "v_peak",
        "R",
    )

    def __init__(
        self,
        tau_mem: _Param = 10.0,
        k: _Param = 1.0,
        v_rest: _Param = 0.0,
        v_critical: _Param = 1.0,
        v_reset: _Param = 0.0,
        v_peak: _Param = 10.0,
        R: _Param = 1.0,
    ):
        values = (tau_mem, k, v_rest, v_critical, v_reset, v_peak, R)
        for name, value in zip(self.parameter_names, values):
            setattr(self, name, as_param(name, value))

    def __check_init__(self):
        if check_params(
            self, self.parameter_names, ("tau_mem", "k"), {"tau_mem": "ms"}
        ):
            check_below(self, "v_rest", "v_critical")
            check_below(self, "v_reset", "v_peak")

    def init_state(self, n_neurons: int, dtype) -> QIFState:
        return QIFState(jnp.broadcast_to(self.v_rest, (n_neurons,)).astype(dtype))

    def vector_field(self, t, y: QIFState, current) -> QIFState:
        del t
        quad = self.k * (y.v - self.v_rest) * (y.v - self.v_critical)
        return QIFState((quad + self.R * current) / self.tau_mem)

    def threshold(self, y: QIFState):
        return y.v - self.v_peak

    def reset(self, y: QIFState) -> QIFState:
        return QIFState(jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype))

    def voltage(self, y: QIFState):
        return y.v

    def constraints(self, y: QIFState):
        return {
            "tau_mem > 0": jnp.all(self.tau_mem > 0),
            "k > 0": jnp.all(self.k > 0),
            "v_rest < v_critical": jnp.all(self.v_rest < self.v_critical),
            "v_reset < v_peak": jnp.all(self.v_reset < self.v_peak),
            "initial v < v_peak": jnp.all(y.v < self.v_peak),
        }
