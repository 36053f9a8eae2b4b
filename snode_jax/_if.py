"""The (non-leaky) integrate-and-fire neuron: a perfect integrator with a threshold."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractExactFlowDynamics
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]


class IFState(eqx.Module):
    """Membrane voltage `v`, one per neuron."""

    v: NeuronFloat


class IFDynamics(AbstractExactFlowDynamics):
    """Integrate-and-fire membrane without leak, `dv/dt = I / C_mem` (time in ms).

    A spike is an upward crossing of `v_threshold`; `v` is set to `v_reset` at that
    instant. Under a constant current the flow is a straight line, `v(t) = v0 + t
    I / C_mem`, so a neuron starting at `v0` first fires at `(v_threshold - v0)
    C_mem / I` (for `I > 0`) and then every `(v_threshold - v_reset) C_mem / I`
    ms. The flow is monotone within a step (no interior maximum), and crossings are
    located on the exact flow. An input spike (a [`SpikeTrain`][] input) adds its
    weight to `v` (a delta synapse), as for the LIF.

    The neuron has no resting potential: it starts at `v_reset`.

    **Arguments:** (each a scalar or one value per neuron; all trainable)

    - `v_threshold`: spike threshold.
    - `v_reset`: post-spike (and initial) potential, `< v_threshold`.
    - `C_mem`: membrane capacitance, `> 0`.

    **Raises:**

    `ValueError` for a non-positive `C_mem`, `v_reset >= v_threshold`, or a
    NaN/inf parameter.
    """

    v_threshold: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    C_mem: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = ("v_threshold", "v_reset", "C_mem")

    def __init__(
        self,
        v_threshold: _Param = 1.0,
        v_reset: _Param = 0.0,
        C_mem: _Param = 1.0,
    ):
        self.v_threshold = as_param("v_threshold", v_threshold)
        self.v_reset = as_param("v_reset", v_reset)
        self.C_mem = as_param("C_mem", C_mem)

    def __check_init__(self):
        if check_params(self, self.parameter_names, ("C_mem",)):
            check_below(self, "v_reset", "v_threshold")

    def init_state(self, n_neurons: int, dtype) -> IFState:
        return IFState(jnp.broadcast_to(self.v_reset, (n_neurons,)).astype(dtype))

    def vector_field(self, t, y: IFState, current) -> IFState:
        del t
        return IFState(jnp.broadcast_to(current / self.C_mem, y.v.shape))

    def threshold(self, y: IFState):
        return y.v - self.v_threshold

    def reset(self, y: IFState) -> IFState:
        return IFState(jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype))

    def exact_flow(self, y: IFState, current, h) -> IFState:
        return IFState(y.v + h * (current / self.C_mem))

    def jump(self, y: IFState, amount) -> IFState:
        """An input spike adds `amount` to the membrane (a delta synapse)."""
        return IFState(y.v + amount)

    def voltage(self, y: IFState):
        return y.v

    def peak_in_step(self, y: IFState, current, h):
        # A straight line: no interior maximum.
        return h, jnp.zeros(jnp.shape(h), bool)

    def constraints(self, y: IFState):
        return {
            "C_mem > 0": jnp.all(self.C_mem > 0),
            "v_reset < v_threshold": jnp.all(self.v_reset < self.v_threshold),
            "initial v < v_threshold": jnp.all(y.v < self.v_threshold),
        }
