"""Izhikevich (2003) simple model of spiking neurons."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractDynamics
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]

# Named firing patterns of Izhikevich (2003), Fig. 2: (a, b, c, d).
IZHIKEVICH_PATTERNS = {
    "regular_spiking": (0.02, 0.2, -65.0, 8.0),
    "intrinsically_bursting": (0.02, 0.2, -55.0, 4.0),
    "chattering": (0.02, 0.2, -50.0, 2.0),
    "fast_spiking": (0.1, 0.2, -65.0, 2.0),
    "low_threshold_spiking": (0.02, 0.25, -65.0, 2.0),
}


class IzhikevichState(eqx.Module):
    """Izhikevich state: membrane voltage `v` (mV) and recovery variable `u`."""

    v: NeuronFloat
    u: NeuronFloat


class IzhikevichDynamics(AbstractDynamics):
    """Izhikevich (2003): `dv/dt = 0.04 v^2 + 5 v + 140 - u + I`,
    `du/dt = a (b v - u)`; a spike is `v` reaching `v_peak` (30 mV), then `v <- c`,
    `u <- u + d`. Time in ms, `v` in mV.

    **Arguments:** `a`, `b`, `c`, `d`, `v_peak` (scalars or one per neuron; `a > 0`,
    `c < v_peak`). [`IzhikevichDynamics.pattern`][] builds the named firing patterns.
    """

    a: Float[Array, "*n"]
    b: Float[Array, "*n"]
    c: Float[Array, "*n"]
    d: Float[Array, "*n"]
    v_peak: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d", "v_peak")

    def __init__(
        self,
        a: _Param = 0.02,
        b: _Param = 0.2,
        c: _Param = -65.0,
        d: _Param = 8.0,
        v_peak: _Param = 30.0,
    ):
        self.a = as_param("a", a)
        self.b = as_param("b", b)
        self.c = as_param("c", c)
        self.d = as_param("d", d)
        self.v_peak = as_param("v_peak", v_peak)

    def __check_init__(self):
        if check_params(self, self.parameter_names, ("a",)):
            check_below(self, "c", "v_peak")

    @classmethod
    def pattern(cls, name: str) -> "IzhikevichDynamics":
        """One of `regular_spiking`, `intrinsically_bursting`, `chattering`,
        `fast_spiking`, `low_threshold_spiking`."""
        if name not in IZHIKEVICH_PATTERNS:
            raise ValueError(
                f"`name` must be one of {sorted(IZHIKEVICH_PATTERNS)}, got {name!r}."
            )
        return cls(*IZHIKEVICH_PATTERNS[name])

    def init_state(self, n_neurons: int, dtype) -> IzhikevichState:
        v = jnp.full((n_neurons,), -65.0, dtype)
        u = jnp.broadcast_to(self.b * -65.0, (n_neurons,)).astype(dtype)
        return IzhikevichState(v, u)

    def vector_field(self, t, y: IzhikevichState, current) -> IzhikevichState:
        del t
        dv = 0.04 * y.v**2 + 5.0 * y.v + 140.0 - y.u + current
        du = self.a * (self.b * y.v - y.u)
        return IzhikevichState(dv, du)

    def threshold(self, y: IzhikevichState):
        return y.v - self.v_peak

    def reset(self, y: IzhikevichState) -> IzhikevichState:
        v = jnp.broadcast_to(self.c, y.v.shape).astype(y.v.dtype)
        return IzhikevichState(v, y.u + self.d)

    def voltage(self, y: IzhikevichState):
        return y.v

    def constraints(self, y: IzhikevichState):
        return {
            "a > 0": jnp.all(self.a > 0),
            "c < v_peak": jnp.all(self.c < self.v_peak),
            "initial v < v_peak": jnp.all(y.v < self.v_peak),
        }
