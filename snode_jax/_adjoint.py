"""How a run is differentiated: the closed form replayed with the spike counts held
fixed, or the adaptive loop rerun interval by interval in reverse."""

import abc

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._adaptive import AdaptiveLoop, AdaptiveState, StepOutcome
from ._closed_form import ClosedFormWalk
from ._crossing import Crossings, expand
from ._custom_types import State
from ._dynamics import AbstractClosedFormDynamics
from ._misc import running_max, running_sum, where_tree
from ._records import Counters, RawRun
from ._reverse import reverse_segments
from ._scan import AbstractIntegrator, RunConfig, interval_starts, run_folded
from ._solution import RESULTS
from ._surrogate import AbstractSurrogate, surrogate_zero


class AbstractAdjoint(eqx.Module):
    """Runs the interval scan with a derivative rule attached."""

    @abc.abstractmethod
    def run(
        self,
        integrator: AbstractIntegrator,
        dynamics,
        currents,
        interval,
        state,
        cfg: RunConfig,
        surrogate: AbstractSurrogate,
    ) -> RawRun:
        """The forward values of [`run_folded`][], differentiable."""


# -- closed form -------------------------------------------------------------------


def _gather_spike_times(first, period, counts, num_spikes, starts, max_spikes):
    """Spike `j` of neuron `i` from its interval's first spike and period."""
    num_intervals, n = counts.shape
    # (T, n): the slot of each interval's first spike.
    before = running_sum(counts, axis=0) - counts
    # Which interval each slot's spike came from: every interval with spikes marks
    # its first slot (these are distinct), and a running maximum along the slots
    # fills in the rest. (One scatter of T x n marks, where a binary search per slot
    # cost three times as much.)
    k = jnp.broadcast_to(
        jnp.arange(num_intervals, dtype=jnp.int32)[:, None], (num_intervals, n)
    )
    target = jnp.where((counts > 0) & (before < max_spikes), before, max_spikes)
    cols = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :], (num_intervals, n))
    marks = jnp.zeros((n, max_spikes), jnp.int32)
    marks = marks.at[cols, target].max(k, mode="drop")
    k = running_max(marks, axis=1)  # (n, max_spikes)
    rows = jnp.arange(n, dtype=jnp.int32)[:, None]
    slots = jnp.arange(max_spikes, dtype=jnp.int32)[None, :]
    m = (slots - before[k, rows]).astype(first.dtype)
    t = starts[k] + first[k, rows] + m * period[k, rows]
    return jnp.where(slots < num_spikes[:, None], t, jnp.inf)


def _intervals_in_closed_form(surrogate, counts, dynamics, currents, interval, starts):
    """Every interval written out in closed form from its own start state, with its
    spike count held at its forward value: the end states, the first spikes and
    periods, and the (zero-valued) surrogate terms of the counts. Neurons and
    intervals are independent here: this is one elementwise computation over
    `(time, n_neurons)`, not a scan."""
    lengths = jnp.broadcast_to(interval, (currents.shape[0],))

    def one_interval(y, current, length, count):
        rep = dynamics.replay_interval(y, current, length, count)
        spiked = count >= 1
        decisions = surrogate_zero(rep.next_margin, surrogate) + jnp.where(
            spiked, surrogate_zero(rep.last_margin, surrogate), 0.0
        )
        return rep.y_end, rep.first, rep.period, decisions

    return jax.vmap(one_interval)(starts, currents, lengths, counts)


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


