"""The interval scan: a run is a schedule of intervals of held input, walked in
order by an integrator."""

import abc
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._custom_types import State
from ._dynamics import AbstractDynamics
from ._misc import all_finite, vary_like
from ._records import Counters, IntervalOutcome, RawRun, SpikeBuffer


class AbstractIntegrator(eqx.Module):
    """Advances a population through one interval of held input: every neuron from
    the interval start to its end, with every spike inside located and reset.

    Integrators are static configuration (solver, step controller, root finder, step
    budget); the model, the input and the state are arguments.
    """

    max_steps: AbstractVar[int]
    # Whether a large folded batch is run tile by tile (see `_fold.py`).
    tiled: ClassVar[bool] = False

    def for_tile(self, dynamics: AbstractDynamics) -> "AbstractIntegrator":
        """The integrator that runs a tile of the population of `dynamics` (see
        `tiled`) as it would run within the whole: by default this one."""
        del dynamics
        return self

    @abc.abstractmethod
    def prepare(self, dynamics: AbstractDynamics, interval) -> PyTree[Array]:
        """Quantities fixed by the interval length (computed once when every interval
        has the same length)."""

    @abc.abstractmethod
    def zero_counters(self, n: int) -> Counters:
        """The counters this integrator keeps, at zero, for `n` neurons."""

    def conditions(self, dynamics: AbstractDynamics, interval) -> dict[str, Array]:
        """Named run-time conditions the integrator needs (see
        [`AbstractDynamics.constraints`][]); none by default."""
        del dynamics, interval
        return {}

    def new_buffer(
        self, state: State, max_spikes: int, dtype, uniform: bool
    ) -> PyTree[Array]:
        """The spike record that [`AbstractIntegrator.interval`][] appends to,
        empty, for a run from `state` (`uniform`: all its intervals have the same
        length). By default a [`SpikeBuffer`][] of the spike times themselves."""
        del uniform
        n_neurons = jax.tree.leaves(state)[0].shape[0]
        return SpikeBuffer.empty(n_neurons, max_spikes, dtype)

    def spike_times(
        self, dynamics: AbstractDynamics, buffer: PyTree[Array], state: State, interval
    ) -> tuple[Float[Array, "n_neurons max_spikes"], Int[Array, " n_neurons"]]:
        """From the record a run from `state` over intervals of length `interval`
        (a scalar, or one per interval) filled: the spike times `(n_neurons,
        max_spikes)`, ascending, `+inf` padded, and every neuron's spike count."""
        del dynamics, state, interval
        assert isinstance(buffer, SpikeBuffer)
        return buffer.times, buffer.num

    def recorded_crossings(self, buffer: PyTree[Array]) -> PyTree[Array] | None:
        """What the record `buffer` holds of each recorded spike beyond its time
        (for a backward pass that replays the run), or None: by default, nothing."""
        del buffer
        return None

    @abc.abstractmethod
    def interval(
        self,
        dynamics: AbstractDynamics,
        constants: PyTree[Array],
        y: State,
        current,
        t_start,
        interval,
        buffer: PyTree[Array] | None,
    ) -> IntervalOutcome:
        """Integrate one interval of length `interval` (ms) starting at `t_start`
        (ms from the start of the run), appending its spikes to `buffer` (see
        [`AbstractIntegrator.new_buffer`][]; None: no spike times are recorded)."""

    def accumulate(
        self,
        dynamics: AbstractDynamics,
        constants: PyTree[Array],
        y: State,
        current,
        t_start,
        interval,
        buffer: PyTree[Array] | None,
        counters: Counters,
        exhausted: Bool[Array, " n_neurons"],
    ) -> IntervalOutcome:
        """[`AbstractIntegrator.interval`][] as a step of a run whose counters and
        step-budget flags so far are `counters` and `exhausted`: the outcome's are
        the run's, with the interval's added. (An integrator may update them only
        where they change, see [`ClosedFormWalk`][].)"""
        out = self.interval(dynamics, constants, y, current, t_start, interval, buffer)
        return eqx.tree_at(
            lambda o: (o.counters, o.exhausted),
            out,
            (counters + out.counters, exhausted | out.exhausted),
        )


class RunConfig(eqx.Module):
    """Static settings of one run (hashable). `counts_over_currents`: a folded
    batch's counts may be written over its batch-major currents (see
    [`run_batch_major`][]); False where the currents are computed in time-major
    order (see [`run_currents`][]), which writing over them would undo."""

    max_spikes: int | None = eqx.field(static=True)
    keep_interval_states: bool = eqx.field(static=True)
    counts_over_currents: bool = eqx.field(static=True, default=True)


def interval_starts(interval, num_intervals: int):
    """Start time (ms) of every interval: `k * interval` for a scalar length, the
    running sum of the lengths for one length per interval."""
    if jnp.ndim(interval) == 0:
        return jnp.arange(num_intervals).astype(interval.dtype) * interval
    return jnp.concatenate([jnp.zeros((1,), interval.dtype), jnp.cumsum(interval)[:-1]])


def run_intervals(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents: Float[Array, "time n_neurons"],
    interval,
    state: State,
    cfg: RunConfig,
) -> RawRun:
    """The forward pass: a scan over the intervals, the integrator inside each.

    `interval` is a scalar (every interval has this length, ms) or one length per
    interval. (A batch folded by `run_folded`, `_fold.py`, runs through
    [`run_population`][] with its counts written batch-major.)
    """
    raw = run_population(integrator, dynamics, currents, interval, state, cfg)
    return float_counts(raw, currents.dtype)


def float_counts(raw: RawRun, dtype) -> RawRun:
    """`raw` with its counts (int32 or float, see [`run_population`][]) in
    `dtype`."""
    return eqx.tree_at(lambda r: r.counts, raw, raw.counts.astype(dtype))


