"""The interval scan: a run is a schedule of intervals of held input, walked in
order by an integrator; and the batching rule that folds a vmapped batch into the
neuron axis."""

import abc
from typing import Any, cast

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
    (not stacked time-major and transposed).
    """
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

    def one_interval(carry, xs):
        y, buffer, counters, exhausted, root_fail, bad, stacked = carry
        t_start, length, current, k = xs
        consts = constants if uniform else integrator.prepare(dynamics, length)
        out = integrator.interval(dynamics, consts, y, current, t_start, length, buffer)
        ys = (out.count.astype(jnp.int32), out.y if cfg.keep_interval_states else None)
        if batch_major:  # written in place at [:, k], not stacked and transposed
            put = lambda acc, x: lax.dynamic_update_index_in_dim(
                acc, x.reshape((size, n_each) + x.shape[1:]), k, 1
            )
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
    stacked: tuple[Any, Any] = (None, None)
    if batch_major:

        def empty(x, dtype):
            return jnp.zeros((size, num_intervals, n_each) + jnp.shape(x)[1:], dtype)

        stacked = (
            empty(no, jnp.int32),
            jax.tree.map(lambda x: empty(x, x.dtype), state)
            if cfg.keep_interval_states
            else None,
        )
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
        spike_times = jnp.zeros((n_neurons, 0), dtype)
        num_spikes = jnp.sum(counts, axis=-2).reshape(-1)
    else:
        spike_times, num_spikes = integrator.spike_times(
            dynamics, buffer, state, interval
        )
    return RawRun(
        counts.astype(dtype),
        spike_times,
        num_spikes,
        y,
        states,
        counters,
        exhausted,
        root_fail,
        bad,
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
