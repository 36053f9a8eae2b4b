"""The integration loop: intervals of constant input, steps and crossings inside."""

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import State
from ._dynamics import AbstractClosedFormDynamics, AbstractDynamics
from ._misc import where_tree
from ._root_find import _bracket_search
from ._solution import RESULTS, Solution, update_result
from ._solver import AbstractSolver, Exact, adaptive_step
from ._surrogate import AbstractSurrogate, ArctanSurrogate, surrogate_zero

# Crossings handled before entering the loop: at typical rates most intervals hold at
# most this many spikes per neuron, and an unconditional multiply-compare is cheaper
# than a loop iteration.
_PEEL = 1


def _expand(x, like):
    """Broadcast a per-neuron array against a state leaf with trailing axes."""
    return jnp.reshape(x, x.shape + (1,) * (jnp.ndim(like) - jnp.ndim(x)))


def _all_finite(y):
    """Per neuron: every state component is finite."""
    out = None
    for leaf in jax.tree.leaves(y):
        f = jnp.isfinite(leaf)
        f = jnp.all(f.reshape(f.shape[:1] + (-1,)), axis=1)
        out = f if out is None else out & f
    return out


class _Buffer(eqx.Module):
    """Spike times recorded in order of occurrence, `+inf` where unused."""

    times: Array  # (n_neurons, max_spikes)
    num: Array  # (n_neurons,) spikes seen so far (may exceed max_spikes)

    def record(self, mask, times):
        n, cap = self.times.shape
        if cap == 0:
            return _Buffer(self.times, self.num + mask)
        index = jnp.where(mask, self.num, cap)  # cap is out of range: dropped
        new_times = self.times.at[jnp.arange(n), index].set(times, mode="drop")
        return _Buffer(new_times, self.num + mask)


class _Counters(eqx.Module):
    num_steps: Array
    num_rejected_steps: Array
    num_crossings: Array
    num_dt_min_steps: Array

    @staticmethod
    def zeros(n):
        z = jnp.zeros((n,), jnp.int32)
        return _Counters(z, z, z, z)

    def __add__(self, other):
        return jax.tree.map(jnp.add, self, other)


def _closed_form_interval(
    dynamics: AbstractClosedFormDynamics,
    constants,
    y: State,
    current,
    t_start,
    buffer: _Buffer | None,
    max_steps: int,
):
    """Walk from event to event through one interval using the model's closed form.

    Each neuron takes one step per spike plus one to the interval end; deciding
    whether a spike happens costs a multiply and a compare.
    """
    ev = dynamics.interval_start(y, current, constants)
    zeros = jnp.zeros(current.shape, jnp.int32)

    def body(carry):
        ev, pending, count, buffer = carry
        if buffer is not None:
            buffer = buffer.record(pending, t_start + dynamics.crossing_time(ev))
        ev = dynamics.fire(ev, pending)
        count = count + pending
        # A neuron has used `count + 1` steps once it moves on to its next segment.
        pending = dynamics.crossing_pending(ev) & (count + 1 < max_steps)
        return ev, pending, count, buffer

    pending = dynamics.crossing_pending(ev) & (max_steps > 1)
    carry = (ev, pending, zeros, buffer)
    for _ in range(_PEEL):  # most intervals need no loop at all
        carry = body(carry)
    # The loop is entered only when some neuron has more spikes in the interval.
    # (The integrator is never vmapped, see `_run_folded`, so this is a real branch.)
    ev, _, count, buffer = lax.cond(
        jnp.any(carry[1]),
        lambda c: lax.while_loop(lambda c: jnp.any(c[1]), body, c),
        lambda c: c,
        carry,
    )
    exhausted = dynamics.crossing_pending(ev)
    counters = _Counters(count + 1, zeros, count, zeros)
    no_fail = jnp.zeros(count.shape, bool)
    return dynamics.interval_end(ev), count, buffer, counters, exhausted, no_fail


