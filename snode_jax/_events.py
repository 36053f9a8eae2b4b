"""The event-driven engine: a population driven by input spikes, held currents and
its own (recurrent) spikes, advanced from event to event in exact global time order.

Every iteration of the loop does, in this order:

1. `advance` (unless something is due now): every neuron follows its exact flow to
   the next event: the next input spike, delivery, interval start or the end, or
   the earliest threshold crossing of any neuron before it (located per neuron on
   the exact flow and bracketed by its one interior maximum).
2. `switch`: if an interval of held input current starts now, the drive steps to it.
3. `jump`: if an input spike, or a recurrent spike's delivery, is due now, its
   weights are added to the state (`dynamics.jump`); one per iteration.
4. `fire`: if no jump is left at this instant, every neuron that reached threshold
   by its flow now (and that no jump at this instant took below it), or is at or
   above it after the jumps, fires now, is recorded and reset; with recurrence its
   spike is queued for delivery after `delay` (zero: at this same instant, so the
   cascade continues in the next iteration).

All delays are equal, so deliveries leave in the order the spikes were made: the
queue is the log of emitted spikes and a read position. The loop is a
[`checkpointed_while_loop`][]: reverse-mode differentiable with memory bounded by
its checkpoints (about `2 sqrt(max_events)` loop states without their logs), not by
the number of events. The discrete
choices (which event, which neuron) are held fixed by the derivative, and each
crossing time carries the implicit-function derivative `-dg/dp / (dg/dt)` of its
threshold condition `g = 0`: the gradient of every spike time with respect to every
weight, parameter and input spike time, through every earlier event (what
EventProp computes).
"""

