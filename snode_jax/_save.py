"""The neuron state at given times of a finished run (`simulate(..., save_times=)`).

States are right-continuous: at a save time equal to a spike time of a neuron, the
state of that neuron just after its reset is returned (as `interval_states` and
`final_state` are at the end of an interval or run where a spike happens).

- Dense inputs (the interval scan): the intervals are split at the save times and
  the layer runs once more, from the same initial state, over the finer schedule
  (each piece keeps its interval's held input); the state at the end of a piece is
  the state at its save time. One more run of `integrate` (T + S pieces), not one
  per save time: it compiles like a plain run and folds under `jax.vmap`. Exact
  for the closed forms (the flow over a split interval is the flow over the
  whole); on the adaptive Runge-Kutta path the second run restarts its steps at
  each save time, so it agrees with the first run's trajectory to the solver's
  tolerance.
- Event-driven runs: the run's spike record fixes every discrete event, so the
  state at any time follows by replaying the events in time order on the exact
  flow (input spikes and recurrent deliveries jump, the recorded spikes reset,
  interval starts switch the held current), with the save times merged in: one
  scan over inputs, spikes and save times, without any crossing search.
"""

from functools import partial

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._checks import as_jax_array, check_real_number, describe
from ._custom_types import State
from ._dynamics import AbstractDynamics, AbstractExactFlowDynamics
from ._integrate import integrate, integrate_events
from ._lif import LIFState, ODELIFDynamics
from ._misc import (
    expand,
    input_currents,
    is_concrete,
    running_max,
    running_sum,
    tangent,
    vary_like,
    where_tree,
)
from ._solution import RESULTS, Solution, raise_unless_successful


def duration_slack(duration) -> Array:
    """How far past `duration` a save time may lie: a few rounding units, so that
    `jnp.linspace(0, T * interval, N)` fits a run whose duration was summed from its
    intervals (the state there is still computed, not clipped)."""
    duration = jnp.asarray(duration)
    return duration + 64 * jnp.finfo(duration.dtype).eps * jnp.abs(duration)


def check_save_times(save_times, duration=None) -> Array:
    """`save_times` as a 1-D float array; for concrete values, `ValueError` unless
    they are finite, `>= 0`, ascending and (with a concrete `duration`) no later than
    `duration`."""
    check_real_number("save_times", save_times)
    times = as_jax_array("save_times", save_times)
    if times.ndim != 1:
        raise ValueError(
            f"`save_times` must be a 1-D array of times (ms), got shape {times.shape}."
        )
    if not jnp.issubdtype(times.dtype, jnp.floating):
        if not jnp.issubdtype(times.dtype, jnp.integer):
            raise TypeError(
                f"`save_times` must be real numbers (ms), got dtype {times.dtype}."
            )
        times = times.astype(jnp.result_type(float))
    if is_concrete(times):
        t = np.asarray(times)
        if not np.all(np.isfinite(t)):
            raise ValueError(
                f"`save_times` must be finite (ms), got {describe(t[~np.isfinite(t)])}."
            )
        if np.any(t < 0):
            raise ValueError(
                f"`save_times` must be >= 0 (ms), got {describe(t[t < 0])}."
            )
        if np.any(np.diff(t) < 0):
            i = int(np.argmax(np.diff(t) < 0))
            raise ValueError(
                "`save_times` must be ascending, got "
                f"save_times[{i}] = {float(t[i])!r} > save_times[{i + 1}] = {float(t[i + 1])!r}."
            )
        if duration is not None and is_concrete(duration):
            end = np.asarray(duration)
            late = t > np.asarray(duration_slack(duration))
            if np.any(late):
                raise ValueError(
                    f"`save_times` must lie in [0, {end.item()!r}] (ms, the simulated "
                    f"span), got {describe(t[late])}."
                )
    return times


def save_times_invalid(save_times, duration) -> Bool[Array, ""]:
    """Whether traced save times are NaN, negative, past `duration` or unordered."""
    bad = ~jnp.all(jnp.isfinite(save_times) & (save_times >= 0))
    bad = bad | jnp.any(save_times > duration_slack(duration))
    return bad | jnp.any(save_times[1:] < save_times[:-1])


# How far (in units of rounding of the save time) a recorded spike may lie before a
# save time and still be the one its piece ends on; and after it (a spike time
# that another program rounded a few ulp earlier: only that, since a save time
# just before a spike is otherwise the state before it).
_SPIKE_ROUNDING = 256
_SPIKE_AHEAD = 4


