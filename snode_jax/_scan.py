"""The interval scan: a run is a schedule of intervals of held input, walked in
order by an integrator; and the batching rule that folds a vmapped batch into the
neuron axis."""

import abc
from typing import Any, ClassVar, cast

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array, Float, Int, PyTree

from ._custom_types import State
from ._dynamics import AbstractDynamics
from ._misc import all_finite
from ._records import Counters, IntervalOutcome, RawRun, SpikeBuffer


class AbstractIntegrator(eqx.Module):
    """Advances a population through one interval of held input: every neuron from
    the interval start to its end, with every spike inside located and reset.

    Integrators are static configuration (solver, step controller, root finder, step
    budget); the model, the input and the state are arguments.
    """

    max_steps: AbstractVar[int]
    # Whether a folded batch is run tile by tile (see `TILE_BYTES`).
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


class RunConfig(eqx.Module):
    """Static settings of one run (hashable)."""

    max_spikes: int | None = eqx.field(static=True)
    keep_interval_states: bool = eqx.field(static=True)


def interval_starts(interval, num_intervals: int):
    """Start time (ms) of every interval: `k * interval` for a scalar length, the
    running sum of the lengths for one length per interval."""
    if jnp.ndim(interval) == 0:
        return jnp.arange(num_intervals).astype(interval.dtype) * interval
    return jnp.concatenate([jnp.zeros((1,), interval.dtype), jnp.cumsum(interval)[:-1]])


# A batch folded into the neuron axis (see `run_folded`) is run tile by tile, by an
# integrator that is `tiled`, where its arrays of one value per neuron would hold
# more than `TILE_BYTES`: 16384 neurons in float32, 8192 in float64; a run that
# records spike times (its record has `max_spikes` slots per neuron), more than
# `RECORD_TILE_BYTES`. Each interval of the closed-form walk is a dozen or so
# kernels, each a pass over such arrays; per neuron they took longer in a larger
# population. `bench/bench_tiles.py` on a 2-core x86 CPU, 256 neurons per sample,
# tiles of 16 to 128 KiB against one population (`bench_tiles_sweep`): `forward`
# fastest at 32-64 KiB from 256 samples on, and slower the more tiles at 64
# samples (1.01-1.25x with 16-64 KiB tiles); `simulate` at 256 and 1024 samples
# 0.45-0.84x with 16-32 KiB tiles, about as with 64 KiB, but 0.64x against 0.89x
# at 64 samples in float64. The adaptive loop is not tiled: tiled, AdEx was not
# faster (`--adaptive`: 1.11x at 64 samples, 0.94x at 256).
TILE_BYTES = 2**16
RECORD_TILE_BYTES = 2**15


