"""Derivatives of the feed-forward event engine by replaying its recorded events.

[`simulate_feedforward`][] decides everything on values: which neuron crosses
threshold, where (a root search), and when an input lifts a neuron to threshold.
Its derivatives need none of that search again: given the recorded spikes, each
neuron's trajectory is a fixed sequence of actions on its own clock, one per step,

- `cross`: its next spike is a crossing: follow the exact flow to it (the time with
  the implicit-function derivative of the threshold condition) and reset;
- `fire`: its next spike is at the instant it has reached, once no input is left
  there: reset at that spike's own time (that of the input that lifted it);
- `event`: otherwise follow the flow to the next input spike, interval start or the
  end, start the interval and add that input's weights,

the same operations (`implicit_crossing`, `jump_at`, `reset_at`) that the engine of
[`simulate_events`][] differentiates, so that the derivative is the same. Every
neuron takes one step per input spike, interval start, the end and recorded spike,
until every neuron is through, with no root search. The replay runs only in the
backward pass of [`with_replay_gradient`][] (whose value is the engine's own
output): without derivatives, then pulled back one step at a time
([`reverse_segments`][]); its checkpoints and records hold only the neurons'
states.
"""

import dataclasses

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._event_flow import earliest, fire_terms, implicit_crossing, jump_at
from ._event_run import EventSchedule
from ._misc import (
    first_order_only,
    max_across_devices,
    sum_where_invariant,
    tangent,
    tie_to,
    vary_like,
    where_tree,
)
from ._reverse import reverse_segments


class _ReplayState(eqx.Module):
    clock: Float[Array, " n_neurons"]
    y: State
    interval: Int[Array, " n_neurons"]
    next_input: Int[Array, " n_neurons"]
    slot: Int[Array, " n_neurons"]
    # Zero in value, with derivatives: a neuron with an instant spike due at its
    # own time `clock + shift`, and its reset's first-order terms (`fire_terms`,
    # taken with the state and current it reached threshold with). Only the step
    # made with derivatives computes them; the replay's runs carry zeros, and its
    # checkpoints and records leave them out.
    shift: Float[Array, " n_neurons"]
    reset_terms: State


def _differentiated(s: _ReplayState):
    """The part of the replay's state that carries derivatives from step to step
    (the rest are its decisions)."""
    return (s.clock, s.y, s.shift, s.reset_terms)


def _strip(s: _ReplayState) -> _ReplayState:
    return dataclasses.replace(s, shift=None, reset_terms=None)


def _restore(s: _ReplayState, end: _ReplayState) -> _ReplayState:
    zeros = jax.tree.map(jnp.zeros_like, (end.shift, end.reset_terms))
    return dataclasses.replace(s, shift=zeros[0], reset_terms=zeros[1])


def replay_steps(num_inputs: int, num_intervals: int, max_spikes: int) -> int:
    """Steps that every neuron's replay fits in: one per input spike, interval
    start (the first is at 0 and takes none), the end, and recorded spike."""
    return num_inputs + num_intervals + max_spikes