def _post_reset(dynamics: AbstractDynamics, y: State) -> State:
    """The state just after a spike in the state `y` at the crossing."""
    out = dynamics.reset(y)
    if isinstance(dynamics, ODELIFDynamics) and isinstance(out, LIFState):
        if dynamics.t_ref is not None and out.refractory is not None:
            # The refractory period starts with the spike.
            t_ref = jnp.broadcast_to(dynamics.t_ref, out.v.shape).astype(out.v.dtype)
            out = LIFState(out.v, t_ref)
    return out


def dense_saved_states(
    sol: Solution,
    dynamics: AbstractDynamics,
    solver,
    weight: Float[Array, "n_neurons n_inputs"],
    inputs: Float[Array, "time n_inputs"],
    state0: State,
    save_times: Float[Array, " save"],
    throw: bool = False,
    **integrate_kwargs,
) -> tuple[State, RESULTS]:
    """The state at each of `save_times` of a run on dense inputs, `sol`, and the
    outcome of the run that computes them.

    The intervals are split at the save times and the layer is run once more over
    the finer schedule (each piece keeps its interval's input), from the same
    initial state; the state at the end of a piece is that at its save time.

    **Arguments:**

    - `sol`: the run.
    - `dynamics`, `solver`, `weight`, `inputs`, `state0`: as given to it.
    - `save_times`: ascending times in `[0, sol.duration]` (ms).
    - `throw`: whether the gradient raises where the backward pass of the second
        run fails its check (on the adaptive path: a rerun giving other spike
        counts, see [`RerunAdjoint`][]); else that gradient is NaN. Its forward
        outcome is returned either way.
    - `integrate_kwargs`: the run's step settings (`stepsize_controller`,
        `root_finder`, `max_steps`, `surrogate`).

    **Returns:**

    `(states, result)`: a state whose leaves have the save times as their leading
    axis, and the [`RESULTS`][] of the second run.
    """
    dtype = weight.dtype
    num_intervals = inputs.shape[0]
    lengths = jnp.broadcast_to(jnp.asarray(sol.interval, dtype), (num_intervals,))
    ends = jnp.cumsum(lengths)
    ok = jnp.isfinite(save_times) & (save_times >= 0)
    times = jnp.where(ok, save_times, 0).astype(dtype)  # invalid ones are reported
    # Every interval end and save time is the end of a piece; equal ones (and time
    # 0) make no piece: they are moved after the end, as pieces of zero input.
    marks = jnp.concatenate([ends, times])
    key = lax.stop_gradient(marks)
    order = jnp.argsort(key, stable=True)
    ascending = key[order]
    new = jnp.concatenate([jnp.ones((1,), bool), ascending[1:] != ascending[:-1]])
    new = new & (ascending > 0)
    pieces = jnp.argsort(~new, stable=True)  # the new ones first, in time order
    real = new[pieces]
    piece_end = marks[order[pieces]]
    piece_start = jnp.concatenate([jnp.zeros((1,), dtype), piece_end[:-1]])
    # (Those after the end are as short as a piece can be, so that nothing
    # happens in them: a neuron that fires with no input, or a budget of few
    # steps, must not fail a run that the real pieces completed.)
    spare = jnp.finfo(dtype).eps * lengths[-1]
    piece_length = jnp.where(real, piece_end - piece_start, spare)
    k = jnp.searchsorted(ends, lax.stop_gradient(piece_end), side="left")
    k = jnp.clip(k, 0, num_intervals - 1)
    piece_inputs = jnp.where(real[:, None], inputs[k], 0)
    run = integrate(
        dynamics,
        solver,
        weight,
        piece_inputs,
        piece_length,
        state0,
        # No spike times are needed; an empty buffer (rather than none) keeps the
        # reverse pass of the adaptive path's adjoint well formed.
        max_spikes=0,
        keep_interval_states=True,
        throw=False,
        backward_throw=throw,
        **integrate_kwargs,
    )
    assert run.interval_states is not None
    # The piece of each save time: that of the first equal mark.
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    latest_new = running_max(jnp.where(new, jnp.arange(new.shape[0]), -1))
    piece_of_sorted = jnp.zeros_like(pieces).at[pieces].set(jnp.arange(pieces.shape[0]))
    rep = latest_new[rank[num_intervals:]]
    at_zero = rep < 0
    piece = piece_of_sorted[jnp.maximum(rep, 0)]
    y = jax.tree.map(lambda a: a[piece], run.interval_states)
    # A save time equal to a recorded spike time gets the state after the reset.
    # The piece ends on that crossing, which its rounding (or on the Runge-Kutta
    # path, its own steps) may place just after the end; then it holds the state
    # at the threshold, one spike short, and fires there (`_fire_at_end`). The
    # recorded time itself may differ from the save time by rounding too, either
    # way (the run and its pieces are different programs, and a save time may come
    # from another run: one compiled apart rounds a spike an ulp or so earlier or
    # later): a spike recorded that close before the save time counts, and one a
    # few ulp after it.
    recorded = lax.stop_gradient(sol.spike_times)  # ascending per neuron
    ulp = jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(times), 1)
    close = _SPIKE_ROUNDING * ulp
    ahead = times + _SPIKE_AHEAD * ulp
    upto = jax.vmap(lambda row: jnp.searchsorted(row, ahead, side="right"))(recorded)
    last = jnp.take_along_axis(recorded, jnp.maximum(upto - 1, 0), axis=1)
    on_spike = ((upto > 0) & (last >= times[None] - close[None])).T  # (save, neuron)
    upto = upto.T
    seen = running_sum(lax.stop_gradient(run.counts).astype(jnp.int32), axis=0)[piece]
    short = on_spike & ~at_zero[:, None] & (seen == upto - 1)
    piece_current = input_currents(piece_inputs[piece], weight)  # (save, neuron)
    fired = jax.vmap(partial(_fire_at_end, dynamics))(times, y, piece_current)
    y = jax.vmap(where_tree)(short, fired, y)
    y = jax.tree.map(lambda a, s0: jnp.where(at_zero[:, None], s0[None], a), y, state0)
    # A save time that ends its own piece is differentiated through the run (the
    # piece's length). One that does not (it equals an interval end, an earlier
    # save time, or 0) takes the state at the end of the piece of an equal mark
    # (or the initial state), moved to its own time to first order: the vector
    # field there times the difference of the two times' tangents (zero in value).
    # The field is the one from the right (with the held current of the interval
    # starting there; at the end of the run, the last one's), as on the
    # event-driven path.
    own_piece = (rep == rank[num_intervals:]) & ~at_zero
    starting = jnp.searchsorted(ends, lax.stop_gradient(times), side="right")
    starting = jnp.clip(starting, 0, num_intervals - 1)
    current = input_currents(inputs[starting], weight)  # (save, neuron)
    slope = jax.vmap(dynamics.vector_field)(times, y, current)
    equal_mark = jnp.where(at_zero, 0, piece_end[piece])
    dt = jnp.where(own_piece, 0, tangent(times) - tangent(equal_mark))

    def moved(a, f):
        f = jnp.where(jnp.isfinite(f), f, 0)  # (its value is never used)
        return a + expand(dt, a) * f

    y = jax.tree.map(moved, y, slope)
    # Its spike buffer is empty, so full as soon as a spike happens: not a failure.
    result = run.result
    full = result == RESULTS.spike_buffer_full
    return y, RESULTS.where(full, RESULTS.successful, result)


