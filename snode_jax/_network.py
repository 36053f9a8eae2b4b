"""Networks of event-driven layers: a feed-forward stack passing spikes at their exact
times, a non-spiking readout, and time-to-first-spike."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import (
    MAX_BUDGET,
    SIZE_REASON,
    check_bool,
    check_float_dtype,
    check_parameters_fit,
    check_positive_int,
    check_weight_array,
)
from ._cuba import CubaLIFDynamics
from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._integrate import any_condition_fails, raise_on_failure, sorted_events
from ._layer import SpikingODELayer
from ._misc import any_nonfinite, is_concrete, vary_like
from ._solution import RESULTS, Solution, raise_unless_successful, update_result
from ._spike_train import SpikeTrain, check_spike_train


class ReadoutSolution(eqx.Module):
    """The result of [`LeakyReadout.simulate`][].

    **Fields:**

    - `max_voltage`: per output, the largest membrane voltage over `[0, t_end]`.
    - `max_time`: when it is reached (ms).
    - `final_state`: the state at `t_end`.
    - `result`: a [`RESULTS`][] item (`invalid_input_spikes`, `nonfinite_input`,
        `nonfinite_state`, `invalid_parameters`, or `successful`).
    """

    max_voltage: Float[Array, " n_outputs"]
    max_time: Float[Array, " n_outputs"]
    final_state: State
    result: RESULTS


class LeakyReadout(eqx.Module):
    """A non-spiking readout: leaky integrators driven by input spikes, for losses on
    the membrane voltage (such as its maximum over time, as in EventProp's
    Yin-Yang experiments).

    The membranes follow `dynamics` (default `CubaLIFDynamics(tau_mem=20.0,
    tau_syn=5.0)`: exponential synapses into a leaky membrane) and never fire;
    its threshold and reset are not used. An input spike of input `i` adds
    `weight[:, i]` through the model's `jump`.

    **Arguments:**

    - `n_inputs`, `n_outputs`: sizes (positive ints).
    - `dynamics`: an [`AbstractExactFlowDynamics`][] (its exact flow, and its
        interior maximum per segment, give the maximum voltage exactly).
    - `dtype`: floating dtype of `weight` and of the model's parameters (float64
        needs JAX's 64-bit mode).
    - `key`: PRNG key for the weight, drawn from `N(0, 2 / n_inputs)`.
    """

    weight: Float[Array, "n_outputs n_inputs"]
    dynamics: AbstractExactFlowDynamics
    n_inputs: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        dynamics: AbstractExactFlowDynamics | None = None,
        *,
        dtype=None,
        key: PRNGKeyArray,
    ):
        self.n_inputs = check_positive_int(
            "n_inputs", n_inputs, MAX_BUDGET, SIZE_REASON
        )
        self.n_outputs = check_positive_int(
            "n_outputs", n_outputs, MAX_BUDGET, SIZE_REASON
        )
        if dynamics is None:
            dynamics = CubaLIFDynamics(tau_mem=20.0, tau_syn=5.0)
        if not isinstance(dynamics, AbstractExactFlowDynamics):
            raise TypeError(
                "`dynamics` of a readout must be an AbstractExactFlowDynamics "
                f"(ODELIFDynamics, CubaLIFDynamics, IFDynamics), got {type(dynamics).__name__}."
            )
        dynamics.check_n_neurons(self.n_outputs)
        dtype = check_float_dtype(dtype)
        check_parameters_fit(dynamics, dtype)
        # (Arrays of the readout's dtype, as a layer's: see `SpikingODELayer`.)
        self.dynamics = dynamics.astype(dtype)
        std = float(np.sqrt(2.0 / self.n_inputs))
        self.weight = std * jax.random.normal(
            key, (self.n_outputs, self.n_inputs), dtype
        )

    @property
    def n_neurons(self) -> int:
        return self.n_outputs

    def init_state(self) -> State:
        """At rest: `v = v_rest` (a readout has no threshold to start below)."""
        y = self.dynamics.init_state(self.n_outputs, self.weight.dtype)
        v_rest = getattr(self.dynamics, "v_rest", None)
        if v_rest is not None and hasattr(y, "v"):
            v = jnp.broadcast_to(v_rest, (self.n_outputs,)).astype(self.weight.dtype)
            y = eqx.tree_at(lambda y: y.v, y, v)
        return y

    def simulate(
        self,
        inputs: SpikeTrain,
        *,
        t_end: float | Float[Array, ""],
        throw: bool = True,
    ) -> ReadoutSolution:
        """The membranes over `[0, t_end]` driven by the input spikes `inputs`.

        Between input spikes the voltage follows the exact flow; its maximum over
        a segment is at an end or at the segment's one interior maximum, so the
        maximum over time is exact, and differentiable (at an interior maximum the
        voltage's time derivative vanishes, so the maximum's time needs none).
        Input spikes at one instant are applied together before the voltage there
        counts. Costs one step per input spike, and memory proportional to them for
        gradients.

        **Raises:** `ValueError` for a train that is not 1-D, sources out of range
        or times past `t_end` (for concrete values); with `throw=True`, a runtime
        error for what is found under `jit` (see `result`).
        """
        return self._simulate(inputs, t_end, throw)

    def _simulate(self, inputs, t_end, throw, context="") -> ReadoutSolution:
        """[`simulate`][]; a failure's message starts with `context` (which layer
        of a network failed)."""
        throw = check_bool("throw", throw)
        if not isinstance(inputs, SpikeTrain):
            raise TypeError(f"`inputs` must be a SpikeTrain, got {type(inputs)}.")
        # (A weight swapped in with `eqx.tree_at` is not checked by `__init__`.)
        check_weight_array(
            "weight",
            self.weight,
            (self.n_outputs, self.n_inputs),
            "n_outputs, n_inputs",
        )
        self.dynamics.check_n_neurons(self.n_outputs)
        check_spike_train(inputs, self.n_inputs, t_end, dtype=self.weight.dtype)
        # `t_end` as an array: another value reuses the compiled readout.
        t_end = jnp.asarray(t_end, self.weight.dtype)
        return _readout(
            self.dynamics, self.weight, inputs, t_end, self.init_state(), throw, context
        )


@eqx.filter_jit
def _readout(
    dynamics, weight, spikes: SpikeTrain, t_end, y0, throw, context=""
) -> ReadoutSolution:
    dtype = weight.dtype
    dynamics = dynamics.astype(dtype)
    t_end = jnp.asarray(t_end, dtype)
    n = weight.shape[0]
    times, sources, bad_spikes = sorted_events(spikes, t_end, weight.shape[1], dtype)
    next_times = jnp.concatenate([times[1:], jnp.full((1,), jnp.inf, dtype)])
    zero = jnp.zeros((n,), dtype)

    def segment(y, t, t_next, vmax, tmax):
        h = jnp.broadcast_to(t_next - t, (n,))
        t_peak, has_peak = dynamics.peak_in_step(y, zero, h)
        # The peak's value needs no derivative of its time (dv/dt = 0 there); its
        # time takes the closed form's.
        v_peak = dynamics.voltage(
            dynamics.exact_flow(y, zero, lax.stop_gradient(t_peak))
        )
        y_end = dynamics.exact_flow(y, zero, h)
        v_end = dynamics.voltage(y_end)
        better = has_peak & (v_peak > vmax)
        vmax = jnp.where(better, v_peak, vmax)
        tmax = jnp.where(better, t + t_peak, tmax)
        better = (v_end > vmax) & (t_next > t)  # not mid-instant
        vmax = jnp.where(better, v_end, vmax)
        tmax = jnp.where(better, t_next, tmax)
        return y_end, vmax, tmax

    def body(carry, event):
        t, y, vmax, tmax = carry
        s, src, s_next = event
        real = jnp.isfinite(s)
        t_next = jnp.where(real, s, t_end)
        y, vmax, tmax = segment(y, t, t_next, vmax, tmax)
        y = dynamics.jump(y, jnp.where(real, weight[:, src], 0))
        # The voltage after the jumps counts once every jump at this instant is in.
        v = dynamics.voltage(y)
        better = (v > vmax) & (s_next > s)
        vmax = jnp.where(better, v, vmax)
        tmax = jnp.where(better, t_next, tmax)
        return (t_next, y, vmax, tmax), None

    # The start voltage counts unless input spikes at t = 0 move it first (their
    # jumps are in before the voltage there counts, as at any instant).
    v0 = dynamics.voltage(y0)
    v0 = jnp.where(jnp.any(times == 0), -jnp.inf, v0)
    init = (jnp.zeros((), dtype), y0, v0, jnp.zeros((n,), dtype))
    # (Under `jax.shard_map`, the carry varies as the inputs do.)
    init = vary_like(init, dynamics, weight, times, sources, t_end, y0)
    (t, y, vmax, tmax), _ = lax.scan(body, init, (times, sources, next_times))
    y, vmax, tmax = segment(y, t, t_end, vmax, tmax)
    nonfinite = any_nonfinite((dynamics.parameters(), weight, y0))
    bad_state = any_nonfinite((vmax, y))
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_input, RESULTS.successful)
    conditions = _readout_conditions(dynamics, y0)
    conditions["0 < t_end < inf"] = jnp.isfinite(t_end) & (t_end > 0)
    invalid = any_condition_fails(conditions)
    result = update_result(result, invalid, RESULTS.invalid_parameters)
    result = update_result(result, bad_spikes, RESULTS.invalid_input_spikes)
    result = update_result(result, bad_state, RESULTS.nonfinite_state)
    sol = ReadoutSolution(max_voltage=vmax, max_time=tmax, final_state=y, result=result)
    if throw:
        sol = raise_on_failure(sol, dynamics, conditions, nonfinite, context)
    return sol


def _readout_conditions(dynamics, y0) -> dict:
    """The model's `constraints` on the readout's start state `y0` (its time
    constants and capacitance, say), less those of its threshold and reset: a
    readout never fires, and its voltage may start anywhere."""
    return {
        name: ok
        for name, ok in dynamics.constraints(y0).items()
        if "threshold" not in name and "reset" not in name
    }


class NetworkSolution(eqx.Module):
    """The result of [`SpikingODENetwork.simulate`][]: `layers[i]` is layer `i`'s
    [`Solution`][] (or a [`ReadoutSolution`][] for a readout); `result` is the
    first failure of any layer. A layer after a failed one ran on its incomplete
    output: its own `result` is `input_from_failed_layer` where its run did not
    fail on its own."""

    layers: tuple[Solution | ReadoutSolution, ...]

    @property
    def result(self) -> RESULTS:
        """The first layer's outcome that is not `successful` (else `successful`);
        of a batched solution, per batch element."""
        results = [layer.result for layer in self.layers]
        first = _first_failure
        # (`RESULTS.where` takes one predicate: batch axes are mapped over.)
        for _ in range(jnp.ndim(results[0]._value)):
            first = jax.vmap(first)
        return first(*results)

    @property
    def output(self) -> Solution | ReadoutSolution:
        """The last layer's solution."""
        return self.layers[-1]


