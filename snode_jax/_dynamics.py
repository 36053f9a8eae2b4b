"""Neuron dynamics: the abstract interface and the leaky integrate-and-fire model."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from ._custom_types import NeuronBool, NeuronFloat, RealScalarLike, State
from ._params import as_param, check_below, check_params


class AbstractDynamics(eqx.Module):
    """The interface every neuron model implements.

    A model is a vector field for the membrane state between spikes, a threshold
    function whose upward zero crossing is a spike, and a reset map applied at that
    instant. Parameters are array fields (trainable), scalar or one per neuron.
    The solver needs nothing else; models whose flow is known in closed form may
    also implement [`AbstractDynamics.exact_flow`][].

    The current `current` seen by every method is the layer's input current,
    `weight @ x_k`, held constant over the interval.
    """

    has_exact_flow: ClassVar[bool] = False
    parameter_names: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def init_state(self, n_neurons: int, dtype) -> State:
        """The resting state of `n_neurons` neurons."""

    @abc.abstractmethod
    def vector_field(
        self, t: Float[Array, ""], y: State, current: NeuronFloat
    ) -> State:
        """Time derivative of the state (per ms)."""

    @abc.abstractmethod
    def threshold(self, y: State) -> NeuronFloat:
        """A spike happens when this crosses zero from below."""

    @abc.abstractmethod
    def reset(self, y: State) -> State:
        """The state just after a spike, given the state at the crossing."""

    def exact_flow(self, y: State, current: NeuronFloat, h: NeuronFloat) -> State:
        """The state after time `h` (ms) with constant `current` and no spike.

        Only models with `has_exact_flow = True` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact flow.")

    def astype(self, dtype) -> "AbstractDynamics":
        """A copy with every parameter cast to `dtype`."""
        return jax.tree.map(lambda p: p.astype(dtype), self)

    def check_n_neurons(self, n_neurons: int) -> None:
        """Raise `ValueError` unless every parameter named in `parameter_names` is a
        scalar or has one entry per neuron."""
        for name in self.parameter_names:
            shape = jnp.shape(getattr(self, name))
            if shape not in ((), (n_neurons,)):
                raise ValueError(
                    f"`{name}` must be a scalar or have shape ({n_neurons},) (one per "
                    f"neuron), got shape {shape}."
                )

    @abc.abstractmethod
    def invalid(self, y: State) -> Bool[Array, ""]:
        """Traced check: True when the parameters or the state `y` are invalid."""

    def parameters(self) -> PyTree[Array]:
        """The trainable parameters (used for the finiteness check)."""
        return eqx.filter(self, eqx.is_array)


class AbstractClosedFormDynamics(AbstractDynamics):
    """Dynamics whose spikes within an interval of constant input have closed form.

    The solver walks through the events of one interval with these methods, so
    that deciding whether another spike happens costs no transcendental function:

    - `interval_constants(interval)`: quantities fixed for the whole simulation;
    - `interval_start(y, current, constants)`: the event state at the interval start;
    - `crossing_pending(ev)`: whether the next crossing happens before the end;
    - `crossing_time(ev)`: when (ms from the interval start) it happens;
    - `fire(ev, mask)`: move past that crossing and reset, where `mask` holds;
    - `interval_end(ev)`: the state at the interval end.

    Gradients use `replay_interval`: given how many spikes the interval holds (fixed
    by the forward pass), it writes the interval out in closed form, differentiably.
    The class is for one-dimensional models with a fixed reset, whose spikes under
    constant input are periodic after the first one.
    """

    has_exact_flow: ClassVar[bool] = True

    @abc.abstractmethod
    def interval_constants(self, interval: Float[Array, ""]) -> PyTree[Array]: ...

    @abc.abstractmethod
    def interval_start(
        self, y: State, current: NeuronFloat, constants: PyTree[Array]
    ) -> PyTree[Array]: ...

    @abc.abstractmethod
    def crossing_pending(self, ev: PyTree[Array]) -> NeuronBool: ...

    @abc.abstractmethod
    def crossing_time(self, ev: PyTree[Array]) -> NeuronFloat: ...

    @abc.abstractmethod
    def fire(self, ev: PyTree[Array], mask: NeuronBool) -> PyTree[Array]: ...

    @abc.abstractmethod
    def interval_end(self, ev: PyTree[Array]) -> State: ...

    @abc.abstractmethod
    def replay_interval(
        self, y: State, current: NeuronFloat, interval, count
    ) -> "IntervalReplay":
        """The interval written out in closed form with `count` spikes per neuron."""