def _fire_at_end(dynamics: AbstractDynamics, t, y: State, current) -> State:
    """The state just after the spike of neurons found at threshold at `t`, their
    crossing located there: equal in value to the reset state, with the derivative
    of the state at `t` after a spike at the crossing's own time `t + h`.

    To first order the crossing is `h = -g / g'` from the margin `g` (zero in value
    here) and its rate along the flow `g'`; the state fires at `t + h` and the
    reset state flows back to `t` (as [`reset_at`][] on the event engines)."""

    def field(y):
        # (Lanes that do not fire are discarded; keep them finite for the gradient.)
        f = dynamics.vector_field(t, y, current)
        return jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0), f)

    f = field(y)
    g, rate = jax.jvp(dynamics.threshold, (y,), (f,))
    rate = lax.stop_gradient(rate)
    shift = -tangent(g) / jnp.where(rate != 0, rate, 1)
    y_fire = jax.tree.map(lambda a, fa: a + expand(shift, a) * fa, y, f)
    post = _post_reset(dynamics, y_fire)
    f_post = field(post)
    return jax.tree.map(lambda a, fa: a - expand(shift, a) * fa, post, f_post)


# Kinds of replayed events; at one instant they are taken in this order (the event
# engine's: an interval's current starts, all jumps are added, then the neurons at
# threshold fire and reset, and the state is saved after all of it).
_SWITCH, _INPUT, _DELIVERY, _RESET, _SAVE = range(5)


