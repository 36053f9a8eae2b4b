"""The tangents of a closed-form run with its spike counts held fixed: every interval
in closed form from its start state, in chunks of intervals."""

import jax
import jax.lax as lax
import jax.numpy as jnp

from ._misc import running_max, running_sum, vary_like, where_tree
from ._records import set_entries, take_entries
from ._scan import interval_starts
from ._surrogate import surrogate_zero


def _gather_spike_times(first, period, counts, num_spikes, starts, max_spikes):
    """Spike `j` of neuron `i` from its interval's first spike and period."""
    num_intervals, n = counts.shape
    # (T, n): the slot of each interval's first spike.
    before = running_sum(counts, axis=0) - counts
    # Which interval each slot's spike came from: every interval with spikes marks
    # its first slot (these are distinct), and a running maximum along the slots
    # fills in the rest. (One scatter of T x n marks, where a binary search per slot
    # cost three times as much.) The scatter and the gathers below take one index
    # per entry of the flattened array (see `set_entries`), where they fit an int32.
    k = jnp.broadcast_to(
        jnp.arange(num_intervals, dtype=jnp.int32)[:, None], (num_intervals, n)
    )
    cols = jnp.arange(n, dtype=jnp.int32)[None, :]
    marks = set_entries(
        jnp.zeros((n, max_spikes), jnp.int32),
        cols,
        before,
        (counts > 0) & (before < max_spikes),
        k,
        reduce="max",
    )
    k = running_max(marks, axis=1)  # (n, max_spikes)
    rows = jnp.arange(n, dtype=jnp.int32)[:, None]
    slots = jnp.arange(max_spikes, dtype=jnp.int32)[None, :]
    # (The slots past a neuron's count take no entry: their cotangent is not
    # scattered back.)
    recorded = slots < num_spikes[:, None]
    at = lambda x: take_entries(x, k, rows, recorded)
    m = (slots - at(before)).astype(first.dtype)
    t = starts[k] + at(first) + m * at(period)
    return jnp.where(recorded, t, jnp.inf)


def _intervals_in_closed_form(surrogate, counts, dynamics, currents, interval, starts):
    """Every interval written out in closed form from its own start state, with its
    spike count held at its forward value: the end states, the first spikes and
    periods, and the (zero-valued) surrogate terms of the counts. Neurons and
    intervals are independent here: this is one elementwise computation over
    `(time, n_neurons)`, not a scan."""
    lengths = jnp.broadcast_to(interval, (currents.shape[0],))

    def one_interval(y, current, length, count):
        rep = dynamics.replay_interval(y, current, length, count)
        return rep.y_end, rep.first, rep.period, rep.next_margin, rep.last_margin

    y_end, first, period, next_margin, last_margin = jax.vmap(one_interval)(
        starts, currents, lengths, counts
    )
    # The surrogate's custom derivative is applied outside the `vmap`: under
    # `jax.checkpoint` (see `tangents_in_closed_form`), JAX 0.10 fails to take the
    # JVP of a `custom_jvp` inside a `vmap` (a `broadcast_in_dim` shape error).
    decisions = surrogate_zero(next_margin, surrogate) + jnp.where(
        counts >= 1, surrogate_zero(last_margin, surrogate), 0.0
    )
    return y_end, first, period, decisions


def _chain_tangents(jac, direct, t_state):
    """The tangents of the interval start states: `t_start[0] = t_state`, and the
    end of interval `k` (the start of `k + 1`) is `direct[k] + sum_j jac[j][k] *
    t_start[k][j]`, per neuron, where `jac[j]` is the derivative of the end state
    in the `j`-th leaf of the start state and `direct` the tangent of the end
    state from everything else. Returns the start and end tangents, stacked over
    the intervals, and the final one."""
    leaves, treedef = jax.tree.flatten(t_state)

    def step(t, xs):
        d, cols = xs
        d_leaves = treedef.flatten_up_to(d)
        ends = []
        for i, d_i in enumerate(d_leaves):
            total = d_i
            for j, t_j in enumerate(t):
                total = total + treedef.flatten_up_to(cols[j])[i] * t_j
            ends.append(total)
        return ends, (t, ends)

    final, (starts, ends) = lax.scan(step, leaves, (direct, jac))
    unflat = lambda x: jax.tree.unflatten(treedef, x)
    return unflat(starts), unflat(ends), unflat(final)


