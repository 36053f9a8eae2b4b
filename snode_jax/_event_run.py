"""What drives an event-driven run and what it returns, for both engines
([`simulate_events`][], [`simulate_feedforward`][]): the schedule of input spikes and
held currents, the run's outcome, and the default event budgets."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import State


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

    def upcoming(self, next_input, interval):
        """For the read position `next_input` and the current `interval` (scalars,
        or one per neuron): the clamped input index, the next input spike's time
        and the next interval's start (`inf` where none is left)."""
        inf = jnp.asarray(jnp.inf, self.input_times.dtype)
        num_inputs = self.input_times.shape[0]
        num_intervals = self.boundaries.shape[0]
        i = jnp.minimum(next_input, num_inputs - 1)
        t_in = jnp.where(next_input < num_inputs, self.input_times[i], inf)
        k = jnp.minimum(interval + 1, num_intervals - 1)
        t_switch = jnp.where(interval + 1 < num_intervals, self.boundaries[k], inf)
        return i, t_in, t_switch


class EventRun(eqx.Module):
    """What the engine returns (see [`simulate_events`][])."""

    spike_times: Float[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    counts: Int[Array, "intervals n_neurons"]
    final_state: State
    num_events: Int[Array, ""]
    buffer_full: Bool[Array, ""]
    search_failed: Bool[Array, ""]
    invalid_reset: Bool[Array, ""]
    unfinished: Bool[Array, ""]


def finished_run(final, active) -> EventRun:
    """The [`EventRun`][] of either engine's final loop carry; `active` says whether
    the loop still had work when it stopped (only a spent budget leaves it so)."""
    stopped = final.buffer_full | final.search_failed | final.invalid_reset
    unfinished = active & ~stopped
    return EventRun(
        spike_times=final.spike_times,
        num_spikes=final.num_spikes,
        counts=final.counts,
        final_state=final.y,
        num_events=final.num_events,
        buffer_full=final.buffer_full,
        search_failed=final.search_failed,
        invalid_reset=final.invalid_reset,
        unfinished=unfinished,
    )


def default_max_events(num_inputs: int, num_intervals: int, n: int, max_spikes: int):
    """An event budget that a run can exhaust only by overflowing its spike buffer:
    each input spike, interval start and delivery is one jump or switch, each spike
    instant one fire, and each of those follows at most one advance."""
    return 2 * (num_inputs + num_intervals + 2 * n * max_spikes) + 4


def default_max_events_feedforward(
    num_inputs: int, num_intervals: int, n: int, max_spikes: int
):
    """The same bound for [`simulate_feedforward`][] (no recurrence), whose
    iterations are one per input event or interval start (`at_event`, the last at
    `t_end`), plus one per round of crossings between two of them. The rounds of one
    stretch between events are as many as the most spikes of one neuron there, so
    over the run at most `min(n, stretches) * max_spikes`, one more overflowing the
    buffer."""
    stretches = num_inputs + num_intervals + 1
    return stretches + min(n, stretches) * max_spikes + 2