def _adaptive_interval(
    dynamics: AbstractDynamics,
    solver: AbstractSolver,
    y: State,
    current,
    t_start,
    interval,
    buffer: _Buffer | None,
    *,
    max_steps: int,
    dt_init: float,
    dt_min: float,
    dt_max: float,
    rtol: float,
    atol: float,
    max_root_iters: int,
):
    """Integrate one interval with per-neuron adaptive steps and located crossings."""
    n = current.shape[0]
    dtype = current.dtype
    eps = jnp.finfo(dtype).eps
    root_atol = 4 * eps * interval
    zeros = jnp.zeros((n,), jnp.int32)
    h0 = jnp.full((n,), min(dt_init, dt_max), dtype)
    t0 = jnp.zeros((n,), dtype)

    def cond_fun(carry):
        t, _, _, _, _, attempts, _, _ = carry
        return jnp.any((t < interval) & (attempts < max_steps))

    def body_fun(carry):
        t, y, h, count, counters, attempts, buffer, root_fail = carry
        active = (t < interval) & (attempts < max_steps)
        reaches_end = t + h >= interval
        t1 = jnp.where(reaches_end, interval, t + h)
        step = t1 - t
        prop = adaptive_step(
            dynamics,
            solver,
            t,
            y,
            current,
            step,
            rtol=rtol,
            atol=atol,
            dt_min=dt_min,
            dt_max=dt_max,
        )
        accept = active & prop.accept
        g0 = dynamics.threshold(y)
        g1 = dynamics.threshold(prop.y1)
        # NaN counts as past threshold: a model that blows up at a spike (AdEx,
        # QIF) has crossed before it overflows; the search finds where.
        crossed = accept & ~(g1 < 0)
        upper, g_upper = t1, g1

        def sub_step(s):
            return solver.step(dynamics, t, y, current, s - t)[0]

        peak = dynamics.peak_in_step(y, current, step) if prop.exact else None
        if peak is not None:
            # A non-monotone exact flow: the earliest crossing is before an interior
            # maximum that reaches threshold, even if the step ends below it.
            t_peak, has_peak = peak
            g_peak = dynamics.threshold(sub_step(t + t_peak))
            use_peak = accept & has_peak & (g_peak >= 0)
            crossed = crossed | use_peak
            upper = jnp.where(use_peak, t + t_peak, t1)
            g_upper = jnp.where(use_peak, g_peak, g1)

        def search(fn, lanes):
            return _bracket_search(
                fn,
                t,
                upper,
                g0,
                g_upper,
                lanes,
                rtol=0.0,
                atol=root_atol,
                max_iters=max_root_iters,
            )

        def locate(_):
            # On the step's dense output (cheap to evaluate; the exact flow itself
            # for an exact solver). A step that blew up (NaN) has no usable dense
            # output: search on the solver's own sub-steps there.
            safe_step = jnp.where(step > 0, step, 1)

            def on_dense(s):
                fraction = jnp.clip((s - t) / safe_step, 0, 1)
                y_s = solver.evaluate_dense(dynamics, prop.dense, fraction)
                return dynamics.threshold(y_s)

            finite1 = _all_finite(prop.y1)
            t_star, ok, t_below = search(on_dense, crossed & finite1)
            blown = crossed & ~finite1
            t_b, ok_b, below_b = search(
                lambda s: dynamics.threshold(sub_step(s)), blown
            )
            ok = jnp.where(blown, ok_b, ok)
            # One solver sub-step gives the state at the crossing; past a blow-up it
            # is taken from just below the crossing instead.
            y_star = sub_step(jnp.where(blown, below_b, t_star))
            if not prop.exact:
                # The dense output is one order below the step: a Newton step on
                # the solver's own solution makes the crossing time as accurate as
                # the step; the state follows to first order in the (tiny) shift.
                g_star = dynamics.threshold(y_star)
                f_star = dynamics.vector_field(t_star, y_star, current)
                _, g_dot = jax.jvp(dynamics.threshold, (y_star,), (f_star,))
                safe_dot = jnp.where(g_dot > 0, g_dot, 1)
                newton = jnp.clip(t_star - g_star / safe_dot, t_below, upper)
                polish = crossed & ~blown & (g_dot > 0) & jnp.isfinite(newton)
                shift = jnp.where(polish, newton - t_star, 0.0)
                t_star = t_star + shift
                y_star = jax.tree.map(
                    lambda a, f: a + _expand(shift, a) * f, y_star, f_star
                )
            t_star = jnp.where(blown, t_b, t_star)
            return t_star, y_star, ok

        def skip(_):
            return t1, prop.y1, jnp.ones((n,), bool)

        t_star, y_star, ok = lax.cond(jnp.any(crossed), locate, skip, None)
        y_new = where_tree(
            crossed, dynamics.reset(y_star), where_tree(accept, prop.y1, y)
        )
        t_new = jnp.where(crossed, t_star, jnp.where(accept, t1, t))
        h_new = jnp.where(active, prop.h_next, h)
        if buffer is not None:
            buffer = buffer.record(crossed, t_start + t_star)
        counters = counters + _Counters(
            accept.astype(jnp.int32),
            (active & ~accept).astype(jnp.int32),
            crossed.astype(jnp.int32),
            (accept & prop.at_dt_min).astype(jnp.int32),
        )
        root_fail = root_fail | (crossed & ~ok)
        attempts = attempts + active
        return (
            t_new,
            y_new,
            h_new,
            count + crossed,
            counters,
            attempts,
            buffer,
            root_fail,
        )

    init = (t0, y, h0, zeros, _Counters.zeros(n), zeros, buffer, jnp.zeros((n,), bool))
    t, y, _, count, counters, _, buffer, root_fail = lax.while_loop(
        cond_fun, body_fun, init
    )
    exhausted = t < interval
    return y, count, buffer, counters, exhausted, root_fail