class IntervalReplay(eqx.Module):
    """One interval in closed form, with its spike count held fixed.

    **Fields:** (one entry per neuron; entries that do not apply are finite dummies)

    - `y_end`: the state at the interval end.
    - `first`: time (ms from the interval start) of the first spike (`count >= 1`).
    - `period`: time between consecutive spikes (`count >= 2`); spike `m` (from 0)
        is at `first + m * period`.
    - `last_margin`: threshold function at the interval end had the last spike not
        reset the neuron (`>= 0`; `count >= 1`).
    - `next_margin`: threshold function at the interval end (`< 0`).
    """

    y_end: State
    first: NeuronFloat
    period: NeuronFloat
    last_margin: NeuronFloat
    next_margin: NeuronFloat


class LIFState(eqx.Module):
    """State of a population of LIF neurons: membrane voltage `v`, one per neuron."""

    v: NeuronFloat


def lif_vector_field(t, y, args):
    """The LIF membrane derivative, in diffrax's `(t, y, args)` term signature.

    `dv/dt = -(v - v_rest) / tau_mem + I / C_mem`, time in ms.

    **Arguments:**

    - `t`: time (ms); unused, the input is constant within an interval.
    - `y`: membrane voltage `v`, any shape.
    - `args`: a tuple `(dynamics, current)` of an [`ODELIFDynamics`][] and the input
        current `I`, broadcastable against `y`.

    **Returns:**

    `dv/dt`, with the shape of `y`.
    """
    del t
    dynamics, current = args
    return -(y - dynamics.v_rest) / dynamics.tau_mem + current / dynamics.C_mem


class _LIFEvents(eqx.Module):
    # Distance to the asymptote `v_inf = v_rest + I tau / C`, projected to the end of
    # the interval: `s = (v_inf - v) * exp(-(T - t) / tau)`. A crossing is pending iff
    # `s <= v_inf - v_threshold`; each reset multiplies `s` by
    # `(v_inf - v_reset) / (v_inf - v_threshold)`. No logarithm or exponential is
    # needed to count spikes or to find the end state.
    v_inf: Array
    u_threshold: Array
    gain: Array
    s: Array
    tau: Array
    interval: Array


