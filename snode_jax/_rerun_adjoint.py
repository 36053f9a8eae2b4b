"""Reverse mode for the adaptive loop: each interval rerun without derivatives and
pulled back one iteration at a time, its decisions held fixed."""

import dataclasses

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array

from ._adaptive import AdaptiveLoop, AdaptiveState, StepOutcome
from ._adjoint import AbstractAdjoint
from ._crossing import Crossings, recorded_crossing
from ._custom_types import State
from ._fold import run_folded
from ._misc import (
    any_nonfinite,
    expand,
    first_order_only,
    max_across_devices,
    running_sum,
    sum_where_invariant,
    tangent,
    tie_to,
    vary_like,
    where_tree,
)
from ._reverse import reverse_segments, segment_buffers
from ._scan import interval_starts
from ._solution import RESULTS
from ._surrogate import surrogate_zero


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
    dt = jnp.where(usable, -tangent(g_s) / safe_dot, 0.0)
    t_star = c.t_star + dt
    y_star = jax.tree.map(
        lambda v, s, f: v + tangent(s) + expand(dt, f) * f,
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


def _advance(loop: AdaptiveLoop, params, replay=None):
    """One iteration of the loop over the interval of `params`, and its record
    (`replay`: see `AdaptiveLoop.decide`)."""
    dynamics, current, interval, t_start = params

    def advance(st):
        new, out = loop.advance(dynamics, current, interval, t_start, st, replay)
        return new, _record(st, out)

    return advance


def _replay(record: Crossings | None, num, count):
    """For a rerun, the crossings the forward run kept in `record` (see
    `CrossingRecord`; this interval's `count` spikes per neuron are in slots `num`
    on), instead of new decisions and a new search (None without a record).

    An accepted step crosses where it reaches the time of the neuron's next
    recorded crossing in the interval: that decides as the forward run did, and
    does not hang on the rounding of the threshold function at the step's end,
    which can differ between the two compiled programs where a crossing is at the
    step's end (an interval that ends on a spike). A step that ends above
    threshold (by more than `sqrt(eps)` of its start's distance below it: far more
    than that rounding, and finite) also reaches the next recorded crossing where
    it ends within `64 eps` of that crossing's time before it: the time of a
    step's end differs between the programs by its rounding (AdEx with
    `v_peak=0` in float64: 3-10 ulps), and where a model blows up at a spike
    (AdEx, QIF), the threshold function rises by more than the margin in that
    time. (A window of `sqrt(eps)` hid real departures in float32.) Elsewhere, a
    step that ends above threshold where it reaches no recorded crossing has left
    the forward run: it counts as a crossing, as a search would find one, and is
    flagged through the crossing's `ok` (which a replayed crossing does not
    otherwise need), so that the rerun's `root_fail` says so. A slot past the
    record's end (it was full) gives the last one's: the caller checks that every
    spike was recorded."""
    if record is None:
        return None

    def replay(accept, t1, so_far, g0, g1):
        found = recorded_crossing(record, num + so_far)
        eps = jnp.finfo(g1.dtype).eps
        # (NaN: blown up, as a search would see it.)
        above = ~(g1 <= jnp.sqrt(eps) * jnp.abs(g0))
        # (A blown-up end, NaN or inf, is not taken as a crossing it fell short
        # of: it has left the forward run.)
        close = t1 >= found.t_star - 64 * eps * jnp.abs(found.t_star)
        reached = (t1 >= found.t_star) | (above & close & jnp.isfinite(g1))
        recorded = (so_far < count) & reached
        departed = accept & ~recorded & above
        found = eqx.tree_at(lambda c: c.ok, found, ~departed)
        return accept & recorded | departed, found

    return replay


def _strip_counters(st):
    # The solver-work counters are not needed to rerun a segment.
    return eqx.tree_at(lambda s: s.counters, st, None)


def _interval_buffers(loop: AdaptiveLoop, params, y0, replay=None):
    """Zeros for the records and checkpoints of [`_interval_backward`][] (whose
    `replay`, if any, is given: its iteration is traced for their shapes, and one
    that replays its crossings traces no search)."""
    current = params[1]
    init = jax.eval_shape(lambda: loop.start(y0, current, None))
    return segment_buffers(
        _advance(loop, params, replay), init, loop.max_steps, _strip_counters
    )


def _interval_backward(
    loop: AdaptiveLoop,
    surrogate,
    params,
    y0,
    num,
    ct_y,
    ct_count,
    ct_times,
    buffers,
    replay=None,
):
    """The cotangents of one interval of the adaptive loop: of its parameters
    `(dynamics, current, interval, t_start)` and of its start state `y0`, given
    those of its end state `ct_y`, of its soft counts `ct_count` and of the spike
    buffer `ct_times` (`None` without one; this interval's spikes go to slots `num`
    on); also its spike counts and whether it left the forward run where that
    shows otherwise (see `_replay`), to check, and the records and checkpoints
    `buffers` (from [`_interval_buffers`][], carried from one interval to the
    next) as written.

    The loop is rerun without derivatives (so taking the forward run's decisions)
    and pulled back one iteration at a time ([`reverse_segments`][]). With a
    `replay` of the forward run's crossings (see `_replay`), the rerun takes them
    from there instead of deciding and searching again.
    """
    dynamics, current, interval, t_start = params
    n = current.shape[0]
    dtype = current.dtype
    advance = _advance(loop, params, replay)

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
        # The soft counts' surrogate term, from the end state; and the end state
        # moved from the time the loop stopped at to the interval's end, equal in
        # value, `y + f(y) (interval - t)`: a lane that stopped on a crossing
        # located exactly at the end carries the crossing's time, not the
        # interval's, and the reset state there must still flow to the end.
        f = lax.stop_gradient(dynamics.vector_field(end.t, end.y, current))
        f = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0), f)
        # (Per neuron: the end state's cotangent along the field.)
        along = sum(
            jnp.sum(jnp.reshape(c * a, (n, -1)), axis=1)
            for c, a in zip(jax.tree.leaves(ct_y), jax.tree.leaves(f))
        )

        def end_terms(p, t, y):
            soft = surrogate_zero(p[0].threshold(y), surrogate)
            return soft, p[2] - t

        _, vjp = jax.vjp(end_terms, params, end.t, end.y)
        d_p, d_t, d_y = vjp((ct_count, along))
        return d_p, (d_t, d_y)

    ct_params, (_, ct_y0), end, _, buffers = reverse_segments(
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
        checkpoint=_strip_counters,
        restore=lambda st, _: eqx.tree_at(
            lambda s: s.counters,
            st,
            loop.zero_counters(n),
            is_leaf=lambda x: x is None,
        ),
        buffers=buffers,
    )
    # With replayed crossings, `root_fail` flags a rerun that left the forward run.
    left = jnp.any(end.root_fail) if replay is not None else jnp.zeros((), bool)
    return ct_params, ct_y0, (end.count, left), buffers


