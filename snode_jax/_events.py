"""The event-driven engine: a population driven by input spikes, held currents and
its own (recurrent) spikes, advanced from event to event in exact global time order.

Every iteration of the loop does one thing, chosen in this order:

1. `switch`: an interval of held input current starts now: the drive steps to it.
2. `jump`: an input spike, or a recurrent spike's delivery, is due now: its weights
   are added to the state (`dynamics.jump`), one event per iteration.
3. `fire`: no jump is left at this instant and some neuron reached threshold by its
   flow now, or is at or above it after the jumps: all of them fire now, are
   recorded and reset; with recurrence their spikes are queued for delivery after
   `delay` (zero: at this same instant, so the cascade continues with 2).
4. `advance`: every neuron follows its exact flow to the next event: the next input
   spike, delivery, interval start or the end, or the earliest threshold crossing
   of any neuron before it (located per neuron on the exact flow and bracketed by
   its one interior maximum).

All delays are equal, so deliveries leave in the order the spikes were made: the
queue is the log of emitted spikes and a read position. The loop is an
`equinox.internal.while_loop` of kind `"checkpointed"`: reverse-mode differentiable
with memory bounded by its checkpoints, not by the number of events. The discrete
choices (which event, which neuron) are held fixed by the derivative, and each
crossing time carries the implicit-function derivative `-dg/dp / (dg/dt)` of its
threshold condition `g = 0`: the gradient of every spike time with respect to every
weight, parameter and input spike time, through every earlier event (what
EventProp computes).
"""

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._root_find import BracketedNewton

_SWITCH, _JUMP, _FIRE, _ADVANCE = 0, 1, 2, 3


class EventSchedule(eqx.Module):
    """What drives the population, fixed before the run.

    **Fields:**

    - `input_times`: input spike times (ms), ascending, `+inf` padded.
    - `input_sources`: their input indices (any valid index for padding).
    - `boundaries`: start times of the intervals of held current (ms); the first is 0.
    - `currents`: the held current of each interval, one row per interval.
    - `t_end`: the end of the run (ms).
    """

    input_times: Float[Array, " events"]
    input_sources: Int[Array, " events"]
    boundaries: Float[Array, " intervals"]
    currents: Float[Array, "intervals n_neurons"]
    t_end: Float[Array, ""]