class ODELIFDynamics(AbstractClosedFormDynamics):
    """Leaky integrate-and-fire membrane, `dv/dt = -(v - v_rest)/tau_mem + I/C_mem`.

    A spike is an upward crossing of `v_threshold`; `v` is set to `v_reset` at that
    instant. Between spikes the flow is known in closed form, so the solver steps
    from event to event and locates every crossing to machine precision.

    **Arguments:** (each a scalar or one value per neuron; all trainable)

    - `tau_mem`: membrane time constant (ms), `> 0`.
    - `v_rest`: resting potential.
    - `v_threshold`: spike threshold.
    - `v_reset`: post-spike reset potential, `< v_threshold`.
    - `C_mem`: membrane capacitance, `> 0`.

    **Raises:**

    `ValueError` for a non-positive `tau_mem` or `C_mem`, `v_reset >= v_threshold`, or
    a NaN/inf parameter.
    """

    tau_mem: Float[Array, "*n"]
    v_rest: Float[Array, "*n"]
    v_threshold: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    C_mem: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = (
        "tau_mem",
        "v_rest",
        "v_threshold",
        "v_reset",
        "C_mem",
    )

    def __init__(
        self,
        tau_mem: RealScalarLike | Float[ArrayLike, " n"] = 20.0,
        v_rest: RealScalarLike | Float[ArrayLike, " n"] = 0.0,
        v_threshold: RealScalarLike | Float[ArrayLike, " n"] = 1.0,
        v_reset: RealScalarLike | Float[ArrayLike, " n"] = 0.0,
        C_mem: RealScalarLike | Float[ArrayLike, " n"] = 1.0,
    ):
        self.tau_mem = as_param("tau_mem", tau_mem)
        self.v_rest = as_param("v_rest", v_rest)
        self.v_threshold = as_param("v_threshold", v_threshold)
        self.v_reset = as_param("v_reset", v_reset)
        self.C_mem = as_param("C_mem", C_mem)

    def __check_init__(self):
        positive = ("tau_mem", "C_mem")
        if check_params(self, self.parameter_names, positive, {"tau_mem": "ms"}):
            check_below(self, "v_reset", "v_threshold")

    # -- interface -----------------------------------------------------------------

    def init_state(self, n_neurons: int, dtype) -> LIFState:
        return LIFState(jnp.broadcast_to(self.v_rest, (n_neurons,)).astype(dtype))

    def vector_field(self, t, y: LIFState, current) -> LIFState:
        return LIFState(lif_vector_field(t, y.v, (self, current)))

    def threshold(self, y: LIFState):
        return y.v - self.v_threshold

    def reset(self, y: LIFState) -> LIFState:
        return LIFState(jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype))

    def exact_flow(self, y: LIFState, current, h) -> LIFState:
        v_inf = self.v_rest + current * (self.tau_mem / self.C_mem)
        return LIFState(v_inf + (y.v - v_inf) * jnp.exp(-h / self.tau_mem))

    def invalid(self, y: LIFState):
        bad = jnp.any(self.tau_mem <= 0) | jnp.any(self.C_mem <= 0)
        bad = bad | jnp.any(self.v_reset >= self.v_threshold)
        return bad | jnp.any(y.v >= self.v_threshold)

    # -- closed-form events --------------------------------------------------------

    def interval_constants(self, interval):
        return jnp.exp(-interval / self.tau_mem), interval

    def interval_start(self, y: LIFState, current, constants) -> _LIFEvents:
        v_inf = self.v_rest + current * (self.tau_mem / self.C_mem)
        u_threshold = v_inf - self.v_threshold
        # Only used where a crossing happens, i.e. where u_threshold > 0.
        safe = jnp.where(u_threshold > 0, u_threshold, 1)
        gain = (v_inf - self.v_reset) / safe
        decay, interval = constants
        s = (v_inf - y.v) * decay
        tau = jnp.broadcast_to(self.tau_mem, s.shape)
        return _LIFEvents(v_inf, u_threshold, gain, s, tau, interval)

    def crossing_pending(self, ev: _LIFEvents):
        return (ev.u_threshold > 0) & (ev.s <= ev.u_threshold)

    def crossing_time(self, ev: _LIFEvents):
        # s / u_threshold = exp(-(T - t*) / tau), so t* = T + tau log(s / u_threshold).
        ratio = ev.s / jnp.where(ev.u_threshold > 0, ev.u_threshold, 1)
        return ev.interval + ev.tau * jnp.log(ratio)

    def fire(self, ev: _LIFEvents, mask) -> _LIFEvents:
        return eqx.tree_at(lambda e: e.s, ev, jnp.where(mask, ev.s * ev.gain, ev.s))

    def interval_end(self, ev: _LIFEvents) -> LIFState:
        return LIFState(ev.v_inf - ev.s)

    def replay_interval(self, y: LIFState, current, interval, count) -> IntervalReplay:
        # The closed form, differentiable in every parameter, the current, the
        # interval and the start voltage: each crossing time solves
        # v(t) = v_threshold exactly, so its derivative is the implicit-function
        # one, -(dg/dtheta) / (dg/dt), and the reset makes the next segment start
        # from v_reset at that (differentiable) time. Dummy values keep `log` away
        # from invalid arguments where an entry does not apply.
        tau = self.tau_mem
        v_inf = self.v_rest + current * (tau / self.C_mem)
        u0 = v_inf - y.v
        spiked = count >= 1
        u_th = jnp.where(spiked, v_inf - self.v_threshold, 1.0)
        u_start = jnp.where(spiked, u0, 2.0)
        u_reset = jnp.where(spiked, v_inf - self.v_reset, 2.0)
        first = tau * jnp.log(u_start / u_th)
        period = tau * jnp.log(u_reset / u_th)
        n_before = jnp.maximum(count - 1, 0).astype(first.dtype)
        t_last = first + n_before * period
        v_end_spiked = v_inf - u_reset * jnp.exp(-(interval - t_last) / tau)
        v_end_quiet = v_inf - u0 * jnp.exp(-interval / tau)
        v_end = jnp.where(spiked, v_end_spiked, v_end_quiet)
        # Segment that ends in the last spike: from the start (one spike) or from
        # the previous reset.
        seg_start = jnp.where(count >= 2, t_last - period, 0.0)
        u_seg = jnp.where(count >= 2, u_reset, u0)
        v_free = v_inf - u_seg * jnp.exp(-(interval - seg_start) / tau)
        return IntervalReplay(
            y_end=LIFState(v_end),
            first=first,
            period=period,
            last_margin=v_free - self.v_threshold,
            next_margin=v_end - self.v_threshold,
        )