def _first_failure(*results: RESULTS) -> RESULTS:
    result = results[0]
    for other in results[1:]:
        result = RESULTS.where(result != RESULTS.successful, result, other)
    return result


class SpikingODENetwork(eqx.Module):
    """A feed-forward stack of event-driven layers: each layer's output spikes are
    the next layer's input spikes at their exact times.

    **Arguments:**

    - `layers`: [`SpikingODELayer`][]s (each may be recurrent), optionally ending
        in a [`LeakyReadout`][]; layer `i + 1` has `n_inputs` equal to layer `i`'s
        `n_neurons`.

    Trainable as a whole: `eqx.filter_grad` of a loss of the solution gives exact
    gradients for every layer's weights and model parameters, through every spike
    time of every layer.
    """

    layers: tuple[SpikingODELayer | LeakyReadout, ...]

    def __init__(self, layers: Sequence[SpikingODELayer | LeakyReadout]):
        layers = tuple(layers)
        if not layers:
            raise ValueError("`layers` must hold at least one layer, got none.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (SpikingODELayer, LeakyReadout)):
                raise TypeError(
                    f"`layers[{i}]` must be a SpikingODELayer or a LeakyReadout, got "
                    f"{type(layer).__name__}."
                )
            if isinstance(layer, LeakyReadout) and i != len(layers) - 1:
                raise ValueError(
                    f"A LeakyReadout does not spike: it can only be the last layer, "
                    f"got one at position {i} of {len(layers)}."
                )
            if i and layer.n_inputs != layers[i - 1].n_neurons:
                raise ValueError(
                    f"`layers[{i}]` takes {layer.n_inputs} inputs but `layers[{i - 1}]` "
                    f"has {layers[i - 1].n_neurons} neurons."
                )
            # A float32 layer's spike at its own `t_end` (rounded up) would be past
            # a float64 layer's, and refused there as an invalid input.
            dtype, first = layer.weight.dtype, layers[0].weight.dtype
            if dtype != first:
                raise ValueError(
                    f"The layers of a network share one dtype (spike times pass "
                    f"between them): `layers[0]` is {first.name}, `layers[{i}]` "
                    f"{dtype.name}."
                )
        self.layers = layers

    def simulate(
        self,
        inputs: SpikeTrain,
        *,
        t_end: float | Float[Array, ""],
        max_spikes: int | Sequence[int] = 64,
        max_events: int | None = None,
        after_max_spikes: str | Sequence[str] = "fail",
        throw: bool = True,
    ) -> NetworkSolution:
        """Run the layers in turn over `[0, t_end]` on the input spikes `inputs`.

        **Arguments:** as [`SpikingODELayer.simulate`][]; `max_spikes` and
        `after_max_spikes` may give one value per spiking layer (for example
        `max_spikes=(8, 1), after_max_spikes=("fail", "silence")` for a
        time-to-first-spike output layer whose neurons fire once).

        **Returns:** a [`NetworkSolution`][].

        **Raises:** as [`SpikingODELayer.simulate`][]; with `throw=True` a run
        that fails raises with its message after the failed layer's place
        (`layers[i]`) and its `max_spikes`.
        """
        throw = check_bool("throw", throw)
        if not isinstance(inputs, SpikeTrain):
            raise TypeError(
                "`inputs` of a SpikingODENetwork must be a SpikeTrain (its layers "
                f"pass spikes), got {type(inputs).__name__}."
            )
        spiking = [layer for layer in self.layers if isinstance(layer, SpikingODELayer)]
        is_int = isinstance(max_spikes, (int, np.integer)) and not isinstance(
            max_spikes, bool
        )
        if isinstance(max_spikes, (np.ndarray, jax.Array)) and max_spikes.ndim == 0:
            # (A concrete 0-d integer array, as a layer takes it.)
            is_int = jnp.issubdtype(max_spikes.dtype, jnp.integer) and is_concrete(
                max_spikes
            )
        if not is_int and (
            isinstance(max_spikes, (bool, str)) or np.ndim(max_spikes) != 1
        ):
            raise TypeError(
                "`max_spikes` must be an int or one int per spiking layer "
                f"({len(spiking)}), got {max_spikes!r}."
            )
        budgets = _per_layer(
            "max_spikes",
            int(max_spikes) if is_int else max_spikes,  # pyright: ignore[reportArgumentType]
            is_int,
            "an int",
            len(spiking),
        )
        limits = _per_layer(
            "after_max_spikes",
            after_max_spikes,
            isinstance(after_max_spikes, str),
            "a str",
            len(spiking),
        )
        solutions = []
        train = inputs
        upstream_failed = False
        for i, layer in enumerate(self.layers):
            # A failure's message names the layer (and its budget of spikes).
            where = f"In `layers[{i}]` of the network"
            if isinstance(layer, LeakyReadout):
                context = f"{where} (the readout): "
                sol = layer._simulate(train, t_end, throw, context)
                solutions.append(_after_upstream(sol, upstream_failed))
                break
            budget = budgets.pop(0)
            context = f"{where} (max_spikes={budget}): "
            sol = layer._simulate(
                train,
                None,
                budget,
                t_end=t_end,
                max_events=max_events,
                after_max_spikes=limits.pop(0),
                throw=throw,
                context=context,
            )
            sol = _after_upstream(sol, upstream_failed)
            solutions.append(sol)
            upstream_failed = sol.result != RESULTS.successful
            train = sol.spike_train(throw=False)  # (its failure: in `sol`)
        return NetworkSolution(tuple(solutions))


def _after_upstream(sol, upstream_failed):
    """`sol` with `result` `input_from_failed_layer` where an earlier layer failed
    and its own run did not."""
    result = update_result(sol.result, upstream_failed, RESULTS.input_from_failed_layer)
    return eqx.tree_at(lambda s: s.result, sol, result)


def _per_layer(name: str, value, is_single: bool, single: str, n: int) -> list:
    """`value` repeated for each of the `n` spiking layers, or its `n` entries."""
    if is_single:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(
            f"`{name}` must be {single} or one per spiking layer ({n}), got {value!r}."
        )
    return values


def first_spike_times(
    sol: Solution, *, throw: bool = True
) -> Float[Array, "*batch n_neurons"]:
    """Each neuron's first spike time (ms), `+inf` for a neuron that did not fire:
    the output of a time-to-first-spike code. Differentiable (exactly, where the
    neuron fired).

    Of a run that did not succeed (`sol.result`, from `simulate(...,
    throw=False)`) a neuron's `+inf` may only mean that the run stopped before it
    fired: with `throw` (the default) that raises at run time, with the run's
    message, as [`Solution.spike_train`][] does; `throw=False` returns the times
    recorded whatever the result."""
    throw = check_bool("throw", throw)
    if not isinstance(sol, Solution):
        raise TypeError(
            "`first_spike_times` takes the Solution of a spiking layer (one of a "
            "NetworkSolution's `layers`, not a LeakyReadout's ReadoutSolution), got "
            f"{type(sol).__name__}."
        )
    if sol.spike_times.shape[-1] == 0:
        raise ValueError(
            "`first_spike_times` needs recorded spike times: this solution has none "
            "(run with max_spikes >= 1)."
        )
    if throw:
        sol = raise_unless_successful(sol, "first_spike_times() of a failed run: ")
    return sol.spike_times[..., 0]