# Intervals per chunk of `tangents_in_closed_form` when the adjoint does not set it:
# a target of at most `_CHUNK_INTERVALS`, fewer for layers of over 256 neurons in
# float64, 512 in float32 (about `_CHUNK_BYTES` per array of the chunk, at least
# one interval), or a size that divides the run within a factor 2 of the target
# (see `_chunk_intervals`: up to twice these bounds). A chunk of 256 KiB per array
# (2^15 values in float64, 2^16 in float32) stays in cache, and the chunks'
# temporaries reuse one buffer. Where the batch of a `jax.vmap` is folded into the
# neurons (see `_tangent_primitive.py`: the transpose of a batched run, as in the
# gradient of a loss summed over the batch), the chunks are sized for all of the
# batch's neurons.
# (Vmapped instead, each chunk of one sample's size held every sample: at 64 x 256
# neurons x 100 intervals, the whole run in one chunk, and the gradient of
# `bench/bench_grad.py`'s loss took 1.26x the time it takes in chunks of 8-64
# intervals of the folded batch.) Folded batches of 64 and 128 samples of 256
# neurons (16384 and 32768 lanes) took their float64 value and gradient in 0.92x
# and 0.88x the time in chunks of 2 and 1 intervals as in the chunks of 10 that a
# floor of 8 intervals gave, their float32 one in 0.96x and 0.92x in chunks of 4
# and 2 (`bench/bench_lif_grad_ab.py`, bench/RESULTS.md).
_CHUNK_BYTES = 2**18
_CHUNK_INTERVALS = 128