def _closed_form_tangents(
    dynamics,
    currents,
    interval,
    state,
    tangents,
    starts,
    counts,
    num_spikes,
    cfg,
    surrogate,
):
    """The tangents of the run (soft counts, spike times, final state, interval
    states) for `tangents` of `(dynamics, currents, interval, state)`, with every
    interval's count held fixed, linearised at the forward run's interval `starts`.

    Each interval's closed form depends on the earlier ones only through its start
    state, so its derivatives are taken for all intervals at once: one tangent from
    the parameters, current and length, and one per leaf of the state (each neuron's
    own, the model being per neuron). Only the chain of start-state tangents through
    the intervals is a scan, of one multiply-add per state leaf pair and neuron; its
    transpose (reverse mode) is as cheap."""
    f = lambda d, c, i, y: _intervals_in_closed_form(surrogate, counts, d, c, i, y)
    t_dyn, t_cur, t_int, t_state = tangents
    zero_starts = jax.tree.map(jnp.zeros_like, starts)
    primal_out, direct = jax.jvp(
        f, (dynamics, currents, interval, starts), (t_dyn, t_cur, t_int, zero_starts)
    )
    f_y = lambda y: f(dynamics, currents, interval, y)
    start_leaves, start_def = jax.tree.flatten(starts)
    columns = []
    for j in range(len(start_leaves)):
        unit = [
            jnp.ones_like(x) if k == j else jnp.zeros_like(x)
            for k, x in enumerate(start_leaves)
        ]
        columns.append(
            jax.jvp(f_y, (starts,), (jax.tree.unflatten(start_def, unit),))[1]
        )
    y_jac = [c[0] for c in columns]
    t_starts, t_ends, t_final = _chain_tangents(y_jac, direct[0], t_state)
    t_start_leaves = jax.tree.leaves(t_starts)

    def through_start(k):
        out = direct[k]
        for col, t_j in zip(columns, t_start_leaves):
            out = out + col[k] * t_j
        return out

    t_first, t_period, t_counts = through_start(1), through_start(2), through_start(3)
    if cfg.max_spikes is None:
        t_times = jnp.zeros((currents.shape[1], 0), currents.dtype)
    else:
        _, first, period, _ = primal_out
        num_intervals = currents.shape[0]

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


@eqx.filter_custom_jvp
def _closed_form_run(dynamics, currents, interval, state, *, walk, cfg, surrogate):
    del surrogate
    return run_folded(walk, dynamics, currents, interval, state, cfg)


@_closed_form_run.def_jvp
def _closed_form_run_jvp(primals, tangents, *, walk, cfg, surrogate):
    # The forward values come from the event walk; the tangents from the closed form
    # with the spike structure held fixed (the implicit-function derivative of every
    # crossing time, through every reset), linearised at the walk's interval states.
    dynamics, currents, interval, state = primals
    keep = RunConfig(cfg.max_spikes, keep_interval_states=True)
    raw = _closed_form_run(*primals, walk=walk, cfg=keep, surrogate=surrogate)
    # Not cut from the primals: the starts are differentiable through this rule
    # itself, so that the tangents can be differentiated again (second order).
    ends = raw.interval_states
    num_intervals = currents.shape[0]
    starts = jax.tree.map(
        lambda s, e: jnp.concatenate([s[None], e])[:num_intervals], state, ends
    )
    if not cfg.keep_interval_states:
        raw = eqx.tree_at(
            lambda r: r.interval_states, raw, None, is_leaf=lambda x: x is None
        )
    counts = jax.lax.stop_gradient(raw.counts).astype(jnp.int32)
    tangents = jax.tree.map(
        lambda t, p: jnp.zeros_like(p) if t is None and p is not None else t,
        tangents,
        primals,
        is_leaf=lambda x: x is None,
    )
    t_counts, t_times, t_final, t_states = _closed_form_tangents(
        dynamics,
        currents,
        interval,
        state,
        tangents,
        starts,
        counts,
        raw.num_spikes,
        cfg,
        surrogate,
    )
    no_tangent = Counters(None, None)  # pyright: ignore[reportArgumentType]
    t_raw = RawRun(t_counts, t_times, None, t_final, t_states, no_tangent, None, None)  # pyright: ignore[reportArgumentType]
    return raw, t_raw


class ClosedFormAdjoint(AbstractAdjoint):
    """Forward and reverse mode for the closed-form walk: the tangents come from
    the model's `replay_interval` with each interval's spike count held at its
    forward value; counts get the surrogate derivative of the margins of their two
    threshold decisions."""

    def run(self, integrator, dynamics, currents, interval, state, cfg, surrogate):
        assert isinstance(integrator, ClosedFormWalk)
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        return _closed_form_run(
            dynamics,
            currents,
            interval,
            state,
            walk=integrator,
            cfg=cfg,
            surrogate=surrogate,
        )