import dataclasses

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._event_flow import (
    earliest,
    fire_terms,
    implicit_crossing,
    jump_at,
    locate_crossings,
)
from ._event_run import EventRun, EventSchedule, finished_run
from ._misc import tangent, vary_like, where_tree
from ._reverse import checkpointed_while_loop
from ._root_find import BracketedNewton


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
    # Zero in value, with derivatives: a neuron with a spike due at its own time
    # `t + fire_shift`, and its reset's first-order terms (`fire_terms`, taken with
    # the state and current it crossed with, before any other jump at the
    # instant). Only the body made with derivatives computes them; a run of the
    # loop carries zeros, and its checkpoints and records leave them out.
    fire_shift: Float[Array, " n_neurons"]
    reset_terms: State
    spike_times: Float[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    counts: Int[Array, "intervals n_neurons"]
    num_events: Int[Array, ""]
    buffer_full: Bool[Array, ""]
    search_failed: Bool[Array, ""]
    invalid_reset: Bool[Array, ""]


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
    - `root_finder`: the crossing search; its default tolerance is eps times the
        crossing's own time (1 to 2 ulp of it).
    - `max_spikes`: spike times stored per neuron (`>= 1`); a neuron that would
        fire once more stops the run with `buffer_full`.
    - `max_events`: the iteration budget; a run that needs more stops with
        `unfinished`.

    **Returns:** an [`EventRun`][].
    """
    # Under `jax.shard_map`, every input varies as the most varying one does (see
    # `vary_like`; in JAX 0.10 a `jax.vmap`ped `lax.cond` whose operands vary over
    # fewer mesh axes fails to trace there).
    args = (dynamics, weight, recurrent_weight, schedule, state)
    dynamics, weight, recurrent_weight, schedule, state = vary_like(args, args)
    n = weight.shape[0]
    dtype = weight.dtype
    num_inputs = schedule.input_times.shape[0]
    num_intervals = schedule.boundaries.shape[0]
    recurrent = recurrent_weight is not None
    log_size = n * max_spikes if recurrent else 1

    def make(p, derivatives: bool):
        """The loop's functions for the model, weights and schedule `p` (the
        values the loop is differentiated in). Without `derivatives` (every run of
        the loop; see [`checkpointed_while_loop`][]) the terms that are zero in
        value and carry the derivatives of event and crossing times are left out:
        the implicit derivatives of the crossings, the jumps' and resets' time
        terms (`fire_shift` and `reset_terms` stay zero, their value)."""
        dynamics, weight, recurrent_weight, schedule = p
        t_end = schedule.t_end
        inf = jnp.asarray(jnp.inf, dtype)
        delay_ = jnp.asarray(delay, dtype)
        rows = jnp.arange(n, dtype=jnp.int32)
        inf, delay_, rows = vary_like((inf, delay_, rows), p)

        def upcoming(s: EventState):
            _, t_in, t_switch = schedule.upcoming(s.next_input, s.interval_index)
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

        def switch(s: EventState) -> EventState:
            _, _, t_switch = upcoming(s)
            due = (t_switch <= s.t).astype(jnp.int32)
            return eqx.tree_at(lambda s: s.interval_index, s, s.interval_index + due)

        def jump(s: EventState) -> EventState:
            # One input spike (first) or delivery due now, if any.
            t_in, t_rec, _ = upcoming(s)
            is_input = t_in <= s.t
            is_delivery = ~is_input & (t_rec <= s.t)
            i = jnp.minimum(s.next_input, num_inputs - 1)
            amount = weight[:, schedule.input_sources[i]]
            if recurrent:
                assert recurrent_weight is not None
                d = jnp.minimum(s.next_delivery, log_size - 1)
                amount_rec = recurrent_weight[:, s.log_sources[d]]
                amount = jnp.where(is_input, amount, amount_rec)
            jumps = is_input | is_delivery
            current = schedule.currents[s.interval_index]
            amount = jnp.where(jumps, amount, 0)
            if derivatives:
                # The event's own time: equal to `s.t` in value, but its derivative is
                # that of this input (or delivered spike) time, which `s.t` need not
                # carry (a second spike at one instant, an input at time 0). Adding
                # an exact zero leaves the state as it is.
                offset = jnp.where(jumps, jnp.where(is_input, t_in, t_rec) - s.t, 0)
                offset = tangent(offset)
                y = jump_at(dynamics, s.t, s.y, amount, offset, current)
            else:
                y = dynamics.jump(s.y, amount)
            g_before, g_after = dynamics.threshold(s.y), dynamics.threshold(y)
            # A neuron whose flow reached threshold now, and that this jump takes
            # below it, does not fire now: the jumps at an instant come first (as
            # an input just before the crossing would). Its flow may cross later.
            lowered = s.pending & jumps & (g_after < jnp.minimum(g_before, 0))
            pending = s.pending & ~lowered
            # A neuron this jump lifts to threshold fires at the jump's time (not
            # at that of a later jump at this instant, which finds it there).
            lifted = jumps & (g_after >= 0) & (g_before < 0)
            newly = lifted & ~pending
            shift, terms = s.fire_shift, s.reset_terms
            if derivatives:
                # Its reset's terms are taken with the state it reached here.
                kept = ~(newly | lowered)
                shift = jnp.where(newly, offset, jnp.where(kept, shift, 0))
                new_terms = fire_terms(dynamics, s.t, y, shift, current)
                terms = where_tree(kept, terms, new_terms)
            return eqx.tree_at(
                lambda s: (
                    s.y,
                    s.next_input,
                    s.next_delivery,
                    s.pending,
                    s.fire_shift,
                    s.reset_terms,
                ),
                s,
                (
                    y,
                    s.next_input + is_input.astype(jnp.int32),
                    s.next_delivery + is_delivery.astype(jnp.int32),
                    pending,
                    shift,
                    terms,
                ),
            )

        def fire(s: EventState) -> EventState:
            # Only once no jump is left at this instant.
            t_in, t_rec, _ = upcoming(s)
            settled = jnp.minimum(t_in, t_rec) > s.t
            spiking = fire_due(s) & settled
            full = jnp.any(spiking & (s.num_spikes >= max_spikes))
            spiking = spiking & ~full
            col = jnp.minimum(s.num_spikes, max_spikes - 1)
            old = s.spike_times[rows, col]
            # Equal to `s.t`; each neuron's derivative is that of its own crossing.
            times = s.t + s.fire_shift if derivatives else jnp.broadcast_to(s.t, (n,))
            spike_times = s.spike_times.at[rows, col].set(
                jnp.where(spiking, times, old)
            )
            # The state is that at the clock `s.t`; a neuron firing at its own time
            # `s.t + shift` (equal in value) is reset there, with the state and
            # current it crossed with (its `reset_terms`: before the other jumps
            # and any interval start at this instant).
            reset = dynamics.reset(s.y)
            shift, terms = s.fire_shift, s.reset_terms
            if derivatives:
                reset = jax.tree.map(jnp.add, reset, terms)
                shift = jnp.where(settled, 0, shift)
                terms = where_tree(settled, jax.tree.map(jnp.zeros_like, terms), terms)
            y = jax.tree.map(lambda a, b: jnp.where(spiking, a, b), reset, s.y)
            # A reset at or above threshold would fire again at once: the run stops.
            bad_reset = jnp.any(spiking & (dynamics.threshold(reset) >= 0))
            counts = s.counts.at[s.interval_index].add(spiking.astype(s.counts.dtype))
            num_spikes = s.num_spikes + spiking.astype(jnp.int32)
            log_times, log_sources, num_logged = (
                s.log_times,
                s.log_sources,
                s.num_logged,
            )
            if recurrent:
                # Queue the spikes in neuron order (their delivery order at one instant).
                position = s.num_logged + jnp.cumsum(spiking, dtype=jnp.int32) - 1
                position = jnp.where(spiking, position, log_size)  # dropped
                log_times = log_times.at[position].set(times, mode="drop")
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
                    s.fire_shift,
                    s.reset_terms,
                    s.buffer_full,
                    s.invalid_reset,
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
                    s.pending & ~settled,
                    shift,
                    terms,
                    s.buffer_full | full,
                    s.invalid_reset | bad_reset,
                ),
            )

        def advance(s: EventState) -> EventState:
            t_in, t_rec, t_switch = upcoming(s)
            t_next = earliest(t_end, t_switch, t_in, t_rec)
            current = schedule.currents[s.interval_index]
            # Which neurons cross before `t_next`, and when: decisions on constants.
            # (No neuron is at threshold here: it would have fired.)
            span_c = lax.stop_gradient(t_next - s.t)
            span = jnp.broadcast_to(span_c, (n,))
            crosses, found, converged, margin = locate_crossings(
                dynamics, s.y, current, span, True, root_finder, s.t
            )
            lane = jnp.argmin(found)
            first = found[lane]
            any_cross = jnp.any(crosses)
            # Implicit-function derivatives of the crossings at the earliest time: the
            # value is the located time, the derivative that of the root of
            # g(h; y, p) = 0, for each neuron crossing there (ties fire together, each
            # with its own derivative).
            to_crossing = any_cross & (first < span_c)
            # Each crossing neuron's own root; the clock's next stop for the others
            # (one that is at threshold there by rounding crosses there).
            h_stop = jnp.where(to_crossing, first, span_c)
            h_own = jnp.where(crosses, found, h_stop)
            if derivatives:
                h_cross = implicit_crossing(dynamics, s.y, current, h_own, margin)
            else:
                h_cross = h_own
            t_new = jnp.where(to_crossing, s.t + h_cross[lane], t_next)
            h_new = t_new - s.t
            y = dynamics.exact_flow(s.y, current, jnp.broadcast_to(h_new, (n,)))
            # Neurons crossing at the earliest time fire now; so do those whose own
            # crossing is later (or not found before the next event) only by
            # rounding: already at threshold here.
            at_threshold = lax.stop_gradient(dynamics.threshold(y)) >= 0
            pending = (crosses & (found == first)) | at_threshold
            # Zero in value, with the derivative of each firing neuron's own crossing
            # time minus that of the clock: `fire` uses it for that neuron's spike.
            # (Also for a crossing located at the next event itself, where the
            # clock takes the event's time and derivative.)
            # Its reset's terms are taken with the state it reached here.
            shift, terms = s.fire_shift, s.reset_terms  # (zero: none was due)
            if derivatives:
                shift = jnp.where(pending, tangent(h_cross) - tangent(h_new), 0)
                terms = fire_terms(dynamics, t_new, y, shift, current)
            failed = jnp.any(crosses & ~converged)
            return eqx.tree_at(
                lambda s: (
                    s.t,
                    s.y,
                    s.pending,
                    s.fire_shift,
                    s.reset_terms,
                    s.search_failed,
                ),
                s,
                (t_new, y, pending, shift, terms, s.search_failed | failed),
            )

        def active(s: EventState):
            t_in, t_rec, t_switch = upcoming(s)
            due = (jnp.minimum(jnp.minimum(t_in, t_rec), t_switch) <= s.t) | jnp.any(
                fire_due(s)
            )
            return (s.t < t_end) | due

        def cond_fun(s: EventState):
            return active(s) & ~s.buffer_full & ~s.search_failed & ~s.invalid_reset

        def body_fun(s: EventState) -> EventState:
            # Advance to the next event unless one is due now; then at that instant
            # start the interval, add one jump, and fire once no jump is left. An
            # input spike or a crossing thus takes one iteration.
            t_in, t_rec, t_switch = upcoming(s)
            due = jnp.minimum(jnp.minimum(t_in, t_rec), t_switch) <= s.t
            s = lax.cond(due | jnp.any(fire_due(s)), lambda s: s, advance, s)
            s = fire(jump(switch(s)))
            return eqx.tree_at(lambda s: s.num_events, s, s.num_events + 1)

        return cond_fun, body_fun, active

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
        fire_shift=jnp.zeros((n,), dtype),
        reset_terms=jax.tree.map(jnp.zeros_like, state),
        spike_times=jnp.full((n, max_spikes), jnp.inf, dtype),
        num_spikes=jnp.zeros((n,), jnp.int32),
        counts=jnp.zeros((num_intervals, n), jnp.int32),
        num_events=zero,
        buffer_full=jnp.zeros((), bool),
        search_failed=jnp.zeros((), bool),
        invalid_reset=jnp.zeros((), bool),
    )
    # (Under `jax.shard_map`, the carry varies as the inputs do.)
    init = vary_like(init, dynamics, weight, recurrent_weight, schedule, state)

    # The spike buffer and the queue are logs the loop only appends to: the
    # backward pass's checkpoints and records keep their read positions, not their
    # contents, and take the contents written by then from the loop's end state.
    # They do not keep what is zero in value either (`fire_shift`, `reset_terms`).
    def strip(s: EventState) -> EventState:
        return dataclasses.replace(
            s,
            spike_times=None,
            log_times=None,
            log_sources=None,
            fire_shift=None,
            reset_terms=None,
        )

    def restore(s: EventState, end: EventState) -> EventState:
        written = jnp.arange(max_spikes) < s.num_spikes[:, None]
        logged = jnp.arange(log_size) < s.num_logged
        return dataclasses.replace(
            s,
            spike_times=jnp.where(written, end.spike_times, jnp.inf),
            log_times=jnp.where(logged, end.log_times, jnp.inf),
            log_sources=jnp.where(logged, end.log_sources, 0),
            fire_shift=jnp.zeros_like(end.fire_shift),
            reset_terms=jax.tree.map(jnp.zeros_like, end.reset_terms),
        )

    params = (dynamics, weight, recurrent_weight, schedule)
    final = checkpointed_while_loop(
        lambda p, derivatives: make(p, derivatives)[:2],
        params,
        init,
        max_events,
        strip=strip,
        restore=restore,
    )
    return finished_run(final, make(params, False)[2](final))