class _Config(eqx.Module):
    """Static settings of one simulation (hashable)."""

    max_spikes: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    dt_init: float = eqx.field(static=True)
    dt_min: float = eqx.field(static=True)
    dt_max: float = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_root_iters: int = eqx.field(static=True)
    keep_interval_states: bool = eqx.field(static=True)


class _Raw(eqx.Module):
    counts: Array  # (T, n) float: exact integer values
    spike_times: Array
    num_spikes: Array
    final_state: State
    interval_states: State | None
    counters: _Counters
    exhausted: Array  # per neuron: the step budget ran out in some interval
    root_fail: Array  # per neuron: a crossing search did not converge


def _run_intervals(dynamics, solver, currents, interval, state, cfg: _Config) -> _Raw:
    """The forward loop: a scan over intervals, a while loop of steps inside each."""
    dtype = currents.dtype
    n_neurons = currents.shape[1]
    buffer = None
    if cfg.max_spikes is not None:
        times = jnp.full((n_neurons, cfg.max_spikes), jnp.inf, dtype)
        buffer = _Buffer(times, jnp.zeros((n_neurons,), jnp.int32))

    closed_form = uses_closed_form(dynamics, solver)
    if closed_form:
        # An interval much longer than the model's time scale is walked in equal
        # pieces, so that the closed form's decay factors stay representable.
        n_pieces = jnp.ceil(interval / dynamics.max_event_span())
        # An invalid interval (reported in `result`) takes a single piece.
        n_pieces = jnp.where(jnp.isfinite(n_pieces) & (n_pieces > 1), n_pieces, 1)
        piece = interval / n_pieces
        constants = dynamics.interval_constants(piece)
        n_pieces = n_pieces.astype(jnp.int32)

    def one_interval(carry, xs):
        y, buffer, counters, exhausted, root_fail = carry
        k, current = xs
        t_start = k.astype(dtype) * interval
        if closed_form:

            def one_piece(y, buffer, t0):
                return _closed_form_interval(
                    dynamics, constants, y, current, t0, buffer, cfg.max_steps
                )

            def pieces(_):
                def body(j, acc):
                    y, count, buffer, counters, exhausted, fail = acc
                    t0 = t_start + j.astype(dtype) * piece
                    y, c, buffer, more, ex, f = one_piece(y, buffer, t0)
                    return (
                        y,
                        count + c,
                        buffer,
                        counters + more,
                        exhausted | ex,
                        fail | f,
                    )

                first = one_piece(y, buffer, t_start)
                return lax.fori_loop(1, n_pieces, body, first)

            out = lax.cond(
                n_pieces == 1, lambda _: one_piece(y, buffer, t_start), pieces, None
            )
        else:
            out = _adaptive_interval(
                dynamics,
                solver,
                y,
                current,
                t_start,
                interval,
                buffer,
                max_steps=cfg.max_steps,
                dt_init=cfg.dt_init,
                dt_min=cfg.dt_min,
                dt_max=cfg.dt_max,
                rtol=cfg.rtol,
                atol=cfg.atol,
                max_root_iters=cfg.max_root_iters,
            )
        y, count, buffer, new_counters, new_exhausted, new_root_fail = out
        carry = (
            y,
            buffer,
            counters + new_counters,
            exhausted | new_exhausted,
            root_fail | new_root_fail,
        )
        return carry, (count, y if cfg.keep_interval_states else None)

    no = jnp.zeros((n_neurons,), bool)
    init = (state, buffer, _Counters.zeros(n_neurons), no, no)
    ks = jnp.arange(currents.shape[0])
    (y, buffer, counters, exhausted, root_fail), (counts, states) = lax.scan(
        one_interval, init, (ks, currents)
    )
    if buffer is None:
        spike_times = jnp.zeros((n_neurons, 0), dtype)
        num_spikes = jnp.sum(counts, axis=0)
    else:
        spike_times, num_spikes = buffer.times, buffer.num
    return _Raw(
        counts.astype(dtype),
        spike_times,
        num_spikes,
        y,
        states,
        counters,
        exhausted,
        root_fail,
    )


