"""Outcome enumeration and the solution object returned by `simulate`."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._checks import check_bool
from ._custom_types import Counts, SpikeTimes, State
from ._misc import max_across_devices, tie_to
from ._spike_train import SpikeTrain


class RESULTS(eqx.Enumeration):
    """Outcome of a simulation, carried on [`Solution.result`][]."""

    # (A message for the success too: the item prints as `RESULTS<message>`.)
    successful = "The run succeeded."
    max_steps_reached = (
        "The step budget ran out: some neuron needed more than `max_steps` solver "
        "steps within one interval (on the closed-form path, within one piece of "
        "a long interval), so the interval was not integrated to its end. "
        "Increase `max_steps`."
    )
    spike_buffer_full = (
        "More spikes occurred than fit in the spike buffer: `spike_times` holds only "
        "the first `max_spikes` spikes of some neuron (on dense inputs the counts "
        "are still exact; an event-driven run, which delivers every spike, stops "
        "there). Increase `max_spikes`."
    )
    crossing_search_failed = (
        "The threshold-crossing search did not reach its tolerance within "
        "`max_root_iters` iterations, or (Runge-Kutta path) it found the state "
        "turning NaN or inf below threshold, not blowing up through it: a "
        "vector field that is not finite there."
    )
    nonfinite_input = (
        "The inputs, the parameters or the initial state contain NaN or inf (a "
        "finite value beyond the layer's dtype becomes inf when cast to it)."
    )
    nonfinite_current = (
        "The input current `weight @ x` overflowed to inf or NaN although the inputs "
        "and the weights are finite: scale them down, or use float64."
    )
    nonfinite_state = (
        "The neuron state or a spike time became NaN or inf during the run although "
        "the inputs and parameters are finite (for example the asymptote "
        "`v_rest + I tau_mem / C_mem` overflowed): scale the input or the "
        "parameters, or use float64."
    )
    count_precision_lost = (
        "A neuron fired so fast that the rounding of the closed-form walk, which "
        "grows with the number of spikes in an interval, may have changed its spike "
        "count (in float32 at hundreds to thousands of spikes per interval with the "
        "asymptote far above threshold; at 1 ms intervals in float16 from about "
        "six, in bfloat16 from two); on the adaptive path (every model but the "
        "LIF on `Exact()`) the rounding of its spike times, which adds up over "
        "an interval's spikes, may exceed a quarter of its period (float32 from "
        "700 to 1000 spikes in an interval, float16 from about 10, bfloat16 from "
        "about 4); or a count is too large to hold exactly in the "
        "dtype the counts are stored in (from 256 in bfloat16, 2048 in float16): "
        "use a wider dtype or shorter intervals."
    )
    step_size_underflow = (
        "A step of `dt_min` no longer advanced a neuron's time (`dt_min` is below "
        "the floating-point resolution of the time within the interval), or, forced "
        "at `dt_min` with its error above tolerance, left the state as it was (its "
        "change is below the resolution of the state: `rtol`/`atol` finer than the "
        "dtype can resolve). Raise `dt_min`, loosen `rtol`/`atol`, shorten the "
        "intervals, or use a wider dtype."
    )
    invalid_parameters = (
        "Invalid parameters or initial state, found at run time: a condition of the "
        "model (its `constraints`) fails, a neuron starts at or above its "
        "threshold, `interval` (dense inputs) or `t_end` "
        "(spike trains) is not finite and > 0, or the intervals end past the "
        "largest finite time of the dtype. With `throw=True` the error names "
        "the condition."
    )
    max_events_reached = (
        "The event budget ran out: the event-driven run needed more than "
        "`max_events` events (input spikes, deliveries, firings and the advances "
        "between them) and stopped before `t_end`. Increase `max_events` (or look "
        "for a runaway zero-delay excitatory loop)."
    )
    invalid_input_spikes = (
        "The input spike train is invalid, found at run time: a time is NaN, "
        "negative or past `t_end` (only +inf pads; a finite time too large for the "
        "layer's dtype counts as past it), or the source of a spike is not an input "
        "index of the layer (0 <= source < n_inputs)."
    )
    invalid_save_times = (
        "`save_times` is invalid, found at run time: a time is NaN, negative or past "
        "the end of the simulation, or the times are not ascending."
    )
    delay_below_resolution = (
        "A recurrent spike's delivery time, its own time plus `delay`, rounded to "
        "that time in the run's dtype (the delay is below the resolution of the "
        "spike times there): the spikes cascaded within one instant, as with zero "
        "delay, in an order the spike record does not keep, so the states at "
        "`save_times` from that spike on may not be those of the run (the replay "
        "cannot follow such a cascade; reported whether or not it changed a "
        "saved state). Give a longer `delay`, or run a float32 layer in float64."
    )
    gradient_rerun_mismatch = (
        "The backward pass of the adaptive path reran an interval and got other "
        "spike counts than the forward pass, so its derivative is not that of the "
        "forward run (the gradient is NaN). This happens when a crossing is too "
        "close to a decision boundary of the step controller; a tighter `rtol` "
        "usually avoids it."
    )
    gradient_through_forced_steps = (
        "The backward pass of the adaptive path went through steps forced at "
        "`dt_min` (accepted with their error above the tolerance; "
        "`stats['num_dt_min_steps']`), whose derivatives can be far from the "
        "model's where the state moves fast (the gradient is NaN). Lower "
        "`dt_min` until no step is forced."
    )
    gradient_crossings_not_recorded = (
        "The backward pass of the adaptive path replays the crossings the forward "
        "pass recorded with its spike times, and a neuron fired more than "
        "`max_spikes` times, so some were not recorded (the gradient is NaN). "
        "Increase `max_spikes`, or differentiate with "
        "`RerunAdjoint(replay_crossings=False)`, which searches for them again."
    )
    input_from_failed_layer = (
        "An earlier layer of the network failed (its own `result` says how): this "
        "layer ran on that layer's output spikes as far as they were recorded, so "
        "its run is not the network's. Fix the earlier layer's failure."
    )
    invalid_reset = (
        "The model's `reset` left a neuron at or above its threshold "
        "(`threshold(reset(y)) >= 0` at a spike); the run stopped that neuron there "
        "(the event-driven engines stop the whole run). A model's `reset` must bring "
        "the state below threshold: on dense inputs the neuron would fire again at "
        "once, forever, and the event-driven engines require it too (a reset by "
        "subtraction does not, after an input spike that lifts the voltage more "
        "than one subtracted step above threshold)."
    )


def raise_unless_successful(sol, context: str = ""):
    """`sol` (any module with a `result`), raising at run time where its `result`
    is not a success, with the message after `context` (which run of several
    failed); the check threaded on a scalar zero (see `tie_to`). Under
    `jax.shard_map` every device raises if any does (with the message of the
    largest failed result over the devices)."""
    value = max_across_devices(sol.result._value)
    failed = value != RESULTS.successful._value
    messages = [context + message for message in RESULTS._index_to_message]
    token = eqx.branched_error_if(jnp.zeros((), jnp.int32), failed, value, messages)
    return tie_to(sol, token)


def update_result(old: RESULTS, pred, new: RESULTS) -> RESULTS:
    """Keep the first failure: set `new` where `pred` holds and `old` is a success."""
    return RESULTS.where(pred & (old == RESULTS.successful), new, old)


class Solution(eqx.Module):
    """The result of [`SpikingODELayer.simulate`][].

    **Fields:**

    - `counts`: spikes per (interval, neuron), exact whatever the buffer size; exact
        integers in the float dtype, carrying the layer's surrogate gradient.
    - `spike_times`: per neuron, the first `max_spikes` spike times in ms from the
        start of the simulation, ascending, padded with `+inf`.
    - `num_spikes`: per neuron, the total number of spikes (may exceed `max_spikes`,
        in which case `result` says so).
    - `final_state`: the neuron state at the end of the last interval.
    - `interval_states`: the neuron state at the end of every interval (leading axis
        is time); None from the event-driven engine (spike-train inputs, and
        recurrent layers, on dense inputs too: `save_times` at the interval ends
        gives those states), or with `keep_interval_states=False`.
    - `stats`: per-neuron integer counters: `num_steps` (accepted solver steps),
        `num_rejected_steps`, `num_crossings` (located threshold crossings),
        `num_dt_min_steps` (steps accepted only because they hit `dt_min`),
        `num_stalled_steps` (steps that moved neither the time nor the state:
        `step_size_underflow`), `num_imprecise_intervals` (intervals whose count rounding may have changed:
        `count_precision_lost`), and the scalar `max_steps`.
    - `result`: a [`RESULTS`][] item.
    - `interval`: the interval length (ms), or one length per interval.
    - `duration`: the simulated time (ms).
    - `save_times`: the times (ms) given to `simulate(..., save_times=...)`, or
        None.
    - `saved_states`: the neuron state at each of `save_times` (leading axis: the
        save times; `dynamics.voltage(...)` of it gives the membrane voltages), or
        None. At a spike time of a neuron its state just after the reset.
    """

    counts: Counts
    spike_times: SpikeTimes
    num_spikes: Int[Array, " n_neurons"]
    final_state: State
    interval_states: State | None
    stats: dict[str, Int[Array, "..."]]
    result: RESULTS
    interval: Float[Array, "*time"]
    duration: Float[Array, ""]
    save_times: Float[Array, " save"] | None = None
    saved_states: State | None = None

    @property
    def steps_per_second(self) -> Float[Array, " n_neurons"]:
        """Accepted solver steps per simulated second (1000 ms), per neuron. Only
        for runs on dense inputs: an event-driven run counts events, not steps
        (`stats["num_events"]`)."""
        if "num_steps" not in self.stats:
            raise AttributeError(
                "`steps_per_second` is for runs on dense inputs; this event-driven "
                "run counts events instead: see `stats['num_events']`."
            )
        # duration is (...) when the solution is batched.
        duration_ms = jnp.asarray(self.duration)[..., None]
        return self.stats["num_steps"] * (1000.0 / duration_ms)

    def spike_train(self, *, throw: bool = True) -> SpikeTrain:
        """The recorded spikes as a [`SpikeTrain`][] (source = neuron index), the
        input of a next layer. Unordered and `+inf` padded; under `jax.vmap` (or on
        a batched solution) one train per batch element.

        Of a run that did not succeed (`result`, from `simulate(..., throw=False)`)
        the train may be incomplete (a full spike buffer keeps the first
        `max_spikes` spikes of each neuron): with `throw` (the default) that raises
        at run time, with the run's message; `throw=False` returns the recorded
        spikes whatever the result."""
        throw = check_bool("throw", throw)
        sol = self
        if throw:
            sol = raise_unless_successful(self, "spike_train() of a failed run: ")
        times = sol.spike_times
        n, m = times.shape[-2:]
        sources = jnp.broadcast_to(jnp.arange(n)[:, None], (n, m))
        sources = jnp.broadcast_to(sources, times.shape)
        flat = times.shape[:-2] + (n * m,)
        return SpikeTrain(times.reshape(flat), sources.reshape(flat))
