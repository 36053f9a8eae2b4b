"""Records shared by the integrators: the spike buffer, step counters, and what one
interval and one whole run return."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._custom_types import State

# Scatters into fewer entries than this index the flattened array (an int32 index).
FLAT_INDEX_LIMIT = 2**31 - 1


class SpikeBuffer(eqx.Module):
    """Spike times recorded in order of occurrence, `+inf` where unused.

    **Fields:**

    - `times`: `(n_neurons, max_spikes)` spike times (ms from the start of the run).
    - `num`: `(n_neurons,)` spikes seen so far (may exceed `max_spikes`; the excess is
        counted, not stored, and reported by the caller).
    """

    times: Float[Array, "n_neurons max_spikes"]
    num: Int[Array, " n_neurons"]

    @staticmethod
    def empty(n_neurons: int, max_spikes: int, dtype) -> "SpikeBuffer":
        times = jnp.full((n_neurons, max_spikes), jnp.inf, dtype)
        return SpikeBuffer(times, jnp.zeros((n_neurons,), jnp.int32))

    def record(self, mask, times) -> "SpikeBuffer":
        """Append `times` for the neurons where `mask` holds."""
        n, cap = self.times.shape
        if cap == 0:
            return SpikeBuffer(self.times, self.num + mask)
        keep = mask & (self.num < cap)
        rows = jnp.arange(n, dtype=jnp.int32)
        new_times = set_entries(self.times, rows, self.num, keep, times)
        return SpikeBuffer(new_times, self.num + mask)


def set_entries(array, rows, cols, keep, values, leading: int = 0, reduce=None):
    """`array` with `array[..., rows[i], cols[i], ...] = values[..., i, ...]` wherever
    `keep[i]` holds (indices in range there, and distinct); the other entries are
    dropped. `rows` and `cols` index the axes after the first `leading` ones; those
    leading axes and the trailing ones are written whole. With `reduce="max"`, each
    entry becomes the larger of the two (the indices need not be distinct)."""
    lead = array.shape[:leading]
    d0, d1 = array.shape[leading : leading + 2]
    rest = array.shape[leading + 2 :]
    whole = (slice(None),) * leading
    write = lambda at: at.set if reduce is None else getattr(at, reduce)
    if d0 * d1 < FLAT_INDEX_LIMIT:
        # One index per entry into the flattened (row, column) plane: XLA's CPU
        # scatter takes about half as long with these as with (row, column) pairs.
        index = jnp.where(keep, rows * d1 + cols, d0 * d1)  # out of range: dropped
        flat = array.reshape(lead + (d0 * d1,) + rest)
        flat = write(flat.at[whole + (index,)])(values, mode="drop")
        return flat.reshape(array.shape)
    rows = jnp.where(keep, rows, d0)  # out of range: dropped
    return write(array.at[whole + (rows, cols)])(values, mode="drop")


def take_entries(array, rows, cols, keep=None):
    """`array[rows, cols]` of a 2-D `array` (indices in range), zero where `keep`
    is False, through one index per entry into the flattened array where that fits
    an int32 (as [`set_entries`][]). The transpose, a scatter-add, then takes one
    index per entry too, and drops the entries that are not kept."""
    d0, d1 = array.shape
    if d0 * d1 >= FLAT_INDEX_LIMIT:
        out = array[rows, cols]
        return out if keep is None else jnp.where(keep, out, 0)
    index = rows * d1 + cols
    if keep is None:
        return array.reshape(-1)[index]
    index = jnp.where(keep, index, d0 * d1)  # out of range: zero, and dropped
    return array.reshape(-1).at[index].get(mode="fill", fill_value=0)


class Counters(eqx.Module):
    """Per-neuron integer counters of the solver's work (see `Solution.stats`).
    A counter an integrator cannot increment is `None` (zero), so that the scan
    carries no sums of zeros."""

    num_steps: Int[Array, " n_neurons"]
    num_crossings: Int[Array, " n_neurons"]
    num_rejected_steps: Int[Array, " n_neurons"] | None = None
    num_dt_min_steps: Int[Array, " n_neurons"] | None = None
    num_stalled_steps: Int[Array, " n_neurons"] | None = None
    num_imprecise_intervals: Int[Array, " n_neurons"] | None = None
    num_invalid_resets: Int[Array, " n_neurons"] | None = None

    def __add__(self, other: "Counters") -> "Counters":
        return jax.tree.map(jnp.add, self, other)


class IntervalOutcome(eqx.Module):
    """What an integrator returns for one interval of held input.

    **Fields:**

    - `y`: the state at the end of the interval.
    - `count`: spikes per neuron in the interval.
    - `buffer`: the integrator's spike record with this interval's spikes
        appended (or `None`).
    - `counters`: this interval's solver work.
    - `exhausted`: per neuron, the step budget ran out before the interval end.
    - `root_fail`: per neuron, a crossing search did not converge.
    """

    y: State
    count: Int[Array, " n_neurons"]
    buffer: PyTree[Array] | None
    counters: Counters
    exhausted: Bool[Array, " n_neurons"]
    root_fail: Bool[Array, " n_neurons"]


class RawRun(eqx.Module):
    """What the interval scan returns for a whole run (before the `Solution`)."""

    counts: Float[Array, "time n_neurons"]  # exact integer values in the float dtype
    spike_times: Float[Array, "n_neurons max_spikes"]
    num_spikes: Int[Array, " n_neurons"]
    final_state: State
    interval_states: State | None
    counters: Counters
    exhausted: Bool[Array, " n_neurons"]  # the step budget ran out in some interval
    root_fail: Bool[Array, " n_neurons"]  # a crossing search did not converge
    # A state entry (final, or of some interval end when they are kept) is NaN or
    # inf. Checked during the run, so that interval states the caller does not use
    # need not be stored for the check.
    nonfinite_state: Bool[Array, " n_neurons"] | None = None
    # What the integrator found at each recorded spike, where it keeps that (see
    # `AbstractIntegrator.recorded_crossings`): leaves `(n_neurons, max_spikes, ...)`.
    crossings: PyTree[Array] | None = None