# -- adaptive loop -----------------------------------------------------------------


def _keep_tangent(mask, tree, per_neuron):
    """`tree` unchanged in value, its tangents kept on the lanes where `mask` holds
    and cut on the others (before any arithmetic: a lane that overflowed then gives
    no `0 * inf` in reverse mode). Only the leaves marked in `per_neuron` are
    per-lane; the others pass through."""

    def keep(a):
        if not eqx.is_inexact_array(a) or jnp.ndim(a) == 0:
            return a
        return jnp.where(expand(mask, a), a, lax.stop_gradient(a))

    def keep_subtree(lane, subtree):
        return jax.tree.map(keep, subtree) if lane else subtree

    return jax.tree.map(keep_subtree, per_neuron, tree)


def _per_lane(dynamics, n):
    """The model with every scalar per-neuron parameter broadcast to one value per
    neuron (so that each lane owns its tangent)."""

    def lane(p, per_neuron):
        if per_neuron and eqx.is_inexact_array(p) and jnp.ndim(p) == 0:
            return jnp.broadcast_to(p, (n,))
        return p

    return jax.tree.map(lane, dynamics, dynamics.per_neuron_mask())


def _crossing_tangents(dynamics, current, y_s, crossed, c):
    """The crossing time and state of `out`, unchanged in value, with the tangents
    of the implicit-function theorem: with `y_s` the solver's state at (or, past a
    blow-up, just below) the crossing, `dt* = -dg(y_s) / (grad g . f)` and
    `dy* = dy_s + f dt*`."""
    g_s = dynamics.threshold(y_s)
    f_s = lax.stop_gradient(dynamics.vector_field(c.s_eval, y_s, current))
    _, g_dot = jax.jvp(dynamics.threshold, (y_s,), (f_s,))
    g_dot = lax.stop_gradient(g_dot)
    usable = crossed & (g_dot > 0) & jnp.isfinite(g_dot)
    safe_dot = jnp.where(usable, g_dot, 1)
    f_s = jax.tree.map(lambda f: jnp.where(expand(usable, f), f, 0), f_s)
    dt = jnp.where(usable, -(g_s - lax.stop_gradient(g_s)) / safe_dot, 0.0)
    t_star = c.t_star + dt
    y_star = jax.tree.map(
        lambda v, s, f: v + (s - lax.stop_gradient(s)) + expand(dt, f) * f,
        c.y_star,
        y_s,
        f_s,
    )
    return t_star, y_star


class _StepRecord(eqx.Module):
    """What the backward pass keeps of one iteration of the adaptive loop: the time,
    next step, state and spike count it started from, and its decisions."""

    t: Array
    h: Array
    y: State
    count: Array
    accept: Array
    crossed: Array
    reaches_end: Array
    crossings: Crossings


def _record(st: AdaptiveState, out: StepOutcome) -> _StepRecord:
    return _StepRecord(
        st.t,
        st.h,
        st.y,
        st.count,
        out.accept,
        out.crossed,
        out.reaches_end,
        out.crossings,
    )


def _linearised_iteration(loop: AdaptiveLoop, rec: _StepRecord, params, t, y):
    """One iteration of the loop as a differentiable function of the parameters
    `(dynamics, current, interval, t_start)` and the time and state it starts from,
    with its decisions (`rec`) held fixed: `(t, y)` after it, and the run time of
    the spike it records (where it crosses). Each accepted step is differentiated as
    the solver computed it; each crossing time by the implicit-function theorem at
    the state where the search found it."""
    dynamics, current, interval, t_start = params
    n = current.shape[0]
    lanes = _per_lane(dynamics, n)
    # The step's end as a function of the (differentiated) interval length.
    t1 = jnp.where(rec.reaches_end, interval, t + rec.h)
    # One step per lane, differentiated where its end is kept: to the step's end,
    # or to the crossing (below it, if the step blew up).
    end = jnp.where(rec.crossed, rec.crossings.s_eval, t1)
    length = end - t
    per_neuron = (lanes.per_neuron_mask(), True, True, True, True)
    dyn, t_u, y_u, cur_u, length = _keep_tangent(
        rec.accept, (lanes, t, y, current, length), per_neuron
    )
    y1 = loop.stepper.step(dyn, t_u, t_u + length, y_u, cur_u)[0]
    t_star, y_star = _crossing_tangents(dyn, cur_u, y1, rec.crossed, rec.crossings)
    y_new = where_tree(
        rec.crossed, dynamics.reset(y_star), where_tree(rec.accept, y1, y)
    )
    t_new = jnp.where(rec.crossed, t_star, jnp.where(rec.accept, t1, t))
    return t_new, y_new, t_start + t_star