def _replay_step(
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    schedule: EventSchedule,
    spike_times: Float[Array, "n_neurons max_spikes"],
    instant: Bool[Array, "n_neurons max_spikes"],
    num_spikes: Int[Array, " n_neurons"],
    derivatives: bool,
):
    """`(step, working)` of the replay along the engine's records (`spike_times`,
    `instant`: the spike fired at an event instant rather than at a crossing, and
    `num_spikes`, used as constants): `step(s)` is `(s_next, (time, slot))`, one
    action per neuron, with the replayed spike time of the neurons that spiked and
    their buffer slot (`max_spikes` for the others); `working(s)` says which
    neurons have work left. Without `derivatives` (the replay's runs), `step`
    leaves out the terms that are zero in value and only carry derivatives (as
    the runs of [`simulate_events`][]' loop do): same values.
    """
    n, max_spikes = spike_times.shape

    rows = jnp.arange(n, dtype=jnp.int32)
    recorded, instant, num_spikes = lax.stop_gradient(
        (spike_times, instant, num_spikes)
    )
    t_end = schedule.t_end
    t_end_c = lax.stop_gradient(t_end)
    dyn_c = lax.stop_gradient(dynamics)

    def upcoming(s: _ReplayState):
        return schedule.upcoming(s.next_input, s.interval)

    def working(s: _ReplayState):
        # A neuron has work left while a recorded spike or an event is ahead.
        clock_c = lax.stop_gradient(s.clock)
        _, t_in, t_switch = lax.stop_gradient(upcoming(s))
        due = jnp.minimum(t_in, t_switch) <= clock_c
        return (s.slot < num_spikes) | (clock_c < t_end_c) | due

    def step(s: _ReplayState):
        clock_c = lax.stop_gradient(s.clock)
        slot = jnp.minimum(s.slot, max_spikes - 1)
        has_spike = s.slot < num_spikes
        spike_c = recorded[rows, slot]
        is_instant = instant[rows, slot]
        i, t_in, t_switch = upcoming(s)
        t_in_c, t_switch_c = lax.stop_gradient((t_in, t_switch))
        t_next = earliest(t_end, t_switch, t_in)
        t_next_c = lax.stop_gradient(t_next)
        settled = t_in_c > clock_c
        do_fire = has_spike & is_instant & (spike_c == clock_c) & settled
        # A crossing comes before the next event (the engine leaves one located at
        # the event itself to the instant there: an `instant` spike).
        do_cross = has_spike & ~is_instant & (spike_c <= t_next_c)
        due = jnp.minimum(t_in_c, t_switch_c) <= clock_c
        do_event = ~do_fire & ~do_cross & ((clock_c < t_end_c) | due)
        current = schedule.currents[s.interval, rows]

        # The flow to the next event (taken by `event` below).
        behind = t_next_c > clock_c
        h = jnp.where(behind, t_next - s.clock, 0)
        y_flow = dynamics.exact_flow(s.y, current, h)
        y_flow = jax.tree.map(lambda a, b: jnp.where(behind, a, b), y_flow, s.y)
        # A neuron whose flow reaches threshold at that event itself fires there
        # (an `instant` spike, recorded at the event's time) at its own crossing
        # time, equal to the event's; unless a jump there lifts it (below).
        reached = do_event & behind & has_spike & is_instant & (spike_c == t_next_c)

        # cross: to the recorded crossing, with its implicit derivative (and that
        # of a crossing reached at the next event).
        y_c, current_c = lax.stop_gradient((s.y, current))

        def margin(h):
            return dyn_c.threshold(dyn_c.exact_flow(y_c, current_c, h))

        h_c = jnp.where(
            do_cross, spike_c - clock_c, jnp.where(reached, t_next_c - clock_c, 0)
        )
        if derivatives:
            h_cross = implicit_crossing(dynamics, s.y, current, h_c, margin)
            t_cross = spike_c + tangent(s.clock + h_cross)
        else:
            h_cross, t_cross = h_c, spike_c
        y_cross = dynamics.reset(dynamics.exact_flow(s.y, current, h_cross))

        # fire: at the instant reached, at the spike's own time.
        y_fire = dynamics.reset(s.y)
        t_fire = s.clock
        if derivatives:
            y_fire = jax.tree.map(jnp.add, y_fire, s.reset_terms)
            t_fire = s.clock + s.shift

        # event: to the next input, interval start or the end (the flow above);
        # start the interval and add one input's weights (see
        # `simulate_feedforward`'s `at_event`).
        clock = jnp.where(behind, t_next, s.clock)
        clock_now = lax.stop_gradient(clock)
        interval = s.interval + (t_switch_c <= clock_now).astype(jnp.int32)
        is_input = t_in_c <= clock_now
        source = schedule.input_sources[i]
        amount = jnp.where(is_input, weight[rows, source], 0)
        current_event = schedule.currents[interval, rows]
        if derivatives:
            offset = tangent(jnp.where(is_input, t_in - clock, 0))
            y_event = jump_at(dynamics, clock, y_flow, amount, offset, current_event)
        else:
            y_event = dynamics.jump(y_flow, amount)
        # (The jump that lifts the neuron to threshold, not a later one there.)
        below, above = lax.stop_gradient(
            (dyn_c.threshold(y_flow) < 0, dyn_c.threshold(y_event) >= 0)
        )
        lifted = is_input & below & above
        shift, terms = s.shift, s.reset_terms
        if derivatives:
            shift = jnp.where(behind, 0, shift)
            shift = jnp.where(reached, tangent(h_cross) - tangent(h), shift)
            shift = jnp.where(lifted, offset, shift)
            # Its reset's terms, with the state and current it reached threshold
            # with (lifted: after the jump; reached by its flow: before the jumps
            # and any interval start here).
            new_terms = fire_terms(
                dynamics,
                clock,
                jax.tree.map(lambda a, b: jnp.where(lifted, a, b), y_event, y_flow),
                shift,
                jnp.where(lifted, current_event, current),
            )
            zeros = jax.tree.map(jnp.zeros_like, terms)
            terms = where_tree(
                lifted | reached, new_terms, where_tree(behind, zeros, terms)
            )

        def pick(cross, fire, event, rest):
            return jnp.where(
                do_cross,
                cross,
                jnp.where(do_fire, fire, jnp.where(do_event, event, rest)),
            )

        spiked = do_cross | do_fire
        new = _ReplayState(
            clock=pick(t_cross, s.clock, clock, s.clock),
            y=jax.tree.map(
                lambda a, b, c, d: pick(a, b, c, d), y_cross, y_fire, y_event, s.y
            ),
            interval=jnp.where(do_event, interval, s.interval),
            next_input=s.next_input + (do_event & is_input).astype(jnp.int32),
            slot=s.slot + spiked.astype(jnp.int32),
            shift=pick(s.shift, jnp.zeros_like(s.shift), shift, s.shift),
            reset_terms=jax.tree.map(
                lambda t, z, e: pick(t, z, e, t),
                s.reset_terms,
                jax.tree.map(jnp.zeros_like, s.reset_terms),
                terms,
            ),
        )
        time = jnp.where(do_cross, t_cross, t_fire)
        return new, (time, jnp.where(spiked, s.slot, max_spikes))

    return step, working