def _run_folded(dynamics, solver, currents, interval, state, cfg: _Config) -> _Raw:
    """[`_run_intervals`][], with a batching rule: under `jax.vmap` the batch is folded
    into the neuron axis and integrated as one larger population (neurons are
    independent), instead of batching every loop of the integrator.

    A batched `interval` is not folded (it is shared by all neurons of a run).
    """

    @jax.custom_batching.custom_vmap
    def run(dynamics, currents, interval, state):
        return _run_intervals(dynamics, solver, currents, interval, state, cfg)

    @run.def_vmap
    def _rule(axis_size, in_batched, dynamics, currents, interval, state):
        dyn_b, cur_b, itv_b, st_b = in_batched
        if any(jax.tree.leaves(itv_b)):
            axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
            out = jax.vmap(
                lambda *a: _run_intervals(a[0], solver, a[1], a[2], a[3], cfg),
                in_axes=axes,
            )(dynamics, currents, interval, state)
            return out, jax.tree.map(lambda _: True, out)
        n = currents.shape[-1]
        size = axis_size

        def fold(x, batched, neuron_axis_last=True):
            # (B, ..., n) or (..., n) -> (..., B * n); a scalar stays as it is.
            if not batched:
                if jnp.ndim(x) == 0:
                    return x
                x = jnp.broadcast_to(x, (size,) + jnp.shape(x))
            if jnp.ndim(x) == 1:  # a batched scalar parameter: one value per run
                x = jnp.broadcast_to(x[:, None], (size, n))
            x = jnp.moveaxis(x, 0, -2)
            return jnp.reshape(x, x.shape[:-2] + (size * x.shape[-1],))

        dynamics_f = jax.tree.map(fold, dynamics, dyn_b)
        currents_f = fold(currents, cur_b)
        state_f = jax.tree.map(fold, state, st_b)
        raw = _run_intervals(dynamics_f, solver, currents_f, interval, state_f, cfg)

        def unfold_last(x):  # (..., B * n) -> (B, ..., n)
            x = jnp.reshape(x, x.shape[:-1] + (size, n))
            return jnp.moveaxis(x, -2, 0)

        def unfold_first(x):  # (B * n, ...) -> (B, n, ...)
            return jnp.reshape(x, (size, n) + x.shape[1:])

        out = _Raw(
            counts=unfold_last(raw.counts),
            spike_times=unfold_first(raw.spike_times),
            num_spikes=unfold_last(raw.num_spikes),
            final_state=jax.tree.map(unfold_last, raw.final_state),
            interval_states=jax.tree.map(unfold_last, raw.interval_states),
            counters=jax.tree.map(unfold_last, raw.counters),
            exhausted=unfold_last(raw.exhausted),
            root_fail=unfold_last(raw.root_fail),
        )
        return out, jax.tree.map(lambda _: True, out)

    return run(dynamics, currents, interval, state)