def _interval_backward(
    loop: AdaptiveLoop, surrogate, params, y0, num, ct_y, ct_count, ct_times
):
    """The cotangents of one interval of the adaptive loop: of its parameters
    `(dynamics, current, interval, t_start)` and of its start state `y0`, given
    those of its end state `ct_y`, of its soft counts `ct_count` and of the spike
    buffer `ct_times` (`None` without one; this interval's spikes go to slots `num`
    on); also its spike counts, to check against the forward run's.

    The loop is rerun without derivatives (so taking the forward run's decisions)
    and pulled back one iteration at a time ([`reverse_segments`][]).
    """
    dynamics, current, interval, t_start = params
    n = current.shape[0]
    dtype = current.dtype

    def advance(st):
        new, out = loop.advance(dynamics, current, interval, t_start, st)
        return new, _record(st, out)

    def linearised(p, x, rec):
        t_new, y_new, spike = _linearised_iteration(loop, rec, p, *x)
        return (t_new, y_new), spike

    def spike_cotangent(rec: _StepRecord):
        if ct_times is None:
            return jnp.zeros((n,), dtype)
        cap = ct_times.shape[1]
        slot = num + rec.count
        stored = rec.crossed & (slot < cap)
        picked = jnp.take_along_axis(
            ct_times, jnp.clip(slot, 0, max(cap - 1, 0))[:, None], axis=1
        )[:, 0]
        return jnp.where(stored, picked, 0)

    def end_cotangent(end: AdaptiveState):
        # The soft counts' surrogate term, from the end state.
        def soft_count(p, y):
            return surrogate_zero(p[0].threshold(y), surrogate)

        _, vjp = jax.vjp(soft_count, params, end.y)
        d_p, d_y = vjp(ct_count)
        return d_p, (jnp.zeros((n,), dtype), d_y)

    ct_params, (_, ct_y0), end, _ = reverse_segments(
        advance,
        lambda st: jnp.any(loop.running(interval, st)),
        linearised,
        lambda rec: (rec.t, rec.y),
        spike_cotangent,
        params,
        loop.start(y0, current, None),
        (jnp.zeros((n,), dtype), ct_y),
        loop.max_steps,
        end_cotangent=end_cotangent,
        # The solver-work counters are not needed to rerun a segment.
        checkpoint=lambda st: eqx.tree_at(lambda s: s.counters, st, None),
        restore=lambda st: eqx.tree_at(
            lambda s: s.counters,
            st,
            loop.zero_counters(n),
            is_leaf=lambda x: x is None,
        ),
    )
    return ct_params, ct_y0, end.count