def samples_per_tile(n_each: int, dtype, tile_bytes: int) -> int:
    """How many samples of `n_each` neurons one tile of `tile_bytes` per per-neuron
    array holds (at least one)."""
    lanes = tile_bytes // jnp.dtype(dtype).itemsize
    return max(1, lanes // max(n_each, 1))


def run_intervals(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents: Float[Array, "time n_neurons"],
    interval,
    state: State,
    cfg: RunConfig,
    batch_major: bool = False,
) -> RawRun:
    """The forward pass: a scan over the intervals, the integrator inside each.

    `interval` is a scalar (every interval has this length, ms) or one length per
    interval.

    With `batch_major` (a batch folded by [`run_folded`][]), `currents` is `(B, T,
    n)` and the population is the `B * n` neurons of the batch, run by run. The
    currents are transposed once to time-major `(T, B * n)`, so that interval `k`
    reads one contiguous row (a strided read of `[:, k]` in every interval made the
    whole forward pass about 2x slower in float32 on a 2-core x86 CPU); `counts`
    and `interval_states` come back as `(B, T, n)`, written in place at `[:, k]`
    (not stacked time-major and transposed). For an integrator that is `tiled`, a
    batch of more neurons than a tile holds (see `TILE_BYTES`) is run a tile of
    samples at a time, each written in place into the whole batch's results.
    """
    per_tile = None
    if batch_major and integrator.tiled:
        size, _, n_each = currents.shape
        tile_bytes = TILE_BYTES if cfg.max_spikes is None else RECORD_TILE_BYTES
        per_tile = samples_per_tile(n_each, currents.dtype, tile_bytes)
        per_tile = per_tile if size > per_tile else None
    if per_tile is None:
        raw = _run(integrator, dynamics, currents, interval, state, cfg, batch_major)
    else:
        raw = _run_tiles(integrator, dynamics, currents, interval, state, cfg, per_tile)
    return eqx.tree_at(lambda r: r.counts, raw, raw.counts.astype(currents.dtype))


def _stacked_zeros(state: State, size: int, num_intervals: int, n_each: int, cfg):
    """Batch-major counts and (if kept) interval states, `(B, T, n, ...)`, zero."""

    def empty(rest, dtype):
        return jnp.zeros((size, num_intervals, n_each) + rest, dtype)

    states = None
    if cfg.keep_interval_states:
        states = jax.tree.map(lambda x: empty(jnp.shape(x)[1:], x.dtype), state)
    return empty((), jnp.int32), states


def _run(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents,
    interval,
    state: State,
    cfg: RunConfig,
    batch_major: bool,
    into=None,
    first_sample=None,
) -> RawRun:
    """[`run_intervals`][] on one population; its counts are int32. Batch-major,
    the counts and interval states are written into `into` (the whole batch's,
    from [`_stacked_zeros`][]) from sample `first_sample` on, where given."""
    dtype = currents.dtype
    if batch_major:
        size, num_intervals, n_each = currents.shape
        n_neurons = size * n_each
    else:
        num_intervals, n_neurons = currents.shape
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
        y, buffer, counters, exhausted, root_fail, bad, stacked = carry
        t_start, length, current, k = xs
        consts = constants if uniform else integrator.prepare(dynamics, length)
        out = integrator.interval(dynamics, consts, y, current, t_start, length, buffer)
        ys = (out.count.astype(jnp.int32), out.y if cfg.keep_interval_states else None)
        if batch_major:  # written in place at [first:first + size, k]

            def put(acc, x):
                x = x.reshape((size, 1, n_each) + x.shape[1:])
                at = (first, k.astype(jnp.int32)) + (zero,) * (x.ndim - 2)
                return lax.dynamic_update_slice(acc, x, at)

            stacked, ys = jax.tree.map(put, stacked, ys), (None, None)
        carry = (
            out.y,
            out.buffer,
            counters + out.counters,
            exhausted | out.exhausted,
            root_fail | out.root_fail,
            (bad | ~all_finite(out.y)) if cfg.keep_interval_states else bad,
            stacked,
        )
        return carry, ys

    no = jnp.zeros((n_neurons,), bool)
    # Batch-major: counts and interval states, (B, T, n), written in place.
    stacked: Any = (None, None)
    if batch_major:
        stacked = into
        if stacked is None:
            stacked = _stacked_zeros(state, size, num_intervals, n_each, cfg)
        # Interval `k` of every run, (B, n) -> (B * n,): row `k`.
        currents = jnp.moveaxis(currents, 0, 1).reshape(num_intervals, n_neurons)
        xs = (starts, lengths, currents, jnp.arange(num_intervals))
    else:
        xs = (starts, lengths, currents, None)
    init = (state, buffer, integrator.zero_counters(n_neurons), no, no, no, stacked)
    (y, buffer, counters, exhausted, root_fail, bad, stacked), ys = lax.scan(
        one_interval, init, xs
    )
    counts, states = stacked if batch_major else ys
    counts = cast(Array, counts)
    if not cfg.keep_interval_states:
        bad = ~all_finite(y)
    if buffer is None:
        mine = counts
        if batch_major and into is not None:  # this population's samples
            mine = lax.dynamic_slice_in_dim(counts, first, size, 0)
        spike_times = jnp.zeros((n_neurons, 0), dtype)
        num_spikes = jnp.sum(mine, axis=-2).reshape(-1)
    else:
        spike_times, num_spikes = integrator.spike_times(
            dynamics, buffer, state, interval
        )
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
    )


