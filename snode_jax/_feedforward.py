"""The event-driven engine for a population without recurrence: every neuron keeps
its own clock between the events that drive it.

Without recurrent weights the neurons of a population do not affect one another:
only the input spikes and the held input currents, which reach all of them at known
times, couple their clocks. So the population is advanced from one input event to
the next, and inside that stretch every neuron walks through its own threshold
crossings (located on the exact flow and bracketed by its one interior maximum),
firing and resetting at each, all neurons at once. Each iteration of the loop does:

1. `advance`: every neuron behind the next input event goes to its next crossing
   before that event, fires there and resets, or, if it has none, to the event.
2. `at the event`, once every neuron is there: the interval of held current starts,
   one input spike's weights are added (`dynamics.jump`), and, once no jump is left
   at that instant, every neuron at or above threshold fires (the instant rule of
   [`simulate_events`][], whose results this engine reproduces).

An iteration thus costs one crossing search (over the neurons that cross, in compact
subsets), and a run takes
about as many iterations as there are input events plus the largest number of
spikes of one neuron between two of them, instead of one per spike of any neuron.
The loop decides and computes on values only (a plain `lax` while loop). It
records, for every spike, whether it was a crossing or fired at an event instant,
and the gradient comes from replaying those records ([`with_replay_gradient`][]):
each crossing time with the implicit-function derivative of its threshold
condition, each instant spike with the time of the input that lifted it, the same
gradient as that of [`simulate_events`][].
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._event_flow import earliest, locate_crossings
from ._event_run import EventRun, EventSchedule, finished_run
from ._misc import vary_like
from ._replay import with_replay_gradient
from ._root_find import BracketedNewton


class FeedforwardState(eqx.Module):
    """The loop carry."""

    t: Float[Array, ""]
    tau: Float[Array, " n_neurons"]
    y: State
    interval_index: Int[Array, ""]
    next_input: Int[Array, ""]
    spike_times: Float[Array, "n_neurons max_spikes"]
    instant: Bool[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    counts: Int[Array, "intervals n_neurons"]
    num_events: Int[Array, ""]
    buffer_full: Bool[Array, ""]
    search_failed: Bool[Array, ""]
    invalid_reset: Bool[Array, ""]


def simulate_feedforward(
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    schedule: EventSchedule,
    state: State,
    *,
    root_finder: BracketedNewton,
    max_spikes: int,
    max_events: int,
    silence: bool = False,
) -> EventRun:
    """Run a population without recurrence over `[0, schedule.t_end]`.

    **Arguments:** as [`simulate_events`][] without `recurrent_weight` and `delay`.
    `max_events` bounds the iterations (one per input event or interval start,
    plus one per round of crossings between two of them). `silence`: a neuron that
    has fired `max_spikes` times fires no more (its membrane keeps integrating,
    without threshold), instead of stopping the run.

    **Returns:** an [`EventRun`][]. Without `silence`, a neuron that would fire once
    more than `max_spikes` stops the run with `buffer_full`; the other neurons may
    then have been advanced past that time.
    """
    # The loop decides and computes on values only; derivatives come from the
    # replay of its records (`with_replay_gradient`).
    args = (dynamics, weight, schedule, state)
    dynamics, weight, schedule, state = jax.tree.map(
        lambda x: lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, args
    )
    # Under `jax.shard_map`, every input varies as the most varying one does (see
    # `vary_like`; in JAX 0.10 a `jax.vmap`ped `lax.cond` whose operands vary over
    # fewer mesh axes fails to trace there).
    dynamics, weight, schedule, state = vary_like(
        (dynamics, weight, schedule, state), args
    )
    n = weight.shape[0]
    dtype = weight.dtype
    t_end = schedule.t_end
    num_inputs = schedule.input_times.shape[0]
    num_intervals = schedule.boundaries.shape[0]
    rows = vary_like(jnp.arange(n, dtype=jnp.int32), args)

    def upcoming(s: FeedforwardState):
        _, t_in, t_switch = schedule.upcoming(s.next_input, s.interval_index)
        return t_in, t_switch

    def spent(s: FeedforwardState):
        # With `silence`, a neuron that has fired `max_spikes` times fires no more.
        if silence:
            return s.num_spikes >= max_spikes
        return jnp.zeros((n,), bool)

    def fire_due(s: FeedforwardState):
        return (dynamics.threshold(s.y) >= 0) & ~spent(s)

    def record(s: FeedforwardState, spiking, times, y_fired, instant: bool):
        """Record `spiking` neurons at `times` with post-spike state `y_fired`
        (`instant`: fired at an event instant, not at a crossing); a neuron with a
        full buffer stops the run instead (with `silence` none is asked to: `spent`
        neurons neither cross nor fire)."""
        full = jnp.any(spiking & (s.num_spikes >= max_spikes))
        spiking = spiking & ~full
        # A reset at or above threshold would fire again at once: the run stops.
        bad_reset = jnp.any(spiking & (dynamics.threshold(y_fired) >= 0))
        col = jnp.minimum(s.num_spikes, max_spikes - 1)
        old = s.spike_times[rows, col]
        spike_times = s.spike_times.at[rows, col].set(jnp.where(spiking, times, old))
        kinds = s.instant.at[rows, col].set(
            jnp.where(spiking, instant, s.instant[rows, col])
        )
        y = jax.tree.map(lambda a, b: jnp.where(spiking, a, b), y_fired, s.y)
        counts = s.counts.at[s.interval_index].add(spiking.astype(s.counts.dtype))
        return eqx.tree_at(
            lambda s: (
                s.y,
                s.spike_times,
                s.instant,
                s.num_spikes,
                s.counts,
                s.buffer_full,
                s.invalid_reset,
            ),
            s,
            (
                y,
                spike_times,
                kinds,
                s.num_spikes + spiking.astype(jnp.int32),
                counts,
                s.buffer_full | full,
                s.invalid_reset | bad_reset,
            ),
        )

    def fire_at_instant(s: FeedforwardState) -> FeedforwardState:
        # Every neuron is at the clock `s.t`. Once no jump is left at this instant,
        # those at or above threshold fire, each at its own time `s.t + shift`
        # (equal in value; see `simulate_events`).
        t_in, _ = upcoming(s)
        spiking = fire_due(s) & (t_in > s.t)
        return record(s, spiking, s.t, dynamics.reset(s.y), True)

    def at_event(s: FeedforwardState, t_next) -> FeedforwardState:
        # Every neuron has reached `t_next`: start the interval, add one jump and
        # fire once settled.
        s = eqx.tree_at(lambda s: s.t, s, jnp.maximum(t_next, s.t))
        t_in, t_switch = upcoming(s)
        switch_due = (t_switch <= s.t).astype(jnp.int32)
        s = eqx.tree_at(lambda s: s.interval_index, s, s.interval_index + switch_due)
        is_input = t_in <= s.t
        i = jnp.minimum(s.next_input, num_inputs - 1)
        amount = jnp.where(is_input, weight[:, schedule.input_sources[i]], 0)
        s = eqx.tree_at(
            lambda s: (s.y, s.next_input),
            s,
            (dynamics.jump(s.y, amount), s.next_input + is_input.astype(jnp.int32)),
        )
        return fire_at_instant(s)

    def advance(s: FeedforwardState, t_next):
        # Every neuron behind `t_next` goes to its first crossing before it (and
        # fires there) or to `t_next`.
        current = schedule.currents[s.interval_index]
        behind = s.tau < t_next
        span = jnp.where(behind, t_next - s.tau, 0)
        crosses, found, converged, _ = locate_crossings(
            dynamics, s.y, current, span, behind & ~spent(s), root_finder, s.tau
        )
        # A crossing at `t_next` itself is left to the instant there (after the
        # jumps at that instant), as in `simulate_events`.
        crossing = crosses & (found < span)
        h = jnp.where(crossing, found, span)
        y_flow = dynamics.exact_flow(s.y, current, h)
        y_flow = jax.tree.map(lambda a, b: jnp.where(behind, a, b), y_flow, s.y)
        tau = jnp.where(crossing, s.tau + found, jnp.where(behind, t_next, s.tau))
        s = eqx.tree_at(
            lambda s: (s.y, s.tau, s.search_failed),
            s,
            (y_flow, tau, s.search_failed | jnp.any(crosses & ~converged)),
        )
        s = record(s, crossing, tau, dynamics.reset(s.y), False)
        return s, jnp.any(crossing)

    def active(s: FeedforwardState):
        t_in, t_switch = upcoming(s)
        due = (jnp.minimum(t_in, t_switch) <= s.t) | jnp.any(fire_due(s))
        return (s.t < t_end) | due

    def cond_fun(s: FeedforwardState):
        return active(s) & ~s.buffer_full & ~s.search_failed & ~s.invalid_reset

    def body_fun(s: FeedforwardState) -> FeedforwardState:
        t_in, t_switch = upcoming(s)
        t_next = earliest(t_end, t_switch, t_in)
        s, crossed = advance(s, t_next)
        # Once no neuron crossed on the way, all are at `t_next`.
        s = lax.cond(
            crossed | s.buffer_full | s.invalid_reset,
            lambda s: s,
            lambda s: at_event(s, t_next),
            s,
        )
        return eqx.tree_at(lambda s: s.num_events, s, s.num_events + 1)

    zero = jnp.zeros((), jnp.int32)
    t0 = jnp.zeros((), dtype)
    init = FeedforwardState(
        t=t0,
        tau=jnp.zeros((n,), dtype),
        y=state,
        interval_index=zero,
        next_input=zero,
        spike_times=jnp.full((n, max_spikes), jnp.inf, dtype),
        instant=jnp.zeros((n, max_spikes), bool),
        num_spikes=jnp.zeros((n,), jnp.int32),
        counts=jnp.zeros((num_intervals, n), jnp.int32),
        num_events=zero,
        buffer_full=jnp.zeros((), bool),
        search_failed=jnp.zeros((), bool),
        invalid_reset=jnp.zeros((), bool),
    )
    # (Under `jax.shard_map`, the carry varies as the inputs do.)
    init = vary_like(init, dynamics, weight, schedule, state)
    # A neuron starting at or above threshold fires at time 0 (after any input at
    # time 0, which the loop delivers first).
    init = fire_at_instant(init)
    # (Each iteration counts itself in `num_events`. Under `jax.shard_map` each
    # device runs its own number of iterations.)
    final = lax.while_loop(
        lambda s: (s.num_events < max_events) & cond_fun(s), body_fun, init
    )
    run = finished_run(final, active(final))
    spike_times, final_state = with_replay_gradient(
        args,
        (run.spike_times, run.final_state),
        (final.spike_times, final.instant, final.num_spikes),
    )
    return eqx.tree_at(
        lambda r: (r.spike_times, r.final_state), run, (spike_times, final_state)
    )
