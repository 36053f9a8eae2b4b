"""The integration loop: intervals of constant input, steps and crossings inside."""

import dataclasses

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

# Checkpoints of the differentiable adaptive loop (per interval): its steps are
# recomputed from them in the backward pass.
_CHECKPOINTS = 32

# A crossing on a step's dense output is refined by a Newton step on the solver's own
# solution; a refinement larger than this fraction of the step means the dense output
# does not represent the step (e.g. it overshot into a blow-up), and the crossing is
# searched on the solver's sub-steps instead.
_TRUST = 0.01

# After a reset, the first step is at least this fraction of the largest step taken
# since the previous reset.
_RESTART = 0.5

# Crossings are located on subsets of neurons of this size: at least _MIN_CHUNK, and
# at least 1/_CHUNK_DIVISOR of the population (more subsets if more neurons cross).
_MIN_CHUNK = 64
_CHUNK_DIVISOR = 32
# Lanes per row of the two-level prefix sum that picks them.
_ROW = 128


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


def _keep_tangent(mask, tree):
    """`tree` unchanged in value, its tangents kept on the lanes where `mask` holds
    and cut on the others (before any arithmetic: a lane that overflowed then gives
    no `0 * inf` in reverse mode)."""

    def keep(a):
        # Per-neuron leaves only (a model's other array parameters, which no lane
        # owns, pass through).
        if not eqx.is_inexact_array(a) or jnp.shape(a)[:1] != mask.shape:
            return a
        return jnp.where(_expand(mask, a), a, lax.stop_gradient(a))

    return jax.tree.map(keep, tree)


