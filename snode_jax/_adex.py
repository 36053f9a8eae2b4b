"""Adaptive exponential integrate-and-fire neuron (Brette & Gerstner 2005)."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractDynamics
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]


class AdExState(eqx.Module):
    """AdEx state: membrane voltage `v` (mV) and adaptation current `w` (pA)."""

    v: NeuronFloat
    w: NeuronFloat


class AdExDynamics(AbstractDynamics):
    """Adaptive exponential integrate-and-fire neuron (Brette & Gerstner 2005).

    ```
    C dv/dt   = -g_L (v - E_L) + g_L Delta_T exp((v - V_T) / Delta_T) - w + I
    tau_w dw/dt = a (v - E_L) - w
    ```

    A spike is `v` reaching `v_peak`; then `v <- v_reset`, `w <- w + b`. Units: mV,
    ms, pF, nS, pA (the input current `I = weight @ x` is in pA). Defaults are the
    published parameters, with the spike detected at `v_peak = V_T + 5 Delta_T`
    (-40.4 mV), where the exponential term has taken over and the upstroke is
    committed. A higher `v_peak` (such as 0 mV) follows the upstroke further into
    the exponential blow-up: exact too, but it needs a smaller `dt_min` and a larger
    `max_steps`, since the step size must shrink with the blow-up time scale.

    **Arguments:** `C`, `g_L`, `E_L`, `V_T`, `Delta_T`, `tau_w`, `a`, `b`, `v_reset`,
    `v_peak`: scalars or one per neuron; `C`, `g_L`, `Delta_T`, `tau_w` `> 0`,
    `v_reset < v_peak` and `V_T < v_peak`.
    """

    C: Float[Array, "*n"]
    g_L: Float[Array, "*n"]
    E_L: Float[Array, "*n"]
    V_T: Float[Array, "*n"]
    Delta_T: Float[Array, "*n"]
    tau_w: Float[Array, "*n"]
    a: Float[Array, "*n"]
    b: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    v_peak: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = (
        "C",
        "g_L",
        "E_L",
        "V_T",
        "Delta_T",
        "tau_w",
        "a",
        "b",
        "v_reset",
        "v_peak",
    )

    def __init__(
        self,
        C: _Param = 281.0,
        g_L: _Param = 30.0,
        E_L: _Param = -70.6,
        V_T: _Param = -50.4,
        Delta_T: _Param = 2.0,
        tau_w: _Param = 144.0,
        a: _Param = 4.0,
        b: _Param = 80.5,
        v_reset: _Param = -70.6,
        v_peak: _Param = -40.4,
    ):
        values = (C, g_L, E_L, V_T, Delta_T, tau_w, a, b, v_reset, v_peak)
        for name, value in zip(self.parameter_names, values):
            setattr(self, name, as_param(name, value))

    def __check_init__(self):
        positive = ("C", "g_L", "Delta_T", "tau_w")
        units = {"C": "pF", "g_L": "nS", "Delta_T": "mV", "tau_w": "ms"}
        if check_params(self, self.parameter_names, positive, units):
            check_below(self, "v_reset", "v_peak")
            check_below(self, "V_T", "v_peak")

    def init_state(self, n_neurons: int, dtype) -> AdExState:
        v = jnp.broadcast_to(self.E_L, (n_neurons,)).astype(dtype)
        return AdExState(v, jnp.zeros((n_neurons,), dtype))

    def vector_field(self, t, y: AdExState, current) -> AdExState:
        del t
        spike_drive = self.g_L * self.Delta_T * jnp.exp((y.v - self.V_T) / self.Delta_T)
        dv = (-self.g_L * (y.v - self.E_L) + spike_drive - y.w + current) / self.C
        dw = (self.a * (y.v - self.E_L) - y.w) / self.tau_w
        return AdExState(dv, dw)

    def threshold(self, y: AdExState):
        return y.v - self.v_peak

    def reset(self, y: AdExState) -> AdExState:
        v = jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype)
        return AdExState(v, y.w + self.b)

    def voltage(self, y: AdExState):
        return y.v

    def constraints(self, y: AdExState):
        out = {
            f"{name} > 0": jnp.all(getattr(self, name) > 0)
            for name in ("C", "g_L", "Delta_T", "tau_w")
        }
        out["v_reset < v_peak"] = jnp.all(self.v_reset < self.v_peak)
        out["V_T < v_peak"] = jnp.all(self.V_T < self.v_peak)
        out["initial v < v_peak"] = jnp.all(y.v < self.v_peak)
        return out
