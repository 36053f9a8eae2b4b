"""The batching rule that folds a vmapped batch into the neuron axis, and runs a
large folded batch tile by tile."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import State
from ._dynamics import AbstractDynamics
from ._records import RawRun
from ._scan import (
    AbstractIntegrator,
    RunConfig,
    float_counts,
    run_intervals,
    run_population,
    stacked_zeros,
)

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


def fold_lanes(x, batched: bool, size: int, n: int, scalar: bool = False):
    """A batch of `size` samples of `n` neurons folded into the last axis, that of
    the neurons: `(B, ..., n)`, or an unbatched `(..., n)`, to `(..., B * n)`, sample
    after sample; a batched scalar `(B,)` (one value per sample) to `(B * n,)`. An
    unbatched scalar stays one, unless `scalar` (then it is one value per lane)."""
    if not batched:
        if jnp.ndim(x) == 0 and not scalar:
            return x
        x = jnp.broadcast_to(x, (size,) + jnp.shape(x))
    if jnp.ndim(x) == 1:  # one value per sample
        x = jnp.broadcast_to(x[:, None], (size, n))
    x = jnp.moveaxis(x, 0, -2)
    return jnp.reshape(x, x.shape[:-2] + (size * x.shape[-1],))


def unfold_lanes(x, size: int, n: int):
    """The inverse of [`fold_lanes`][]: `(..., B * n)` to `(B, ..., n)`."""
    x = jnp.reshape(x, x.shape[:-1] + (size, n))
    return jnp.moveaxis(x, -2, 0)


def unfold_rows(x, size: int, n: int):
    """`(B * n, ...)`, one row per lane, to `(B, n, ...)`."""
    return jnp.reshape(x, (size, n) + x.shape[1:])


def samples_per_tile(n_each: int, dtype, tile_bytes: int) -> int:
    """How many samples of `n_each` neurons one tile of `tile_bytes` per per-neuron
    array holds (at least one)."""
    lanes = tile_bytes // jnp.dtype(dtype).itemsize
    return max(1, lanes // max(n_each, 1))


def run_batch_major(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents: Float[Array, "batch time n"],
    interval,
    state: State,
    cfg: RunConfig,
) -> RawRun:
    """[`run_intervals`][] on a folded batch, whose counts and interval states come
    back batch-major, `(B, T, n)`; for an integrator that is `tiled`, a batch of
    more neurons than a tile holds is run a tile of samples at a time, each written
    in place into the whole batch's results.

    The currents are read time-major, `(T, B * n)`: interval `k` reads one
    contiguous row (a strided read of `[:, k]` in every interval made the whole
    forward pass about 2x slower in float32 on a 2-core x86 CPU), and a tile of
    samples one contiguous stretch of it. Batch-major currents are transposed
    once; those of [`run_currents`][], computed in time-major order, are not
    (XLA cancels the two transposes). Where the currents are batch-major
    (`cfg.counts_over_currents`), a run in one population writes its counts over
    them, in their dtype, rather than into a fresh buffer of zeros: each entry is
    read (transposed) before the interval that overwrites it. (`bench/bench_walk_ab.py`
    on a 2-core x86 CPU, 256 neurons x 100 intervals: `forward` took 0.95-0.96x
    the time at 64 samples in float32, the same within 4 % in float64 and at 16
    samples. A run that read the currents after this one would make XLA copy them
    first.) Computed time-major, the currents would have to be transposed to be
    written over: the counts go into zeros. (`bench/bench_walk_ab.py`, 32 inputs:
    against the currents computed batch-major and transposed here, `forward` took
    0.88-0.89x the time in float32 and 0.88-0.97x in float64 at 64 and 16
    samples, `simulate` 0.94-0.98x. Where each sample has its own weight, the
    currents are computed batch-major, and the counts still go into zeros: 1.06x
    for `forward` in float32, as before within 2 % otherwise.)
    """
    size, num_intervals, n_each = currents.shape
    dtype = currents.dtype
    time_major = jnp.moveaxis(currents, 0, 1).reshape(num_intervals, size * n_each)
    per_tile = None
    if integrator.tiled:
        tile_bytes = TILE_BYTES if cfg.max_spikes is None else RECORD_TILE_BYTES
        per_tile = samples_per_tile(n_each, dtype, tile_bytes)
    if per_tile is None or size <= per_tile:
        over = currents if cfg.counts_over_currents else None
        into = stacked_zeros(state, size, num_intervals, n_each, cfg, dtype, over)
        raw = run_population(
            integrator,
            dynamics,
            time_major,
            interval,
            state,
            cfg,
            (size, n_each),
            into,
        )
    else:
        raw = _run_tiles(
            integrator, dynamics, time_major, interval, state, cfg, size, per_tile
        )
    return float_counts(raw, dtype)


def _run_tiles(
    integrator: AbstractIntegrator,
    dynamics: AbstractDynamics,
    currents: Float[Array, "time lanes"],
    interval,
    state: State,
    cfg: RunConfig,
    size: int,
    per_tile: int,
) -> RawRun:
    """[`run_population`][] on a folded batch of `size` samples (time-major
    currents, `(T, B * n)`), at most `per_tile` samples at a time: a loop over as
    few tiles as that takes, of equal size, each run as one population (as it would
    run within the whole batch, see `AbstractIntegrator.for_tile`) and written into
    the whole batch's results. The last tile ends at the last sample: it may
    overlap the one before by a few samples (the neurons are independent, so
    those come out the same from both)."""
    num_intervals, lanes_all = currents.shape
    n_each = lanes_all // size
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
        st = jax.tree.map(lambda x: tile_of(x, -1, first), state)
        return run_population(
            tile_integrator,
            dyn,
            currents,
            interval,
            st,
            cfg,
            (per_tile, n_each),
            into,
            first,
        )

    # (int32 counts: the tiles cannot write theirs over the currents, as one
    # population may, for the last tile may overlap the one before. Zeros in the
    # currents' dtype, which would need no conversion after the run, took 1.01x
    # the time of these in float32 and 1.04-1.08x in float64, 256 neurons x 100
    # intervals at 64 samples, on a 2-core x86 CPU.)
    stacked = stacked_zeros(state, size, num_intervals, n_each, cfg, jnp.int32)
    # The shapes of one tile's results, and where its lanes go in the batch's.
    shapes = jax.eval_shape(lambda: run_tile(stacked, jnp.zeros((), jnp.int32)))

    def lane_axis(path) -> int:
        # `spike_times`, `num_spikes` and `crossings` are (lanes, ...); everything
        # else that is per neuron, (..., lanes).
        first = ("spike_times", "num_spikes", "crossings")
        return 0 if path[0].name in first else -1

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
        fold = lambda x, batched: fold_lanes(x, batched, size, n)

        def fold_param(x, batched, per_neuron):
            return fold(x, batched) if per_neuron else x

        dynamics_f = jax.tree.map(fold_param, dynamics, dyn_b, per_neuron)
        if not cur_b:
            currents = jnp.broadcast_to(currents, (size,) + currents.shape)
        state_f = jax.tree.map(fold, state, st_b)
        raw = run_batch_major(integrator, dynamics_f, currents, interval, state_f, cfg)
        unfold_last = lambda x: unfold_lanes(x, size, n)
        unfold_first = lambda x: unfold_rows(x, size, n)

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
            crossings=jax.tree.map(unfold_first, raw.crossings),
        )
        return out, jax.tree.map(lambda _: True, out)

    return run(dynamics, currents, interval, state)