class EventState(eqx.Module):
    """The loop carry."""

    t: Float[Array, ""]
    y: State
    interval_index: Int[Array, ""]
    next_input: Int[Array, ""]
    next_delivery: Int[Array, ""]
    num_logged: Int[Array, ""]
    log_times: Float[Array, " log"]
    log_sources: Int[Array, " log"]
    pending: Bool[Array, " n_neurons"]
    spike_times: Float[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    counts: Int[Array, "intervals n_neurons"]
    num_events: Int[Array, ""]
    buffer_full: Bool[Array, ""]
    search_failed: Bool[Array, ""]


class EventRun(eqx.Module):
    """What the engine returns (see [`simulate_events`][])."""

    spike_times: Float[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    counts: Int[Array, "intervals n_neurons"]
    final_state: State
    num_events: Int[Array, ""]
    buffer_full: Bool[Array, ""]
    search_failed: Bool[Array, ""]
    unfinished: Bool[Array, ""]


def default_max_events(num_inputs: int, num_intervals: int, n: int, max_spikes: int):
    """An event budget that a run can exhaust only by overflowing its spike buffer:
    each input spike, interval start and delivery is one jump or switch, each spike
    instant one fire, and each of those follows at most one advance."""
    return 2 * (num_inputs + num_intervals + 2 * n * max_spikes) + 4


def simulate_events(
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    recurrent_weight: Float[Array, "n_neurons n_neurons"] | None,
    delay: float,
    schedule: EventSchedule,
    state: State,
    *,
    root_finder: BracketedNewton,
    max_spikes: int,
    max_events: int,
) -> EventRun:
    """Run the population over `[0, schedule.t_end]`.

    **Arguments:**

    - `dynamics`: the model (its `exact_flow`, `peak_in_step`, `jump`, `threshold`
        and `reset`).
    - `weight`: input weights; input spike `e` adds `weight[:, input_sources[e]]`.
    - `recurrent_weight`: `None`, or the weights of the population's own spikes: a
        spike of neuron `k` adds `recurrent_weight[:, k]` after `delay` ms.
    - `schedule`: the [`EventSchedule`][].
    - `state`: the state at time 0.
    - `root_finder`: the crossing search; its default tolerance is 4 ulp of `t_end`.
    - `max_spikes`: spike times stored per neuron (`>= 1`); a neuron that would
        fire once more stops the run with `buffer_full`.
    - `max_events`: the iteration budget; a run that needs more stops with
        `unfinished`.

    **Returns:** an [`EventRun`][].
    """
    n = weight.shape[0]
    dtype = weight.dtype
    t_end = schedule.t_end
    num_inputs = schedule.input_times.shape[0]
    num_intervals = schedule.boundaries.shape[0]
    recurrent = recurrent_weight is not None
    log_size = n * max_spikes if recurrent else 1
    inf = jnp.asarray(jnp.inf, dtype)
    delay_ = jnp.asarray(delay, dtype)
    rows = jnp.arange(n, dtype=jnp.int32)

    def upcoming(s: EventState):
        i = jnp.minimum(s.next_input, num_inputs - 1)
        t_in = jnp.where(s.next_input < num_inputs, schedule.input_times[i], inf)
        k = jnp.minimum(s.interval_index + 1, num_intervals - 1)
        t_switch = jnp.where(
            s.interval_index + 1 < num_intervals, schedule.boundaries[k], inf
        )
        if recurrent:
            d = jnp.minimum(s.next_delivery, log_size - 1)
            t_rec = jnp.where(
                s.next_delivery < s.num_logged, s.log_times[d] + delay_, inf
            )
        else:
            t_rec = inf
        return t_in, t_rec, t_switch

    def fire_due(s: EventState):
        return s.pending | (dynamics.threshold(s.y) >= 0)

    def action(s: EventState):
        t_in, t_rec, t_switch = upcoming(s)
        return jnp.where(
            t_switch <= s.t,
            _SWITCH,
            jnp.where(
                jnp.minimum(t_in, t_rec) <= s.t,
                _JUMP,
                jnp.where(jnp.any(fire_due(s)), _FIRE, _ADVANCE),
            ),
        )

    def switch(s: EventState) -> EventState:
        return eqx.tree_at(lambda s: s.interval_index, s, s.interval_index + 1)

    def jump(s: EventState) -> EventState:
        t_in, _, _ = upcoming(s)
        is_input = t_in <= s.t
        i = jnp.minimum(s.next_input, num_inputs - 1)
        amount = weight[:, schedule.input_sources[i]]
        if recurrent:
            assert recurrent_weight is not None
            d = jnp.minimum(s.next_delivery, log_size - 1)
            amount_rec = recurrent_weight[:, s.log_sources[d]]
            amount = jnp.where(is_input, amount, amount_rec)
        y = dynamics.jump(s.y, amount)
        return eqx.tree_at(
            lambda s: (s.y, s.next_input, s.next_delivery),
            s,
            (
                y,
                s.next_input + is_input.astype(jnp.int32),
                s.next_delivery + (~is_input).astype(s.next_delivery.dtype),
            ),
        )

    def fire(s: EventState) -> EventState:
        spiking = fire_due(s)
        full = jnp.any(spiking & (s.num_spikes >= max_spikes))
        spiking = spiking & ~full
        col = jnp.minimum(s.num_spikes, max_spikes - 1)
        old = s.spike_times[rows, col]
        spike_times = s.spike_times.at[rows, col].set(jnp.where(spiking, s.t, old))
        reset = dynamics.reset(s.y)
        y = jax.tree.map(lambda a, b: jnp.where(spiking, a, b), reset, s.y)
        counts = s.counts.at[s.interval_index].add(spiking.astype(s.counts.dtype))
        num_spikes = s.num_spikes + spiking.astype(jnp.int32)
        log_times, log_sources, num_logged = s.log_times, s.log_sources, s.num_logged
        if recurrent:
            # Queue the spikes in neuron order (their delivery order at one instant).
            position = s.num_logged + jnp.cumsum(spiking, dtype=jnp.int32) - 1
            position = jnp.where(spiking, position, log_size)  # dropped
            log_times = log_times.at[position].set(s.t, mode="drop")
            log_sources = log_sources.at[position].set(rows, mode="drop")
            num_logged = num_logged + jnp.sum(spiking, dtype=jnp.int32)
        return eqx.tree_at(
            lambda s: (
                s.y,
                s.spike_times,
                s.num_spikes,
                s.counts,
                s.log_times,
                s.log_sources,
                s.num_logged,
                s.pending,
                s.buffer_full,
            ),
            s,
            (
                y,
                spike_times,
                num_spikes,
                counts,
                log_times,
                log_sources,
                num_logged,
                jnp.zeros_like(s.pending),
                s.buffer_full | full,
            ),
        )

    def advance(s: EventState) -> EventState:
        t_in, t_rec, t_switch = upcoming(s)
        t_next = jnp.minimum(jnp.minimum(t_in, t_rec), jnp.minimum(t_switch, t_end))
        current = schedule.currents[s.interval_index]
        # Which neurons cross before `t_next`, and when: decisions on constants.
        const = lax.stop_gradient((dynamics, s.y, current, t_next - s.t))
        dyn_c, y_c, current_c, span_c = const
        span = jnp.broadcast_to(span_c, (n,))

        def margin(h):
            return dyn_c.threshold(dyn_c.exact_flow(y_c, current_c, h))

        g_start = dyn_c.threshold(y_c)
        g_end = margin(span)
        t_peak, has_peak = dyn_c.peak_in_step(y_c, current_c, span)
        g_peak = margin(t_peak)
        # The first crossing lies before an interior maximum above threshold, else
        # (the flow rises past its minimum, or monotonically) before the end.
        before_peak = has_peak & (g_peak >= 0)
        crosses = before_peak | (g_end >= 0)
        upper = jnp.where(before_peak, t_peak, span)
        g_upper = jnp.where(before_peak, g_peak, g_end)
        found, converged, _ = root_finder.search(
            margin, jnp.zeros_like(span), upper, g_start, g_upper, crosses, t_end
        )
        found = jnp.where(crosses, found, inf)
        lane = jnp.argmin(found)
        first = found[lane]
        any_cross = jnp.any(crosses)
        # Implicit-function derivative of the earliest crossing: the value is the
        # located time, the derivative that of the root of g(h; y, p) = 0.
        h_star = jnp.where(any_cross, first, 0)
        h_lanes = jnp.broadcast_to(h_star, (n,))
        _, slope = jax.jvp(margin, (h_lanes,), (jnp.ones_like(h_lanes),))
        g = dynamics.threshold(dynamics.exact_flow(s.y, current, h_lanes))[lane]
        safe_slope = jnp.where(slope[lane] != 0, slope[lane], 1)
        h_cross = h_star - (g - lax.stop_gradient(g)) / safe_slope
        to_crossing = any_cross & (first < span_c)
        t_new = jnp.where(to_crossing, s.t + h_cross, t_next)
        y = dynamics.exact_flow(s.y, current, jnp.broadcast_to(t_new - s.t, (n,)))
        pending = crosses & (found == first)
        failed = jnp.any(crosses & ~converged)
        return eqx.tree_at(
            lambda s: (s.t, s.y, s.pending, s.search_failed),
            s,
            (t_new, y, pending, s.search_failed | failed),
        )

    def active(s: EventState):
        t_in, t_rec, t_switch = upcoming(s)
        due = (jnp.minimum(jnp.minimum(t_in, t_rec), t_switch) <= s.t) | jnp.any(
            fire_due(s)
        )
        return (s.t < t_end) | due

    def cond_fun(s: EventState):
        return active(s) & ~s.buffer_full & ~s.search_failed

    def body_fun(s: EventState) -> EventState:
        s = lax.switch(action(s), (switch, jump, fire, advance), s)
        return eqx.tree_at(lambda s: s.num_events, s, s.num_events + 1)

    zero = jnp.zeros((), jnp.int32)
    init = EventState(
        t=jnp.zeros((), dtype),
        y=state,
        interval_index=zero,
        next_input=zero,
        next_delivery=zero,
        num_logged=zero,
        log_times=jnp.full((log_size,), jnp.inf, dtype),
        log_sources=jnp.zeros((log_size,), jnp.int32),
        pending=jnp.zeros((n,), bool),
        spike_times=jnp.full((n, max_spikes), jnp.inf, dtype),
        num_spikes=jnp.zeros((n,), jnp.int32),
        counts=jnp.zeros((num_intervals, n), jnp.int32),
        num_events=zero,
        buffer_full=jnp.zeros((), bool),
        search_failed=jnp.zeros((), bool),
    )
    final = eqxi.while_loop(
        cond_fun, body_fun, init, max_steps=max_events, kind="checkpointed"
    )
    unfinished = active(final) & ~final.buffer_full & ~final.search_failed
    return EventRun(
        spike_times=final.spike_times,
        num_spikes=final.num_spikes,
        counts=final.counts,
        final_state=final.y,
        num_events=final.num_events,
        buffer_full=final.buffer_full,
        search_failed=final.search_failed,
        unfinished=unfinished,
    )
