"""Surrogate derivatives for spike counts.

Counts are integers and stay exact in the forward pass. What a surrogate
differentiates: the count of neuron `i` in interval `k` is set by two threshold
decisions, the last spike that happened (the voltage the neuron would have reached at
the interval end had that crossing not reset it, `>= v_threshold`) and the next one
that did not (the actual end voltage, `< v_threshold`). Each decision is a Heaviside
step of its margin `x = v - v_threshold`; the surrogate replaces the step's
derivative by a smooth bump `derivative(x)`, so the count's gradient is
`sum over both decisions of derivative(x) * grad(x)`, and the voltages themselves
are differentiated exactly through every earlier spike and reset. (On the adaptive
Runge-Kutta path only the second decision counts: the first would need a run on
from the last crossing without its reset.)
"""

import abc
import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class AbstractSurrogate(eqx.Module):
    """A surrogate derivative for the Heaviside step of a threshold decision."""

    @abc.abstractmethod
    def derivative(self, x):
        """The surrogate of `dH/dx` at margin `x` (voltage minus threshold)."""


def _check_slope(name, slope):
    if isinstance(slope, (bool, np.bool_)) or not isinstance(
        slope, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"`slope` of {name} must be a positive number, got {slope!r}.")
    if not math.isfinite(slope) or slope <= 0:
        raise ValueError(f"`slope` of {name} must be a positive number, got {slope!r}.")
    return float(slope)


class ArctanSurrogate(AbstractSurrogate):
    """`derivative(x) = (slope / 2) / (1 + (pi / 2 * slope * x)^2)` (the default)."""

    slope: float = eqx.field(
        static=True, default=2.0, converter=partial(_check_slope, "ArctanSurrogate")
    )

    def derivative(self, x):
        a = self.slope
        return (a / 2) / (1 + (jnp.pi / 2 * a * x) ** 2)


class SigmoidSurrogate(AbstractSurrogate):
    """`derivative(x) = slope * s * (1 - s)`, `s = sigmoid(slope * x)`."""

    slope: float = eqx.field(
        static=True, default=25.0, converter=partial(_check_slope, "SigmoidSurrogate")
    )

    def derivative(self, x):
        s = jax.nn.sigmoid(self.slope * x)
        return self.slope * s * (1 - s)


class FastSigmoidSurrogate(AbstractSurrogate):
    """SuperSpike: `derivative(x) = 1 / (1 + slope * |x|)^2`."""

    slope: float = eqx.field(
        static=True,
        default=25.0,
        converter=partial(_check_slope, "FastSigmoidSurrogate"),
    )

    def derivative(self, x):
        return 1 / (1 + self.slope * jnp.abs(x)) ** 2


@eqx.filter_custom_jvp
def surrogate_zero(x, surrogate: AbstractSurrogate):
    """Zero in value; its derivative in `x` is `surrogate.derivative(x)`."""
    del surrogate
    return jnp.zeros_like(x)


@surrogate_zero.def_jvp
def _surrogate_zero_jvp(primals, tangents):
    x, surrogate = primals
    tx, _ = tangents
    out = jnp.zeros_like(x)
    if tx is None:
        return out, None
    return out, surrogate.derivative(x) * tx