def _run_tiles(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents: Float[Array, "batch time n"],
    interval,
    state: State,
    cfg: RunConfig,
    per_tile: int,
) -> RawRun:
    """[`_run`][] on a folded batch, at most `per_tile` samples at a time: a loop
    over as few tiles as that takes, of equal size, each run as one population (as
    it would run within the whole batch, see `AbstractIntegrator.for_tile`) and
    written into the whole batch's results. The last tile ends at the last sample:
    it may overlap the one before by a few samples (the neurons are independent,
    so those come out the same from both)."""
    size, num_intervals, n_each = currents.shape
    n_tiles = -(-size // per_tile)
    per_tile = -(-size // n_tiles)  # as even as they go: they overlap by < n_tiles
    lanes = per_tile * n_each
    per_neuron = dynamics.per_neuron_mask()
    tile_integrator = integrator.for_tile(dynamics)

    def tile_of(x, axis, first):  # the tile's lanes of a folded array
        return lax.dynamic_slice_in_dim(x, first * n_each, lanes, axis)

    def run_tile(into, first):
        dyn = jax.tree.map(
            lambda x, p: tile_of(x, -1, first) if p and jnp.ndim(x) else x,
            dynamics,
            per_neuron,
        )
        cur = lax.dynamic_slice_in_dim(currents, first, per_tile, 0)
        st = jax.tree.map(lambda x: tile_of(x, -1, first), state)
        return _run(tile_integrator, dyn, cur, interval, st, cfg, True, into, first)

    stacked = _stacked_zeros(state, size, num_intervals, n_each, cfg)
    # The shapes of one tile's results, and where its lanes go in the batch's.
    shapes = jax.eval_shape(lambda: run_tile(stacked, jnp.zeros((), jnp.int32)))

    def lane_axis(path) -> int:
        # `spike_times` and `num_spikes` are (lanes, ...); everything else that is
        # per neuron, (..., lanes).
        return 0 if path[0].name in ("spike_times", "num_spikes") else -1

    def whole_batch(path, x):  # zeros for all lanes, where a tile's go
        shape = list(x.shape)
        shape[lane_axis(path)] = size * n_each
        return jnp.zeros(shape, x.dtype)

    def per_lane(raw):  # the results that are per neuron (not batch-major)
        return eqx.tree_at(
            lambda r: (r.counts, r.interval_states),
            raw,
            (None, None),
            is_leaf=lambda x: x is None,
        )

    whole = jax.tree_util.tree_map_with_path(whole_batch, per_lane(shapes))

    def body(t, carry):
        into, whole = carry
        # (The last tile is moved back to end at the last sample.)
        first = jnp.minimum(t * per_tile, size - per_tile).astype(jnp.int32)
        raw = run_tile(into, first)
        into = (raw.counts, raw.interval_states)
        whole = jax.tree_util.tree_map_with_path(
            lambda path, w, x: lax.dynamic_update_slice_in_dim(
                w, x, first * n_each, lane_axis(path) % x.ndim
            ),
            whole,
            per_lane(raw),
        )
        return into, whole

    (counts, states), whole = lax.fori_loop(0, n_tiles, body, (stacked, whole))
    return eqx.tree_at(
        lambda r: (r.counts, r.interval_states),
        whole,
        (counts, states),
        is_leaf=lambda x: x is None,
    )


def run_folded(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents,
    interval,
    state: State,
    cfg: RunConfig,
) -> RawRun:
    """[`run_intervals`][], with a batching rule: under `jax.vmap` the batch is folded
    into the neuron axis and integrated as one larger population (neurons are
    independent), instead of batching every loop of the integrator.

    A batched `interval` is not folded (it is shared by all neurons of a run), and
    neither is a batched model parameter that is not declared per neuron (see
    [`AbstractDynamics.parameter_names`][]).
    """

    @jax.custom_batching.custom_vmap
    def run(dynamics, currents, interval, state):
        return run_intervals(integrator, dynamics, currents, interval, state, cfg)

    @run.def_vmap
    def _rule(axis_size, in_batched, dynamics, currents, interval, state):
        dyn_b, cur_b, itv_b, st_b = in_batched
        per_neuron = dynamics.per_neuron_mask()
        shared_batched = jax.tree.map(lambda b, p: bool(b) and not p, dyn_b, per_neuron)
        if any(jax.tree.leaves(itv_b)) or any(jax.tree.leaves(shared_batched)):
            axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
            out = jax.vmap(
                lambda d, c, i, s: run_intervals(integrator, d, c, i, s, cfg),
                in_axes=axes,
            )(dynamics, currents, interval, state)
            return out, jax.tree.map(lambda _: True, out)
        n = currents.shape[-1]
        size = axis_size

        def fold(x, batched):
            # (B, ..., n) or (..., n) -> (..., B * n); an unbatched scalar stays.
            if not batched:
                if jnp.ndim(x) == 0:
                    return x
                x = jnp.broadcast_to(x, (size,) + jnp.shape(x))
            if jnp.ndim(x) == 1:  # a batched scalar parameter: one value per run
                x = jnp.broadcast_to(x[:, None], (size, n))
            x = jnp.moveaxis(x, 0, -2)
            return jnp.reshape(x, x.shape[:-2] + (size * x.shape[-1],))

        def fold_param(x, batched, per_neuron):
            return fold(x, batched) if per_neuron else x

        dynamics_f = jax.tree.map(fold_param, dynamics, dyn_b, per_neuron)
        if not cur_b:
            currents = jnp.broadcast_to(currents, (size,) + currents.shape)
        state_f = jax.tree.map(fold, state, st_b)
        raw = run_intervals(
            integrator, dynamics_f, currents, interval, state_f, cfg, batch_major=True
        )

        def unfold_last(x):  # (..., B * n) -> (B, ..., n)
            x = jnp.reshape(x, x.shape[:-1] + (size, n))
            return jnp.moveaxis(x, -2, 0)

        def unfold_first(x):  # (B * n, ...) -> (B, n, ...)
            return jnp.reshape(x, (size, n) + x.shape[1:])

        out = RawRun(
            counts=raw.counts,
            spike_times=unfold_first(raw.spike_times),
            num_spikes=unfold_last(raw.num_spikes),
            final_state=jax.tree.map(unfold_last, raw.final_state),
            interval_states=raw.interval_states,
            counters=jax.tree.map(unfold_last, raw.counters),
            exhausted=unfold_last(raw.exhausted),
            root_fail=unfold_last(raw.root_fail),
            nonfinite_state=unfold_last(raw.nonfinite_state),
        )
        return out, jax.tree.map(lambda _: True, out)

    return run(dynamics, currents, interval, state)