def _first_lanes(mask, size):
    """The indices of the first `size` lanes where `mask` holds, in order, padded with
    `n` (no lane) where fewer hold. A two-level prefix sum (rows of `_ROW` lanes) is
    cheaper on CPU than one over all `n` lanes."""
    n = mask.shape[0]
    row = min(n, _ROW)
    rows = -(-n // row)
    m = jnp.pad(mask, (0, rows * row - n)).reshape(rows, row).astype(jnp.int32)
    per_row = jnp.sum(m, axis=1)
    rank = (jnp.cumsum(per_row) - per_row)[:, None] + jnp.cumsum(m, axis=1) - m
    rank = rank.reshape(-1)[:n]
    slot = jnp.where(mask & (rank < size), rank, size)
    lanes = jnp.arange(n, dtype=jnp.int32)
    return jnp.full((size,), n, jnp.int32).at[slot].set(lanes, mode="drop")


def _take_lanes(dynamics, j, n):
    """The model restricted to the neurons `j` (scalar parameters stay scalar)."""

    def take(p):
        if eqx.is_array(p) and jnp.ndim(p) >= 1 and p.shape[0] == n:
            return p[j]
        return p

    return jax.tree.map(take, dynamics)


def _per_lane(dynamics, n):
    """The model with every scalar parameter broadcast to one value per neuron."""

    def lane(p):
        if eqx.is_inexact_array(p) and jnp.ndim(p) == 0:
            return jnp.broadcast_to(p, (n,))
        return p

    return jax.tree.map(lane, dynamics)


class _StepOutcome(eqx.Module):
    """What one loop iteration of [`_adaptive_interval`][] decided, lane by lane."""

    active: Array
    accept: Array
    crossed: Array
    reaches_end: Array
    y1: State
    t_star: Array  # crossing time (crossed lanes)
    y_star: State  # state at the crossing, before the reset (crossed lanes)
    s_eval: Array  # next to the crossing, before any blow-up (crossed lanes)
    ok: Array
    h_next: Array
    at_dt_min: Array
    error_norm: Array


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
    differentiable: bool = False,
):
    """Integrate one interval with per-neuron adaptive steps and located crossings.

    With `differentiable=True` the loop is reverse-mode differentiable: the step
    sizes and the search are held constant, each accepted step is differentiated as
    the solver computed it, and each crossing time by the implicit-function theorem
    at the state where the search found it.
    """
    n = current.shape[0]
    dtype = current.dtype
    eps = jnp.finfo(dtype).eps
    zeros = jnp.zeros((n,), jnp.int32)
    h0 = jnp.full((n,), min(dt_init, dt_max), dtype)
    t0 = jnp.zeros((n,), dtype)

    def decide(dynamics, current, interval, t, y, h, attempts, prev) -> _StepOutcome:
        """One step attempt per neuron: its acceptance, and any crossing in it."""
        root_atol = 4 * eps * interval
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
            h_prev=prev[0],
            error_prev=prev[1],
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

        def locate(j, lanes):
            """Crossings of the neurons `j` (a subset; `lanes` marks the real ones):
            time, state before the reset, where that state was evaluated, and
            whether the search converged."""

            def take(a):
                return a[j]

            dyn = _take_lanes(dynamics, j, n)
            t_, y_, cur_ = take(t), jax.tree.map(take, y), take(current)
            step_, upper_, g0_, g_upper_ = map(take, (step, upper, g0, g_upper))
            y1_, dense_ = jax.tree.map(take, prop.y1), jax.tree.map(take, prop.dense)

            def sub_step(s):
                return solver.step(dyn, t_, y_, cur_, s - t_)[0]

            def search(fn, active):
                return _bracket_search(
                    fn,
                    t_,
                    upper_,
                    g0_,
                    g_upper_,
                    active,
                    rtol=0.0,
                    atol=root_atol,
                    max_iters=max_root_iters,
                )

            # On the step's dense output (cheap to evaluate; the exact flow itself
            # for an exact solver), then one solver sub-step to the crossing.
            safe_step = jnp.where(step_ > 0, step_, 1)

            def on_dense(s):
                fraction = jnp.clip((s - t_) / safe_step, 0, 1)
                return dyn.threshold(solver.evaluate_dense(dyn, dense_, fraction))

            finite1 = _all_finite(y1_)
            t_star, ok, _ = search(on_dense, lanes & finite1)
            y_star = sub_step(t_star)
            trusted = finite1
            if not prop.exact:
                # The dense output is one order below the step: a Newton step on
                # the solver's own solution makes the crossing time as accurate as
                # the step; the state follows to first order in the (tiny) shift.
                g_star = dyn.threshold(y_star)
                f_star = dyn.vector_field(t_star, y_star, cur_)
                _, g_dot = jax.jvp(dyn.threshold, (y_star,), (f_star,))
                safe_dot = jnp.where(g_dot > 0, g_dot, 1)
                newton = t_star - g_star / safe_dot
                shift = newton - t_star
                # The step and its dense output must agree on the crossing (to a
                # small fraction of the step); else, as in a step that overshot
                # into a blow-up, the dense output is not trusted.
                trusted = trusted & (g_dot > 0) & jnp.isfinite(newton)
                trusted = trusted & (newton > t_) & (newton <= upper_)
                trusted = trusted & (jnp.abs(shift) <= _TRUST * step_)
                shift = jnp.where(trusted, shift, 0.0)
                t_star = t_star + shift
                y_star = jax.tree.map(
                    lambda a, f: a + _expand(shift, a) * f, y_star, f_star
                )
            # A step that blew up (NaN) or is not trusted: search on the solver's own
            # sub-steps, and take the state from just below the crossing.
            untrusted = lanes & ~trusted

            def on_sub_steps(_):
                t_b, ok_b, below_b = search(
                    lambda s: dyn.threshold(sub_step(s)), untrusted
                )
                y_b = sub_step(below_b)
                return (
                    jnp.where(untrusted, t_b, t_star),
                    where_tree(untrusted, y_b, y_star),
                    jnp.where(untrusted, below_b, t_star),
                    jnp.where(untrusted, ok_b, ok),
                )

            def as_is(_):
                return t_star, y_star, t_star, ok

            return lax.cond(jnp.any(untrusted), on_sub_steps, as_is, None)

        # Few neurons cross in one step: their crossings are located on a compact
        # subset of `chunk` neurons at a time (as many subsets as needed).
        chunk = min(n, max(_MIN_CHUNK, n // _CHUNK_DIVISOR))

        def next_chunk(carry):
            remaining, t_star, y_star, s_eval, ok = carry
            # The first `chunk` remaining neurons (index n: no neuron).
            idx = _first_lanes(remaining, chunk)
            real = idx < n
            out = locate(jnp.minimum(idx, n - 1), real)

            def put(full, part):  # padding (index n) is dropped
                return full.at[idx].set(part, mode="drop")

            t_star, s_eval, ok = (
                put(t_star, out[0]),
                put(s_eval, out[2]),
                put(ok, out[3]),
            )
            y_star = jax.tree.map(put, y_star, out[1])
            remaining = put(remaining, jnp.zeros((chunk,), bool))
            return remaining, t_star, y_star, s_eval, ok

        init = (crossed, t1, prop.y1, t, jnp.ones((n,), bool))
        _, t_star, y_star, s_eval, ok = lax.while_loop(
            lambda c: jnp.any(c[0]), next_chunk, init
        )
        return _StepOutcome(
            active,
            accept,
            crossed,
            reaches_end,
            prop.y1,
            t_star,
            y_star,
            s_eval,
            ok,
            prop.h_next,
            prop.at_dt_min,
            prop.error_norm,
        )

    if differentiable:
        lanes = _per_lane(dynamics, n)
        fixed = lax.stop_gradient((dynamics, current, interval))

    def cond_fun(carry):
        t, _, _, _, _, attempts, _, _, _, _ = carry
        return jnp.any((t < interval) & (attempts < max_steps))

    def body_fun(carry):
        t, y, h, count, counters, attempts, buffer, root_fail, h_big, prev = carry
        if not differentiable:
            out = decide(dynamics, current, interval, t, y, h, attempts, prev)
            t1 = jnp.where(out.reaches_end, interval, t + h)
            y1, t_star, y_star = out.y1, out.t_star, out.y_star
        else:
            # The decisions are taken on constants; the values that are kept are
            # recomputed differentiably on the lanes that keep them.
            out = decide(*fixed, *lax.stop_gradient((t, y)), h, attempts, prev)
            t1 = jnp.where(out.reaches_end, interval, t + h)
            # One step per lane, differentiated where its end is kept: to the step's
            # end, or to the crossing (below it, if the step blew up).
            used = out.accept
            length = jnp.where(out.crossed, out.s_eval, t1) - t
            dyn, t_u, y_u, cur_u, length = _keep_tangent(
                used, (lanes, t, y, current, length)
            )
            y1 = solver.step(dyn, t_u, y_u, cur_u, length)[0]
            t_star, y_star = _crossing_tangents(dyn, cur_u, y1, out)
        y_new = where_tree(
            out.crossed, dynamics.reset(y_star), where_tree(out.accept, y1, y)
        )
        t_new = jnp.where(out.crossed, t_star, jnp.where(out.accept, t1, t))
        h_new = jnp.where(out.active, out.h_next, h)
        # After a reset the neuron is back in its slow regime: restart from a step
        # near the largest one it took before the spike, not from the small one
        # that crossed the upswing (the controller rejects it if it is too large).
        h_new = jnp.where(out.crossed, jnp.maximum(h_new, _RESTART * h_big), h_new)
        # Each neuron's step history since its last reset (a reset clears it): the
        # largest accepted step, for the restart above, and the last one with its
        # error, for the predictive controller.
        taken = lax.stop_gradient(t1 - t)
        h_big, prev = jax.tree.map(
            lambda new, old: jnp.where(
                out.crossed, 0.0, jnp.where(out.accept, new, old)
            ),
            (jnp.maximum(h_big, taken), (taken, out.error_norm)),
            (h_big, prev),
        )
        if buffer is not None:
            buffer = buffer.record(out.crossed, t_start + t_star)
        counters = counters + _Counters(
            out.accept.astype(jnp.int32),
            (out.active & ~out.accept).astype(jnp.int32),
            out.crossed.astype(jnp.int32),
            (out.accept & out.at_dt_min).astype(jnp.int32),
        )
        root_fail = root_fail | (out.crossed & ~out.ok)
        attempts = attempts + out.active
        return (
            t_new,
            y_new,
            h_new,
            count + out.crossed,
            counters,
            attempts,
            buffer,
            root_fail,
            h_big,
            prev,
        )

    init = (
        t0,
        y,
        h0,
        zeros,
        _Counters.zeros(n),
        zeros,
        buffer,
        jnp.zeros((n,), bool),
        jnp.zeros((n,), dtype),
        (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype)),
    )
    if differentiable:
        # Reverse-mode differentiable, recomputing between checkpoints.
        final = eqxi.while_loop(
            cond_fun,
            body_fun,
            init,
            max_steps=max_steps,
            kind="checkpointed",
            checkpoints=min(max_steps, _CHECKPOINTS),
        )
    else:
        final = lax.while_loop(cond_fun, body_fun, init)
    t, y, _, count, counters, _, buffer, root_fail, _, _ = final
    exhausted = t < interval
    return y, count, buffer, counters, exhausted, root_fail


def _crossing_tangents(dynamics, current, y_s, out: _StepOutcome):
    """The crossing time and state of `out`, unchanged in value, with the tangents
    of the implicit-function theorem: with `y_s` the solver's state at (or, past a
    blow-up, just below) the crossing, `dt* = -dg(y_s) / (grad g . f)` and
    `dy* = dy_s + f dt*`."""
    g_s = dynamics.threshold(y_s)
    f_s = lax.stop_gradient(dynamics.vector_field(out.s_eval, y_s, current))
    _, g_dot = jax.jvp(dynamics.threshold, (y_s,), (f_s,))
    g_dot = lax.stop_gradient(g_dot)
    usable = out.crossed & (g_dot > 0) & jnp.isfinite(g_dot)
    safe_dot = jnp.where(usable, g_dot, 1)
    f_s = jax.tree.map(lambda f: jnp.where(_expand(usable, f), f, 0), f_s)
    dt = jnp.where(usable, -(g_s - lax.stop_gradient(g_s)) / safe_dot, 0.0)
    t_star = out.t_star + dt
    y_star = jax.tree.map(
        lambda v, s, f: v + (s - lax.stop_gradient(s)) + _expand(dt, f) * f,
        out.y_star,
        y_s,
        f_s,
    )
    return t_star, y_star


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

    def step_settings(self) -> dict:
        """The keyword arguments of [`_adaptive_interval`][]'s step control."""
        return dict(
            max_steps=self.max_steps,
            dt_init=self.dt_init,
            dt_min=self.dt_min,
            dt_max=self.dt_max,
            rtol=self.rtol,
            atol=self.atol,
            max_root_iters=self.max_root_iters,
        )


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
                **cfg.step_settings(),
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


def _adaptive_run(dynamics, solver, currents, interval, state, cfg, surrogate):
    """[`_run_folded`][] with a reverse-mode derivative.

    The forward pass keeps each interval's starting state. The backward pass walks
    the intervals in reverse: it reruns each one with the differentiable loop (see
    [`_adaptive_interval`][]) and pulls the cotangents back through it, so memory
    grows with intervals, and within an interval with the loop's checkpoints.
    """

    @jax.custom_vjp
    def run(dynamics, currents, interval, state):
        return _run_folded(dynamics, solver, currents, interval, state, cfg)

    def fwd(dynamics, currents, interval, state):
        # Differentiated: the interval states are kept (they are the residuals).
        fwd_cfg = dataclasses.replace(cfg, keep_interval_states=True)
        raw = _run_folded(dynamics, solver, currents, interval, state, fwd_cfg)
        ends = raw.interval_states
        starts = jax.tree.map(
            lambda s, e: jnp.concatenate([s[None], e[:-1]]), state, ends
        )
        counts = raw.counts.astype(jnp.int32)
        seen = jnp.cumsum(counts, axis=0) - counts  # spikes before each interval
        if not cfg.keep_interval_states:
            raw = dataclasses.replace(raw, interval_states=None)
        return raw, (dynamics, currents, interval, starts, seen)

    def bwd(res, ct):
        dynamics, currents, interval, starts, seen = res
        n = currents.shape[1]
        dtype = currents.dtype
        ct_times = ct.spike_times
        has_buffer = cfg.max_spikes is not None

        def one_interval(params, y, k, num):
            dynamics, current, interval = params
            buffer = None
            if has_buffer:
                # Only the slots written in this interval matter: their values are
                # recomputed, the other slots pass through untouched.
                buffer = _Buffer(jnp.zeros((n, cfg.max_spikes), dtype), num)
            y, count, buffer, *_ = _adaptive_interval(
                dynamics,
                solver,
                y,
                current,
                k.astype(dtype) * interval,
                interval,
                buffer,
                **cfg.step_settings(),
                differentiable=True,
            )
            soft = count.astype(dtype) + surrogate_zero(
                dynamics.threshold(y), surrogate
            )
            return y, soft, None if buffer is None else buffer.times

        def step(carry, xs):
            ct_y, ct_dyn, ct_interval = carry
            k, current, y0, num, ct_count, ct_state = xs
            if ct_state is not None:
                ct_y = jax.tree.map(jnp.add, ct_y, ct_state)
            params = (dynamics, current, interval)
            _, vjp = jax.vjp(lambda p, y: one_interval(p, y, k, num), params, y0)
            (d_dyn, d_current, d_interval), ct_y = vjp((ct_y, ct_count, ct_times))
            ct_dyn = jax.tree.map(jnp.add, ct_dyn, d_dyn)
            return (ct_y, ct_dyn, ct_interval + d_interval), d_current

        zeros = jax.tree.map(jnp.zeros_like, (dynamics, interval))
        ks = jnp.arange(currents.shape[0])
        xs = (ks, currents, starts, seen, ct.counts, ct.interval_states)
        (ct_state, ct_dyn, ct_interval), ct_currents = lax.scan(
            step, (ct.final_state, *zeros), xs, reverse=True
        )
        return ct_dyn, ct_currents, ct_interval, ct_state

    run.defvjp(fwd, bwd)
    return run(dynamics, currents, interval, state)


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

    Differentiable: spike times, states and voltages get exact gradients; counts
    get the `surrogate` gradient (default [`ArctanSurrogate`][]). Closed-form models
    with the exact solver: forward and reverse mode, through the closed form with
    each interval's spike count held fixed (margins of the count decisions for the
    surrogate). Adaptive path: reverse mode only, through the solver's loop as it ran
    (see [`_adaptive_run`][]); the surrogate acts on the threshold function at each
    interval's end.
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
        surrogate = ArctanSurrogate() if surrogate is None else surrogate
        raw = _adaptive_run(dynamics, solver, currents, interval, state, cfg, surrogate)

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