def uses_closed_form(dynamics, solver) -> bool:
    """Whether a run walks the model's closed-form events (no step control)."""
    return (
        isinstance(solver, Exact)
        and solver.closed_form_events
        and isinstance(dynamics, AbstractClosedFormDynamics)
    )


def _replay(
    dynamics: AbstractClosedFormDynamics,
    currents,
    interval,
    state,
    counts,
    num_spikes,
    cfg: _Config,
    surrogate: AbstractSurrogate,
):
    """The simulation written out in closed form with every interval's spike count
    held at its forward value: differentiable, and equal to the forward pass."""

    def one_interval(y, xs):
        current, count = xs
        rep = dynamics.replay_interval(y, current, interval, count)
        spiked = count >= 1
        decisions = surrogate_zero(rep.next_margin, surrogate) + jnp.where(
            spiked, surrogate_zero(rep.last_margin, surrogate), 0.0
        )
        keep = rep.y_end if cfg.keep_interval_states else None
        return rep.y_end, (rep.first, rep.period, decisions, keep)

    y, (first, period, decisions, states) = lax.scan(
        one_interval, state, (currents, counts)
    )
    soft_counts = counts.astype(currents.dtype) + decisions
    if cfg.max_spikes is None:
        spike_times = jnp.zeros((currents.shape[1], 0), currents.dtype)
    else:
        spike_times = _gather_spike_times(
            first, period, counts, num_spikes, interval, cfg.max_spikes
        )
    return soft_counts, spike_times, y, states


def _gather_spike_times(first, period, counts, num_spikes, interval, max_spikes):
    """Spike `j` of neuron `i` from its interval's first spike and period."""
    slots = jnp.arange(max_spikes)
    cum = jnp.cumsum(counts, axis=0)  # (T, n): spikes up to and including interval k

    def per_neuron(cum_i, first_i, period_i, total_i):
        k = jnp.searchsorted(cum_i, slots, side="right")
        k = jnp.minimum(k, cum_i.shape[0] - 1)
        before = jnp.where(k > 0, cum_i[jnp.maximum(k - 1, 0)], 0)
        m = (slots - before).astype(first_i.dtype)
        t = k.astype(first_i.dtype) * interval + first_i[k] + m * period_i[k]
        return jnp.where(slots < total_i, t, jnp.inf)

    return jax.vmap(per_neuron, in_axes=(1, 1, 1, 0))(cum, first, period, num_spikes)


@eqx.filter_custom_jvp
def _closed_form_run(dynamics, currents, interval, state, *, cfg, surrogate) -> _Raw:
    del surrogate
    return _run_folded(dynamics, Exact(), currents, interval, state, cfg)


@_closed_form_run.def_jvp
def _closed_form_run_jvp(primals, tangents, *, cfg, surrogate):
    # The forward values come from the event loop; the tangents from the closed
    # form with the spike structure held fixed (the implicit-function derivative of
    # every crossing time, through every reset).
    raw = _closed_form_run(*primals, cfg=cfg, surrogate=surrogate)
    counts = jax.lax.stop_gradient(raw.counts).astype(jnp.int32)
    num_spikes = raw.num_spikes

    def replay(dynamics, currents, interval, state):
        return _replay(
            dynamics, currents, interval, state, counts, num_spikes, cfg, surrogate
        )

    tangents = jax.tree.map(
        lambda t, p: jnp.zeros_like(p) if t is None and p is not None else t,
        tangents,
        primals,
        is_leaf=lambda x: x is None,
    )
    _, (t_counts, t_times, t_final, t_states) = jax.jvp(replay, primals, tangents)
    no_tangent = _Counters(None, None, None, None)
    t_raw = _Raw(t_counts, t_times, None, t_final, t_states, no_tangent, None, None)
    return raw, t_raw