def event_saved_states(
    sol: Solution,
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    state0: State,
    save_times: Float[Array, " save"],
    *,
    input_times: Float[Array, " events"],
    input_sources,
    boundaries: Float[Array, " intervals"],
    currents: Float[Array, "intervals n_neurons"],
    recurrent_weight: Float[Array, "n_neurons n_neurons"] | None = None,
    delay: float = 0.0,
) -> State:
    """The state at each of `save_times` of an event-driven run `sol`, by replaying
    its events on the exact flow.

    **Arguments:**

    - `sol`: the run; its `spike_times` must hold every spike before the last save
        time (true of any successful event-driven run).
    - `dynamics`, `weight`, `state0`: as given to the run.
    - `save_times`: ascending times in `[0, t_end]` (ms).
    - `input_times`, `input_sources`: the input spikes (`+inf` padding, any order).
    - `boundaries`, `currents`: start times (ms) and held currents of the intervals
        of held input (one interval of zero current for spike-train inputs).
    - `recurrent_weight`, `delay`: the recurrence, if any, with `delay > 0`.

    **Returns:**

    A state whose leaves have the save times as their leading axis.

    A neuron fires at most once per instant when `delay > 0` (its own spikes come
    back no earlier than `delay` later), so at one instant all jumps come before
    all resets, as in the engine. With `delay == 0` spikes cascade within an
    instant in an order the spike record does not keep: not supported.
    """
    dtype = weight.dtype
    n = weight.shape[0]
    num_save = save_times.shape[0]
    if num_save == 0:  # (no state to keep: the replay would scatter into nothing)
        return jax.tree.map(lambda a: jnp.zeros((0,) + a.shape, a.dtype), state0)
    spike_times = sol.spike_times.astype(dtype)
    m = spike_times.shape[1]
    neuron_of = jnp.repeat(jnp.arange(n, dtype=jnp.int32), m)
    parts = [
        (boundaries.astype(dtype), _SWITCH, jnp.arange(boundaries.shape[0])),
        (input_times.astype(dtype), _INPUT, input_sources),
        (spike_times.reshape(-1), _RESET, neuron_of),
        (save_times.astype(dtype), _SAVE, jnp.arange(num_save)),
    ]
    if recurrent_weight is not None:
        if delay <= 0:
            raise ValueError(
                "`save_times` on a recurrent layer needs `delay > 0`: with zero delay "
                "spikes cascade within one instant in an order the spike record "
                f"does not keep (got delay={delay!r})."
            )
        parts.append((spike_times.reshape(-1) + delay, _DELIVERY, neuron_of))
    times = jnp.concatenate([p[0] for p in parts])
    kinds = jnp.concatenate([jnp.full(p[0].shape, p[1], jnp.int32) for p in parts])
    index = jnp.concatenate([jnp.asarray(p[2], jnp.int32) for p in parts])
    # Time order, ties broken by kind; `+inf` padding last (never applied).
    order = jnp.lexsort((kinds, lax.stop_gradient(times)))
    times, kinds, index = times[order], kinds[order], index[order]
    rows = jnp.arange(n, dtype=jnp.int32)
    w_rec = jnp.zeros((n, n), dtype) if recurrent_weight is None else recurrent_weight

    def body(carry, event):
        t, y, interval, saved = carry
        t_event, kind, i = event
        real = jnp.isfinite(t_event)
        t_new = jnp.where(real, t_event, t)
        h = jnp.broadcast_to(t_new - t, (n,))
        y = dynamics.exact_flow(y, currents[interval], h)
        safe = jnp.where(real, i, 0)
        amount = jnp.where(
            kind == _INPUT,
            weight[:, jnp.clip(safe, 0, weight.shape[1] - 1)],
            w_rec[:, jnp.clip(safe, 0, n - 1)],
        )
        jumps = real & ((kind == _INPUT) | (kind == _DELIVERY))
        y = dynamics.jump(y, jnp.where(jumps, amount, 0))
        fires = real & (kind == _RESET) & (rows == i)
        y = where_tree(fires, dynamics.reset(y), y)
        switch = real & (kind == _SWITCH)
        interval = jnp.where(switch, jnp.clip(i, 0, currents.shape[0] - 1), interval)
        # Only the save times' states are kept (S x n, not one per event).
        slot = jnp.where(real & (kind == _SAVE), i, num_save)  # out of range: none
        saved = jax.tree.map(lambda b, a: b.at[slot].set(a, mode="drop"), saved, y)
        return (t_new, y, interval, saved), None

    saved = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_save,) + a.shape), state0)
    init = (jnp.zeros((), dtype), state0, jnp.zeros((), jnp.int32), saved)
    init = vary_like(
        init, times, kinds, index, weight, w_rec, currents, state0, dynamics
    )
    (_, _, _, saved), _ = lax.scan(body, init, (times, kinds, index))
    return saved