class RerunAdjoint(AbstractAdjoint):
    """Reverse mode for the adaptive loop. The forward pass keeps each interval's
    starting state. The backward pass walks the intervals in reverse: it reruns
    each one, taking the same decisions (step sizes, acceptance, crossings), and
    pulls the cotangents back through its iterations one at a time: each accepted
    step differentiated as the solver computed it, each crossing time by the
    implicit-function theorem (see `_interval_backward`). Memory grows with the
    intervals, and within an interval with about twice the square root of
    `max_steps` iterations' states.

    The rerun must reproduce the forward spike counts (it takes the same decisions
    from the same state). Where it does not, its derivative is not that of the
    forward run: the gradient is NaN, and with `throw=True` the backward pass raises
    `RESULTS.gradient_rerun_mismatch`.
    """

    throw: bool = eqx.field(static=True, default=True)

    def run(self, integrator, dynamics, currents, interval, state, cfg, surrogate):
        assert isinstance(integrator, AdaptiveLoop)

        @jax.custom_vjp
        def run(dynamics, currents, interval, state):
            return run_folded(integrator, dynamics, currents, interval, state, cfg)

        def fwd(dynamics, currents, interval, state):
            # Differentiated: the interval states are kept (they are the residuals).
            fwd_cfg = RunConfig(cfg.max_spikes, keep_interval_states=True)
            raw = run_folded(integrator, dynamics, currents, interval, state, fwd_cfg)
            ends = raw.interval_states
            starts = jax.tree.map(
                lambda s, e: jnp.concatenate([s[None], e[:-1]]), state, ends
            )
            counts = raw.counts.astype(jnp.int32)
            seen = running_sum(counts, axis=0) - counts  # spikes before each interval
            if not cfg.keep_interval_states:
                raw = eqx.tree_at(lambda r: r.interval_states, raw, None)
            return raw, (dynamics, currents, interval, starts, seen, counts)

        def bwd(res, ct):
            dynamics, currents, interval, starts, seen, counts = res
            dtype = currents.dtype
            # Without a spike buffer the run's `spike_times` is an empty
            # `(n, 0)` array and the rerun records none (`times` is `None`): that
            # cotangent carries nothing, and the rerun's output has no leaf for it.
            ct_spike_times = None if cfg.max_spikes is None else ct.spike_times
            num_intervals = currents.shape[0]
            t_starts = interval_starts(interval, num_intervals)
            uniform = jnp.ndim(interval) == 0

            def step(carry, xs):
                ct_y, ct_dyn, ct_interval, later = carry
                k, current, y0, num, ct_count, ct_state = xs
                if ct_state is not None:
                    ct_y = jax.tree.map(jnp.add, ct_y, ct_state)
                length = interval if uniform else interval[k]
                # The interval's start time is differentiated too (spike times are
                # recorded from it): it is k * interval, or the sum of the earlier
                # lengths.
                params = (dynamics, current, length, t_starts[k])
                (d_dyn, d_current, d_length, d_start), ct_y, count = _interval_backward(
                    integrator,
                    surrogate,
                    params,
                    y0,
                    num,
                    ct_y,
                    ct_count,
                    ct_spike_times,
                )
                # The rerun must take the forward pass's decisions; if it does not
                # (its counts differ), its derivative is not that of the forward
                # run, and saying so beats a silently wrong gradient.
                same = jnp.all(count == counts[k])
                nan_if_differs = lambda a: jnp.where(same, a, jnp.nan)
                grads = (d_dyn, d_current, d_length, d_start, ct_y)
                grads = jax.tree.map(nan_if_differs, grads)
                if self.throw:
                    grads = eqx.error_if(
                        grads, ~same, RESULTS[RESULTS.gradient_rerun_mismatch]
                    )
                d_dyn, d_current, d_length, d_start, ct_y = grads
                ct_dyn = jax.tree.map(jnp.add, ct_dyn, d_dyn)
                if uniform:
                    ct_interval = ct_interval + d_length + k.astype(dtype) * d_start
                else:
                    # Interval k's length moves the start of every later interval.
                    ct_interval = ct_interval.at[k].add(d_length + later)
                    later = later + d_start
                return (ct_y, ct_dyn, ct_interval, later), d_current

            zeros = jax.tree.map(jnp.zeros_like, (dynamics, interval))
            ks = jnp.arange(num_intervals)
            xs = (ks, currents, starts, seen, ct.counts, ct.interval_states)
            init = (ct.final_state, *zeros, jnp.zeros((), dtype))
            (ct_state, ct_dyn, ct_interval, _), ct_currents = lax.scan(
                step, init, xs, reverse=True
            )
            return ct_dyn, ct_currents, ct_interval, ct_state

        run.defvjp(fwd, bwd)
        return run(dynamics, currents, interval, state)