def replay_vjp(args, perturbed, records, grad_times, grad_state):
    """The cotangents of `args` (`dynamics, weight, schedule, state`; those marked
    in `perturbed`, `None` for the others) from those of the recorded run's spike
    times and final state, through its replay; and whether the replay failed to
    reproduce the records in its steps.

    Every neuron replays its records step by step: each step's derivative is that
    of `step` above (its actions held fixed), pulled back one step at a time
    ([`reverse_segments`][]).
    """
    differentiated, fixed = eqx.partition(args, perturbed)
    dynamics, weight, schedule, state = args
    spike_times, instant, num_spikes = records
    n, max_spikes = spike_times.shape
    dtype = spike_times.dtype
    num_inputs = schedule.input_times.shape[0]
    num_intervals = schedule.boundaries.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    step, working = _replay_step(
        dynamics, weight, schedule, *records, derivatives=False
    )

    def advance(s):
        new, (_, slot) = step(s)
        return new, (s, slot)

    def linearised(p, x, rec):
        dyn, w, sched, _ = eqx.combine(p, fixed)
        s = eqx.tree_at(_differentiated, rec[0], x)
        new, (time, _) = _replay_step(dyn, w, sched, *records, derivatives=True)[0](s)
        return _differentiated(new), time

    def time_cotangent(rec):
        slot = rec[1]
        picked = grad_times[rows, jnp.minimum(slot, max_spikes - 1)]
        return jnp.where(slot < max_spikes, picked, 0)

    zero = jnp.zeros((n,), jnp.int32)
    init = _ReplayState(
        clock=jnp.zeros((n,), dtype),
        y=state,
        interval=zero,
        next_input=zero,
        slot=zero,
        shift=jnp.zeros((n,), dtype),
        reset_terms=jax.tree.map(jnp.zeros_like, state),
    )
    zeros = jnp.zeros((n,), dtype)
    no_state = jax.tree.map(jnp.zeros_like, state)
    grad_args, (_, grad_init, _, _), end, _, _ = reverse_segments(
        advance,
        lambda s: jnp.any(working(s)),
        linearised,
        lambda rec: _differentiated(rec[0]),
        time_cotangent,
        differentiated,
        init,
        (zeros, grad_state, zeros, no_state),
        replay_steps(num_inputs, num_intervals, max_spikes),
        checkpoint=_strip,
        restore=_restore,
        expand=lambda rec, end: (_restore(rec[0], end), rec[1]),
    )
    # The initial state's own cotangent (where it is differentiated).
    if differentiated[3] is not None:
        grad_args = eqx.tree_at(
            lambda g: g[3],
            grad_args,
            jax.tree.map(
                lambda g, d: None if g is None else g + d,
                grad_args[3],
                grad_init,
                is_leaf=lambda x: x is None,
            ),
        )
    # The bound holds by construction: work left means the replay parted from the
    # engine's records.
    return grad_args, jnp.any(working(end))