def integrate(
    dynamics: AbstractDynamics,
    solver: AbstractSolver,
    weight: Float[Array, "n_neurons n_inputs"],
    inputs: Float[Array, "time n_inputs"],
    interval: Float[Array, ""],
    state: State,
    *,
    max_spikes: int | None,
    max_steps: int,
    dt_init: float,
    dt_min: float,
    dt_max: float,
    rtol: float,
    atol: float,
    max_root_iters: int,
    keep_interval_states: bool = True,
    surrogate: AbstractSurrogate | None = None,
) -> Solution:
    """Simulate a layer over consecutive intervals of constant input.

    Interval `k` spans `[k * interval, (k + 1) * interval)` ms and drives the neurons
    with the current `weight @ inputs[k]`. Arguments are validated by the caller;
    traced values that are invalid (NaN/inf, a non-positive time constant, ...) are
    reported in the solution's `result`. `max_spikes=None` records no spike times;
    `keep_interval_states=False` leaves `interval_states` as None (saves memory).

    Differentiable (closed-form models with the exact solver): spike times, states
    and voltages get exact gradients; counts get the `surrogate` gradient (default
    [`ArctanSurrogate`][]).
    """
    dtype = jnp.result_type(weight, inputs)
    dynamics = dynamics.astype(dtype)
    weight = weight.astype(dtype)
    inputs = inputs.astype(dtype)
    interval = jnp.asarray(interval, dtype)
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)
    currents = inputs @ weight.T
    cfg = _Config(
        max_spikes,
        max_steps,
        dt_init,
        dt_min,
        dt_max,
        rtol,
        atol,
        max_root_iters,
        keep_interval_states,
    )

    params = jax.tree.leaves((dynamics.parameters(), weight, inputs, state))
    nonfinite = jnp.zeros((), bool)
    for leaf in params:
        nonfinite = nonfinite | ~jnp.all(jnp.isfinite(leaf))
    invalid = dynamics.invalid(state) | (interval <= 0) | ~jnp.isfinite(interval)
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_input, RESULTS.successful)
    result = update_result(result, invalid, RESULTS.invalid_parameters)

    if uses_closed_form(dynamics, solver):
        surrogate = ArctanSurrogate() if surrogate is None else surrogate
        raw = _closed_form_run(
            dynamics, currents, interval, state, cfg=cfg, surrogate=surrogate
        )
    else:
        args = eqxi.nondifferentiable(
            (dynamics, currents, interval, state),
            msg=(
                "Gradients of a simulation are available for closed-form models "
                "with the Exact solver (such as ODELIFDynamics, the default); the "
                f"{type(solver).__name__} path with {type(dynamics).__name__} "
                "cannot be differentiated yet."
            ),
        )
        dyn, cur, itv, st = args
        raw = _run_folded(dyn, solver, cur, itv, st, cfg)

    exhausted, root_fail = jnp.any(raw.exhausted), jnp.any(raw.root_fail)
    result = update_result(result, exhausted, RESULTS.max_steps_reached)
    result = update_result(result, root_fail, RESULTS.crossing_search_failed)
    if max_spikes is not None:
        overflow = jnp.any(raw.num_spikes > max_spikes)
        result = update_result(result, overflow, RESULTS.spike_buffer_full)
    counters = raw.counters
    stats = dict(
        num_steps=counters.num_steps,
        num_rejected_steps=counters.num_rejected_steps,
        num_crossings=counters.num_crossings,
        num_dt_min_steps=counters.num_dt_min_steps,
        max_steps=jnp.asarray(max_steps),
    )
    return Solution(
        counts=raw.counts,
        spike_times=raw.spike_times,
        num_spikes=raw.num_spikes,
        final_state=raw.final_state,
        interval_states=raw.interval_states,
        stats=stats,
        result=result,
        interval=interval,
    )