class RerunAdjoint(AbstractAdjoint):
    """Reverse mode for the adaptive loop. The forward pass keeps each interval's
    starting state. The backward pass walks the intervals in reverse: it reruns
    each one, taking the same decisions (step sizes, acceptance, crossings), and
    pulls the cotangents back through its iterations one at a time: each accepted
    step differentiated as the solver computed it, each crossing time by the
    implicit-function theorem (see `_interval_backward`). Memory grows with the
    intervals, and within an interval with about twice the square root of
    `max_steps` iterations' states.

    First-order only: its backward pass has no derivative of its own, and
    differentiating a gradient through it (`jax.hessian`, `jax.jvp` or `jax.grad`
    of the gradient) raises a `TypeError`.

    The rerun must reproduce the forward spike counts (it takes the same decisions
    from the same state). Where it does not, its derivative is not that of the
    forward run: the gradient is NaN, and with `throw=True` the backward pass raises
    `RESULTS.gradient_rerun_mismatch`.

    **Arguments:**

    - `throw`: raise (under `eqx.filter_jit`) where the gradient is NaN for one of
        the reasons here.
    - `replay_crossings`: in a run that records spike times (`max_spikes` above
        0), the forward pass also keeps what the crossing search found at each
        spike (the crossing time, the state there, where it was evaluated; a few
        values per spike), and the rerun takes its crossings (which step crosses,
        and where) from there instead of searching again: the gradient program
        holds no second copy of the search (it compiles in less time) and the
        rerun does less work. A
        neuron that fired more than `max_spikes` times has crossings that were not
        kept: the gradient is then NaN (with `throw=True` the backward pass raises
        `RESULTS.gradient_crossings_not_recorded`); `False` searches again, as a
        run without spike times does.
    - `allow_forced_steps`: where the run took a step forced at `dt_min`
        (accepted with its error above the tolerance; `stats["num_dt_min_steps"]`),
        the gradient is NaN (with `throw=True` the backward pass raises
        `RESULTS.gradient_through_forced_steps`): such a step is differentiated as
        the solver took it, which can be far from the model's derivative where the
        state moves fast (AdEx with `v_peak = 0` at the default `dt_min`: a spike
        time's derivative 1600x too small). `True` returns it anyway.
    """

    throw: bool = eqx.field(static=True, default=True)
    replay_crossings: bool = eqx.field(static=True, default=True)
    allow_forced_steps: bool = eqx.field(static=True, default=False)

    def run(self, integrator, dynamics, currents, interval, state, cfg, surrogate):
        assert isinstance(integrator, AdaptiveLoop)
        # (Their types only, in `bwd`.)
        primals = (dynamics, currents, interval, state)

        @jax.custom_vjp
        def run(dynamics, currents, interval, state):
            return run_folded(integrator, dynamics, currents, interval, state, cfg)

        # The crossings the forward pass records, for the rerun to replay.
        replay = self.replay_crossings and bool(cfg.max_spikes)
        recording = dataclasses.replace(integrator, record_crossings=replay)

        def fwd(dynamics, currents, interval, state):
            # (Run on tangents only where a gradient is differentiated again.)
            dynamics, currents, interval, state = first_order_only(
                (dynamics, currents, interval, state)
            )
            # Differentiated: the interval states are kept (they are the residuals).
            fwd_cfg = dataclasses.replace(cfg, keep_interval_states=True)
            raw = run_folded(recording, dynamics, currents, interval, state, fwd_cfg)
            ends = raw.interval_states
            starts = jax.tree.map(
                lambda s, e: jnp.concatenate([s[None], e[:-1]]), state, ends
            )
            counts = raw.counts.astype(jnp.int32)
            seen = running_sum(counts, axis=0) - counts  # spikes before each interval
            record = raw.crossings
            raw = eqx.tree_at(
                lambda r: r.crossings, raw, None, is_leaf=lambda x: x is None
            )
            if not cfg.keep_interval_states:
                raw = eqx.tree_at(lambda r: r.interval_states, raw, None)
            # Whether a step was forced at `dt_min` (see `bwd`).
            forced = raw.counters.num_dt_min_steps
            if forced is None or self.allow_forced_steps:
                forced = jnp.zeros((), bool)
            else:
                forced = jnp.any(forced > 0)
            residuals = (dynamics, currents, interval, starts, seen, counts, record)
            return raw, (residuals, forced)

        def bwd(res, ct):
            res, forced = res
            res, ct = vary_like((res, ct), res, ct)
            dynamics, currents, interval, starts, seen, counts, record = res
            dtype = currents.dtype
            # Without a spike buffer the run's `spike_times` is an empty
            # `(n, 0)` array and the rerun records none (`times` is `None`): that
            # cotangent carries nothing, and the rerun's output has no leaf for it.
            ct_spike_times = None if cfg.max_spikes is None else ct.spike_times
            num_intervals = currents.shape[0]
            t_starts = interval_starts(interval, num_intervals)
            uniform = jnp.ndim(interval) == 0

            def step(carry, xs):
                ct_y, ct_dyn, ct_interval, later, buffers = carry
                k, current, y0, num, ct_count, ct_state = xs
                if ct_state is not None:
                    ct_y = jax.tree.map(jnp.add, ct_y, ct_state)
                # (Whether the cotangents this interval is given are finite.)
                given_finite = ~any_nonfinite(
                    (ct_y, ct_count, ct_state, ct_spike_times)
                )
                length = interval if uniform else interval[k]
                # The interval's start time is differentiated too (spike times are
                # recorded from it): it is k * interval, or the sum of the earlier
                # lengths.
                params = (dynamics, current, length, t_starts[k])
                cts_k, ct_y, (count, left), buffers = _interval_backward(
                    integrator,
                    surrogate,
                    params,
                    y0,
                    num,
                    ct_y,
                    ct_count,
                    ct_spike_times,
                    buffers,
                    _replay(record, num, counts[k]),
                )
                d_dyn, d_current, d_length, d_start = cts_k
                # The rerun must take the forward pass's decisions; if it does not
                # (its counts differ), its derivative is not that of the forward
                # run, and saying so beats a silently wrong gradient.
                same = jnp.all(count == counts[k]) & ~left
                # Replayed crossings must all have been recorded.
                kept = jnp.ones((), bool)
                if record is not None:
                    kept = jnp.all(num + counts[k] <= record.t_star.shape[1])
                grads = (d_dyn, d_current, d_length, d_start, ct_y)
                # A derivative that came out NaN or inf from finite cotangents
                # (a replayed crossing the rerun's step did not really reach)
                # is not that of the forward run either: reported, not returned.
                same = same & (~any_nonfinite(grads) | ~given_finite)
                nan_if_differs = lambda a: jnp.where(same & kept, a, jnp.nan)
                grads = jax.tree.map(nan_if_differs, grads)
                d_dyn, d_current, d_length, d_start, ct_y = grads
                ct_dyn = jax.tree.map(jnp.add, ct_dyn, d_dyn)
                if uniform:
                    ct_interval = ct_interval + d_length + k.astype(dtype) * d_start
                else:
                    # Interval k's length moves the start of every later interval.
                    ct_interval = ct_interval.at[k].add(d_length + later)
                    later = later + d_start
                carry = (ct_y, ct_dyn, ct_interval, later, buffers)
                return carry, (d_current, (same, kept))

            zeros = jax.tree.map(jnp.zeros_like, (dynamics, interval))
            if num_intervals == 0:  # nothing ran: the state passes through
                cts = (zeros[0], jnp.zeros_like(currents), zeros[1], ct.final_state)
                return sum_where_invariant(cts, primals)
            ks = jnp.arange(num_intervals)
            xs = (ks, currents, starts, seen, ct.counts, ct.interval_states)
            # The records and checkpoints of the intervals' reruns: one set, filled
            # with zeros once and written over by each interval in turn.
            length = interval if uniform else interval[0]
            first = (dynamics, currents[0], length, t_starts[0])
            y_first = jax.tree.map(lambda a: a[0], starts)
            # (Traced for their shapes with the first interval's replay, if any.)
            shapes_of = _replay(record, seen[0], counts[0])
            buffers = _interval_buffers(integrator, first, y_first, shapes_of)
            init = (ct.final_state, *zeros, jnp.zeros((), dtype), buffers)
            # (Under `jax.shard_map`, the carry varies as the cotangents do.)
            init = vary_like(init, init, xs, state)
            (ct_state, ct_dyn, ct_interval, _, _), (ct_currents, checks) = lax.scan(
                step, init, xs, reverse=True
            )
            same, kept = checks
            cts = (ct_dyn, ct_currents, ct_interval, ct_state)
            # A step forced at `dt_min` (accepted with its error above the
            # tolerance) is differentiated as the solver took it, and that
            # derivative can be far from the model's where the state moves fast
            # (AdEx with `v_peak = 0`, one neuron: a spike time's derivative 1600x
            # too small at the default `dt_min`, 3.4 % off with 15 steps forced at
            # `dt_min = 1e-9`, within 1e-7 of central differences with none):
            # reported, not returned.
            nan_if_forced = lambda a: (
                jnp.where(forced, jnp.nan, a) if eqx.is_inexact_array(a) else a
            )
            cts = jax.tree.map(nan_if_forced, cts)
            if self.throw:
                # After the scan, once: under `jax.shard_map` every device raises
                # if any does (a check inside the scan would need a collective in
                # each interval).
                # (A rerun that replays crossings that were not recorded differs
                # for that reason: reported as such, not as a mismatch.)
                zero = jnp.zeros((), jnp.int32)
                for ok, item in (
                    (same | ~jnp.all(kept), RESULTS.gradient_rerun_mismatch),
                    (kept, RESULTS.gradient_crossings_not_recorded),
                    (~forced, RESULTS.gradient_through_forced_steps),
                ):
                    failed = max_across_devices(~jnp.all(ok))
                    cts = tie_to(cts, eqx.error_if(zero, failed, RESULTS[item]))
            return sum_where_invariant(cts, primals)

        run.defvjp(fwd, bwd)
        return run(dynamics, currents, interval, state)