@eqx.filter_custom_vjp
def with_replay_gradient(args, values, records):
    """`values` (the engine's spike times and final state, computed without
    derivatives), whose gradient with respect to `args` (`dynamics, weight,
    schedule, state`) is that of their replay along the engine's `records`
    (`spike_times, instant, num_spikes`)."""
    del args, records
    return values


@with_replay_gradient.def_fwd
def _with_replay_gradient_fwd(perturbed, args, values, records):
    del perturbed, records
    # (Run on tangents only where a gradient is differentiated again.)
    args, values = first_order_only((args, values))
    return values, None


@with_replay_gradient.def_bwd
def _with_replay_gradient_bwd(residuals, grad_values, perturbed, args, values, records):
    del residuals
    # Unrecorded slots (`inf`) and outputs that were not differentiated carry no
    # cotangent.
    grad_values = jax.tree.map(
        lambda g, v: jnp.zeros_like(v) if g is None and v is not None else g,
        grad_values,
        values,
        is_leaf=lambda x: x is None,
    )
    grad_times, grad_state = grad_values
    grad_times = jnp.where(jnp.isfinite(values[0]), grad_times, 0)
    # Under `jax.shard_map`, the replay differentiates inputs that vary as the
    # run does: an input that varies over fewer mesh axes would have its
    # cotangent summed over devices (a collective) in every iteration of the
    # replay's loops, whose lengths differ from device to device. It is summed
    # once, at the end.
    refs = (args, values, records, grad_values)
    grad_args, parted = replay_vjp(
        vary_like(args, refs), perturbed, records, grad_times, grad_state
    )
    # (A run with non-finite values is reported as such; its replay may stall.)
    finite = jnp.all(jnp.isfinite(jnp.where(jnp.isinf(values[0]), 0, values[0])))
    # A run with a NaN input time is reported as invalid (its `result`), and the
    # replay need not follow it: it gets no gradient (zero, as a run with another
    # invalid input time gets), rather than an error from the replay.
    _, _, schedule, _ = args
    valid = ~jnp.any(jnp.isnan(schedule.input_times))
    grad_args = jax.tree.map(
        lambda g: jnp.where(valid, g, jnp.zeros_like(g)), grad_args
    )
    token = eqx.error_if(
        jnp.zeros((), jnp.int32),
        max_across_devices(parted & finite & valid),
        "The gradient's replay of the event-driven run did not reproduce its "
        "recorded spikes (an internal error).",
    )
    return sum_where_invariant(tie_to(grad_args, token), args)