def with_saved_states(sol: Solution, save_times, states, result=None) -> Solution:
    """`sol` with `save_times` and `saved_states` set (and a failure of the
    save-time computation kept in `result`, after any failure of the run)."""
    sol = eqx.tree_at(
        lambda s: (s.save_times, s.saved_states),
        sol,
        (save_times, states),
        is_leaf=lambda x: x is None,
    )
    if result is not None:
        keep = sol.result == RESULTS.successful
        sol = eqx.tree_at(
            lambda s: s.result, sol, RESULTS.where(keep, result, sol.result)
        )
    return sol


def integrate_saving(
    dynamics: AbstractDynamics,
    solver,
    weight: Float[Array, "n_neurons n_inputs"],
    inputs: Float[Array, "time n_inputs"],
    interval,
    state: State,
    save_times: Float[Array, " save"],
    *,
    throw: bool = False,
    **kwargs,
) -> Solution:
    """[`integrate`][] (keeping `interval_states`), then the states at `save_times`
    (see [`dense_saved_states`][]). `kwargs` are `integrate`'s step settings."""
    dtype = jnp.result_type(weight, inputs)
    sol = integrate(
        dynamics,
        solver,
        weight,
        inputs,
        interval,
        state,
        keep_interval_states=True,
        throw=throw,
        **kwargs,
    )
    kwargs.pop("max_spikes", None)
    save_times = save_times.astype(dtype)
    states, result = dense_saved_states(
        sol,
        dynamics.astype(dtype),
        solver,
        weight.astype(dtype),
        inputs.astype(dtype),
        jax.tree.map(lambda a: jnp.asarray(a, dtype), state),
        save_times,
        throw=throw,
        **kwargs,
    )
    return _finish(sol, save_times, states, result, throw)


def integrate_events_saving(
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    state: State,
    save_times: Float[Array, " save"],
    *,
    spikes=None,
    t_end=None,
    inputs: Float[Array, "time n_inputs"] | None = None,
    interval=None,
    recurrent_weight: Float[Array, "n_neurons n_neurons"] | None = None,
    delay: float = 0.0,
    throw: bool = False,
    context: str = "",
    **kwargs,
) -> Solution:
    """[`integrate_events`][], then the states at `save_times` (see
    [`event_saved_states`][]); a failure's message starts with `context`."""
    sol = integrate_events(
        dynamics,
        weight,
        state,
        spikes=spikes,
        t_end=t_end,
        inputs=inputs,
        interval=interval,
        recurrent_weight=recurrent_weight,
        delay=delay,
        throw=throw,
        context=context,
        **kwargs,
    )
    dtype = weight.dtype
    n = weight.shape[0]
    if spikes is not None:
        input_times, input_sources = spikes.times, spikes.sources
        boundaries = jnp.zeros((1,), dtype)
        currents = jnp.zeros((1, n), dtype)
    else:
        assert inputs is not None
        inputs = inputs.astype(dtype)
        lengths = jnp.broadcast_to(jnp.asarray(interval, dtype), (inputs.shape[0],))
        boundaries = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(lengths)[:-1]])
        currents = input_currents(inputs, weight)
        input_times = jnp.full((1,), jnp.inf, dtype)
        input_sources = jnp.zeros((1,), jnp.int32)
    save_times = save_times.astype(dtype)
    states = event_saved_states(
        sol,
        dynamics.astype(dtype),
        weight,
        jax.tree.map(lambda a: jnp.asarray(a, dtype), state),
        save_times,
        input_times=input_times,
        input_sources=input_sources,
        boundaries=boundaries,
        currents=currents,
        recurrent_weight=None
        if recurrent_weight is None
        else recurrent_weight.astype(dtype),
        delay=delay,
    )
    result = RESULTS.successful
    if recurrent_weight is not None and save_times.shape[0]:
        # A delivery at the spike's own time (a delay below the times' resolution
        # there) cascades as with zero delay: the replay cannot follow it, from
        # that spike on.
        t = sol.spike_times.astype(dtype)
        same = jnp.isfinite(t) & (t + delay == t) & (t <= jnp.max(save_times))
        result = RESULTS.where(
            jnp.any(same), RESULTS.delay_below_resolution, RESULTS.successful
        )
    return _finish(sol, save_times, states, result, throw, context)


def _finish(
    sol: Solution, save_times, states, result, throw: bool, context: str = ""
) -> Solution:
    invalid = save_times_invalid(save_times, sol.duration)
    result = RESULTS.where(invalid, RESULTS.invalid_save_times, result)
    sol = with_saved_states(sol, save_times, states, result)
    if throw:
        sol = raise_unless_successful(sol, context)
    return sol