def _chunk_intervals(
    num_intervals: int, n_neurons: int, chunk: int | None, itemsize: int
) -> int:
    """Intervals per chunk: about `chunk` (default: see `_CHUNK_BYTES`, for values
    of `itemsize` bytes), evened out so that the last chunk is padded by fewer
    intervals than there are chunks.

    By default, a size that divides the run, where one lies within a factor 2 of
    the target (the nearest): padding copies every input of the chunks. (On a
    2-core x86 CPU, `bench/bench_chunks.py`: `bench_grad.py`'s LIF loss at 64 x 256
    neurons x 100 intervals took 1.10x (float32) and 1.10x (float64) the time in
    chunks of 8 padded to 104 as in chunks of 10; at 1 x 256 x 1600, 1.32x and
    1.03x in chunks of 124 padded to 1612 as in chunks of 100.)"""
    if num_intervals == 0:
        return 1
    if chunk is None:
        by_size = _CHUNK_BYTES // (max(n_neurons, 1) * itemsize)
        chunk = max(1, min(_CHUNK_INTERVALS, by_size))
        sizes = range(max(chunk // 2, 1), min(2 * chunk, num_intervals) + 1)
        dividing = [s for s in sizes if num_intervals % s == 0]
        if dividing:
            return min(dividing, key=lambda s: (abs(s - chunk), -s))
    num_chunks = -(-num_intervals // min(chunk, num_intervals))
    return -(-num_intervals // num_chunks)


def tangents_in_closed_form(primals, tangents, options):
    """The tangents of the run (soft counts, spike times, final state, interval
    states) for `tangents` of `(dynamics, currents, interval, state)`, with every
    interval's count held fixed, linearised at the forward run's interval `starts`:
    `primals` = `(dynamics, currents, interval, starts, counts, num_spikes,
    surrogate)`, `options` = `(cfg, chunk)`.

    Each interval's closed form depends on the earlier ones only through its start
    state, so its derivatives are taken for many intervals at once: one tangent from
    the parameters, current and length, and one per leaf of the state (each neuron's
    own, the model being per neuron). Only the chain of start-state tangents through
    the intervals is sequential, one multiply-add per state leaf pair and neuron;
    its transpose (reverse mode) is as cheap.

    The intervals go in chunks of `chunk` (a scan over the chunks carries the
    start-state tangent), each chunk under `jax.checkpoint`: reverse mode keeps only
    the chunk's inputs and recomputes its closed form, so the temporaries of the
    elementwise derivatives are the size of one chunk, not of the whole run (at
    1600 intervals of 256 neurons in float64, the gradient's buffers go from 99 to
    41 MiB, and freshly mapped pages were most of its time)."""
    dynamics, currents, interval, starts, counts, num_spikes, surrogate = primals
    cfg, chunk = options
    t_dyn, t_cur, t_int, t_state = tangents
    num_intervals = currents.shape[0]
    size = _chunk_intervals(
        num_intervals, currents.shape[1], chunk, currents.dtype.itemsize
    )
    num_chunks = -(-num_intervals // size)
    pad = num_chunks * size - num_intervals

    def split(x):  # (T, ...) -> (chunks, size, ...), padded at the end
        # (with zeros: the model's closed form must be finite on a zero state,
        # current and length with no spike, as the LIF's is, for the padding is
        # masked out below and 0 * inf would be NaN. Zeros, unlike copies of the
        # last interval, cost no copy of the inputs.)
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((num_chunks, size) + x.shape[1:])

    def unsplit(x):
        return x.reshape((num_chunks * size,) + x.shape[2:])[:num_intervals]

    state_def = jax.tree.structure(t_state)

    def one_chunk(t_start, xs):
        cur, t_c, lengths, t_lengths, starts_c, counts_c, real = xs
        f = lambda d, c, i, y: _intervals_in_closed_form(
            surrogate, counts_c, d, c, i, y
        )
        zero_starts = jax.tree.map(jnp.zeros_like, starts_c)
        # The closed form evaluated once, its linear map applied to the tangents
        # and to each unit tangent of the start state (with `jax.jvp` once for
        # each, XLA computed parts of the closed form twice).
        primal_out, f_lin = jax.linearize(f, dynamics, cur, lengths, starts_c)
        direct = f_lin(t_dyn, t_c, t_lengths, zero_starts)
        zero_rest = jax.tree.map(jnp.zeros_like, (t_dyn, t_c, t_lengths))
        start_leaves = jax.tree.leaves(starts_c)
        columns = []
        for j in range(len(start_leaves)):
            unit = [
                jnp.ones_like(x) if k == j else jnp.zeros_like(x)
                for k, x in enumerate(start_leaves)
            ]
            columns.append(f_lin(*zero_rest, jax.tree.unflatten(state_def, unit)))

        # Padding past the last interval passes the tangent on unchanged.
        y_jac = [
            jax.tree.unflatten(
                state_def,
                [
                    where_tree(real, x, float(i == j))
                    for i, x in enumerate(state_def.flatten_up_to(col[0]))
                ],
            )
            for j, col in enumerate(columns)
        ]
        direct_end = jax.tree.map(lambda x: where_tree(real, x, 0.0), direct[0])
        t_starts, t_ends, t_final = _chain_tangents(
            y_jac, direct_end, jax.tree.unflatten(state_def, t_start)
        )
        t_start_leaves = jax.tree.leaves(t_starts)

        def through_start(k):
            out = direct[k]
            for col, t_j in zip(columns, t_start_leaves):
                out = out + col[k] * t_j
            return out

        _, first, period, _ = primal_out
        tangents_out = (through_start(1), through_start(2), through_start(3), t_ends)
        return jax.tree.leaves(t_final), (tangents_out, first, period)

    per_interval = lambda x: jnp.broadcast_to(x, (num_intervals,))
    xs = (currents, t_cur, per_interval(interval), per_interval(t_int), starts, counts)
    real = jnp.arange(num_chunks * size).reshape(num_chunks, size) < num_intervals
    t_final, outs = lax.scan(
        jax.checkpoint(one_chunk, prevent_cse=False),
        # (Under `jax.shard_map`, the carry varies as the tangents do.)
        vary_like(jax.tree.leaves(t_state), xs, primals, t_dyn),
        jax.tree.map(split, xs) + (real,),
    )
    (t_first, t_period, t_counts, t_ends), first, period = jax.tree.map(unsplit, outs)
    t_final = jax.tree.unflatten(state_def, t_final)
    if cfg.max_spikes is None or num_intervals == 0:  # no spike times to move
        t_times = jnp.zeros((currents.shape[1], cfg.max_spikes or 0), currents.dtype)
    else:

        def gather(first, period, interval):
            starts_t = interval_starts(interval, num_intervals)
            return _gather_spike_times(
                first, period, counts, num_spikes, starts_t, cfg.max_spikes
            )

        _, t_times = jax.jvp(
            gather, (first, period, interval), (t_first, t_period, t_int)
        )
    t_states = t_ends if cfg.keep_interval_states else None
    return t_counts, t_times, t_final, t_states
