"""Current-based LIF: a synaptic current that relaxes to the input, driving the
membrane. Linear, with a closed-form flow, but no closed-form crossing time."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractExactFlowDynamics
from ._misc import describe
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]


class CubaLIFState(eqx.Module):
    """Membrane voltage `v` and synaptic current `i_syn`, one per neuron."""

    v: NeuronFloat
    i_syn: NeuronFloat


class CubaLIFDynamics(AbstractExactFlowDynamics):
    """Current-based LIF:

    ```
    tau_syn di_syn/dt = -i_syn + I
    dv/dt = -(v - v_rest) / tau_mem + i_syn / C_mem
    ```

    with the layer's input current `I = weight @ x` held constant over each interval.
    A spike is an upward crossing of `v_threshold`; `v <- v_reset` (the synaptic
    current is unchanged). The flow is known in closed form, but `v` may rise above
    threshold and fall back within a step, and the crossing time has no closed form:
    the solver steps on the exact flow, checks the one interior maximum `v` can have
    in a step, and locates crossings with [`bisect_crossing`][].

    **Arguments:** `tau_mem`, `tau_syn` (ms, `> 0`, different from each other),
    `v_rest`, `v_threshold`, `v_reset` (`< v_threshold`), `C_mem` (`> 0`): scalars or
    one per neuron.
    """

    tau_mem: Float[Array, "*n"]
    tau_syn: Float[Array, "*n"]
    v_rest: Float[Array, "*n"]
    v_threshold: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    C_mem: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = (
        "tau_mem",
        "tau_syn",
        "v_rest",
        "v_threshold",
        "v_reset",
        "C_mem",
    )

    def __init__(
        self,
        tau_mem: _Param = 20.0,
        tau_syn: _Param = 5.0,
        v_rest: _Param = 0.0,
        v_threshold: _Param = 1.0,
        v_reset: _Param = 0.0,
        C_mem: _Param = 1.0,
    ):
        values = (tau_mem, tau_syn, v_rest, v_threshold, v_reset, C_mem)
        for name, value in zip(self.parameter_names, values):
            setattr(self, name, as_param(name, value))

    def __check_init__(self):
        positive = ("tau_mem", "tau_syn", "C_mem")
        units = {"tau_mem": "ms", "tau_syn": "ms"}
        if check_params(self, self.parameter_names, positive, units):
            check_below(self, "v_reset", "v_threshold")
            if np.any(np.asarray(self.tau_mem) == np.asarray(self.tau_syn)):
                raise ValueError(
                    "`tau_syn` must differ from `tau_mem`, got "
                    f"tau_syn={describe(self.tau_syn)}, tau_mem={describe(self.tau_mem)}."
                )

    def init_state(self, n_neurons: int, dtype) -> CubaLIFState:
        # As for the LIF: a resting potential at or above threshold starts at reset.
        rest = jnp.where(self.v_rest < self.v_threshold, self.v_rest, self.v_reset)
        v = jnp.broadcast_to(rest, (n_neurons,)).astype(dtype)
        return CubaLIFState(v, jnp.zeros((n_neurons,), dtype))

    def vector_field(self, t, y: CubaLIFState, current) -> CubaLIFState:
        del t
        dv = -(y.v - self.v_rest) / self.tau_mem + y.i_syn / self.C_mem
        di = (current - y.i_syn) / self.tau_syn
        return CubaLIFState(dv, di)

    def threshold(self, y: CubaLIFState):
        return y.v - self.v_threshold

    def reset(self, y: CubaLIFState) -> CubaLIFState:
        v = jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype)
        return CubaLIFState(v, y.i_syn)

    def _modes(self, y: CubaLIFState, current):
        # v(t) = v_inf + A exp(-t/tau_syn) + B exp(-t/tau_mem).
        tm, ts = self.tau_mem, self.tau_syn
        v_inf = self.v_rest + current * (tm / self.C_mem)
        a = (y.i_syn - current) * (tm * ts) / (self.C_mem * (ts - tm))
        b = y.v - v_inf - a
        return v_inf, a, b

    def exact_flow(self, y: CubaLIFState, current, h) -> CubaLIFState:
        v_inf, a, b = self._modes(y, current)
        e_syn = jnp.exp(-h / self.tau_syn)
        v = v_inf + a * e_syn + b * jnp.exp(-h / self.tau_mem)
        i_syn = current + (y.i_syn - current) * e_syn
        return CubaLIFState(v, i_syn)

    def peak_in_step(self, y: CubaLIFState, current, h):
        """The time of the one interior maximum of `v` in `(0, h)`, and whether there
        is one. `v' = 0` at `exp(-t (1/tau_syn - 1/tau_mem)) = -B tau_syn / (A
        tau_mem)`; it is a maximum where `A (1/tau_syn - 1/tau_mem) < 0`."""
        _, a, b = self._modes(y, current)
        rate = 1 / self.tau_syn - 1 / self.tau_mem
        safe_a = jnp.where(a != 0, a, 1)
        q = -b * self.tau_syn / (safe_a * self.tau_mem)
        ok = (a != 0) & (q > 0) & (a * rate < 0)
        t_peak = -jnp.log(jnp.where(ok, q, 1)) / rate
        ok = ok & (t_peak > 0) & (t_peak < h)
        return jnp.where(ok, t_peak, h), ok

    def voltage(self, y: CubaLIFState):
        return y.v

    def constraints(self, y: CubaLIFState):
        return {
            "tau_mem > 0": jnp.all(self.tau_mem > 0),
            "tau_syn > 0": jnp.all(self.tau_syn > 0),
            "tau_syn != tau_mem": jnp.all(self.tau_mem != self.tau_syn),
            "C_mem > 0": jnp.all(self.C_mem > 0),
            "v_reset < v_threshold": jnp.all(self.v_reset < self.v_threshold),
            "initial v < v_threshold": jnp.all(y.v < self.v_threshold),
        }