def stacked_zeros(
    state: State, size: int, num_intervals: int, n_each: int, cfg, dtype, counts=None
):
    """Batch-major counts (in `dtype`: int32, or a float dtype whose integers
    they are) and (if kept) interval states, `(B, T, n, ...)`, zero; the counts
    start as `counts` where given (an array of that shape, in `dtype`, whose every
    entry the run overwrites)."""

    def empty(rest, dtype):
        return jnp.zeros((size, num_intervals, n_each) + rest, dtype)

    states = None
    if cfg.keep_interval_states:
        states = jax.tree.map(lambda x: empty(jnp.shape(x)[1:], x.dtype), state)
    return empty((), dtype) if counts is None else counts.astype(dtype), states


def run_population(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents,
    interval,
    state: State,
    cfg: RunConfig,
    batch=None,
    into=None,
    first_sample=None,
) -> RawRun:
    """[`run_intervals`][] on one population, whose currents are `(T, n_neurons)`
    (time-major); its counts are int32 and `(T, n_neurons)`. With `batch` = `(B, n)`
    (a batch folded by `run_folded`, its `B * n` neurons run by run), the counts
    and interval states are written batch-major, `(B, T, n)`, in place at `[:, k]`,
    into `into` (the whole batch's, from [`stacked_zeros`][], counts in its dtype)
    and come back there. With `first_sample` (a tile of the batch), `currents` and
    `into` are the whole batch's: the run is that of its `B` samples from
    `first_sample` on, and reads their lanes of each interval's row (a tile of
    its own would be a copy)."""
    dtype = currents.dtype
    batch_major = batch is not None
    num_intervals, n_neurons = currents.shape
    if batch_major:
        size, n_each = batch
        n_neurons = size * n_each
        assert into is not None
        assert first_sample is not None or n_neurons == currents.shape[1]
    buffer = None
    uniform = jnp.ndim(interval) == 0
    if cfg.max_spikes is not None:
        buffer = integrator.new_buffer(state, cfg.max_spikes, dtype, uniform)
    constants = integrator.prepare(dynamics, interval) if uniform else None
    lengths = jnp.broadcast_to(interval, (num_intervals,))
    starts = interval_starts(interval, num_intervals)
    zero = jnp.zeros((), jnp.int32)
    first = zero if first_sample is None else first_sample

    def one_interval(carry, xs):
        y, buffer, counters, exhausted, root_fail, bad, stacked, total = carry
        t_start, length, current, k = xs
        if first_sample is not None:  # the tile's lanes of the row
            current = lax.dynamic_slice_in_dim(current, first * n_each, n_neurons)
        consts = constants if uniform else integrator.prepare(dynamics, length)
        out = integrator.accumulate(
            dynamics, consts, y, current, t_start, length, buffer, counters, exhausted
        )
        ys = (out.count.astype(jnp.int32), out.y if cfg.keep_interval_states else None)
        if total is not None:
            total = total + ys[0]
        if batch_major:  # written in place at [first:first + size, k]

            def put(acc, x):
                if num_intervals == 0:  # traced, never run: nothing to write into
                    return acc
                x = x.reshape((size, 1, n_each) + x.shape[1:]).astype(acc.dtype)
                at = (first, k.astype(jnp.int32)) + (zero,) * (x.ndim - 2)
                return lax.dynamic_update_slice(acc, x, at)

            stacked, ys = jax.tree.map(put, stacked, ys), (None, None)
        carry = (
            out.y,
            out.buffer,
            out.counters,
            out.exhausted,
            root_fail | out.root_fail,
            (bad | ~all_finite(out.y)) if cfg.keep_interval_states else bad,
            stacked,
            total,
        )
        return carry, ys

    no = jnp.zeros((n_neurons,), bool)
    # Batch-major: counts and interval states, (B, T, n), written in place.
    stacked: Any = into if batch_major else (None, None)
    xs = (starts, lengths, currents, jnp.arange(num_intervals) if batch_major else None)
    # Batch-major counts may be floats (written over the currents): without a
    # spike record, each neuron's spike total is summed in the scan, exactly.
    total = None
    if batch_major and buffer is None:
        total = jnp.zeros((n_neurons,), jnp.int32)
    init = (state, buffer, integrator.zero_counters(n_neurons), no, no, no, stacked)
    init = init + (total,)
    # (Under `jax.shard_map`, the carry varies as the inputs do.)
    init = vary_like(init, xs, state, dynamics, integrator, interval)
    (y, buffer, counters, exhausted, root_fail, bad, stacked, total), ys = lax.scan(
        one_interval, init, xs
    )
    counts, states = stacked if batch_major else ys
    counts = cast(Array, counts)
    if not cfg.keep_interval_states:
        bad = ~all_finite(y)
    if buffer is None:
        spike_times = jnp.zeros((n_neurons, 0), dtype)
        if total is not None:
            # (In the dtype of the sum below: int64 where 64-bit types are on.)
            num_spikes = total.astype(jnp.sum(total[:0]).dtype)
        else:
            num_spikes = jnp.sum(counts, axis=-2).reshape(-1)
    else:
        spike_times, num_spikes = integrator.spike_times(
            dynamics, buffer, state, interval
        )
    if spike_times.shape[1] == 0:
        # (Empty, but made from the currents rather than from a shape: under an
        # outer `vmap` a constant stays unbatched, while a derivative rule's spike
        # times, from the same run, are batched; JAX rejects the mismatch.)
        spike_times = spike_times + currents[:1, :1].T[:, :0]
    return RawRun(
        counts,
        spike_times,
        num_spikes,
        y,
        states,
        counters,
        exhausted,
        root_fail,
        bad,
        None if buffer is None else integrator.recorded_crossings(buffer),
    )
