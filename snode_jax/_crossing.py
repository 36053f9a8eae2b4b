"""Locating the threshold crossings inside a step, on compact subsets of neurons;
the record of them that a backward rerun replays (`CrossingRecord`)."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._custom_types import State
from ._dynamics import AbstractDynamics
from ._misc import all_finite, expand, vary_like, where_tree
from ._records import SpikeBuffer, set_entries
from ._root_find import BracketedNewton
from ._solver import AbstractStepper, DiffraxStepper, ExactStepper

# A crossing on a step's dense output is refined by Newton steps on the solver's own
# solution; a first refinement larger than this fraction of the step means the dense
# output does not represent the step (e.g. it overshot into a blow-up), and the
# crossing is searched on the solver's sub-steps instead.
_TRUST = 0.01

# A Newton step from a point off by `d` leaves an error of about `C d^2`, with
# `C = |g''| / (2 g')` (1/ms) of the threshold function `g` along the solution. The
# polish takes further Newton steps while `C d^2` could exceed the search tolerance
# for `C` up to `_CURVATURE` (time scales down to 1 us), at most `_MAX_POLISH` in all.
_CURVATURE = 1e3
_MAX_POLISH = 4

# On an exact flow the search's tolerance is this many eps of the crossing's time in
# the interval (see `_locate_subset`); the adaptive loop bounds the spikes'
# lateness with it.
EXACT_FLOW_ULPS = 4

# A crossing located where the state stops being finite (a blow-up, as AdEx's and
# QIF's) is taken only if the state just below it, at its own slope, reaches
# threshold within this many times the search's final bracket (a blow-up
# accelerates, so a linear guess from below falls short, by a factor of about
# (v_peak - v) / Delta_T for an exponential one; a vector field that is NaN below
# threshold is short by many orders of magnitude).
_REACH = 1e3

# Crossings are located on subsets of neurons of this size: at least _MIN_CHUNK, and
# at least 1/_CHUNK_DIVISOR of the population (more subsets if more neurons cross).
_MIN_CHUNK = 64
_CHUNK_DIVISOR = 32
# Lanes per row of the two-level prefix sum that picks them.
_ROW = 128


def first_lanes(mask, size):
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


def on_subsets(mask, chunk: int, solve, init):
    """`init` with, for every lane where `mask` holds, the result of `solve` written
    in. `solve(j, real)` works on `chunk` lanes at a time: `j` their indices, `real`
    which of them are lanes of `mask` (the others pad the subset); it returns a
    pytree shaped like `init` with leading axis `chunk`. Subsets are taken in lane
    order, as many as needed."""
    n = mask.shape[0]

    def next_chunk(carry):
        remaining, found = carry
        idx = first_lanes(remaining, chunk)  # index n: no lane
        part = solve(jnp.minimum(idx, n - 1), idx < n)

        def put(full, new):  # padding (index n) is dropped
            return full.at[idx].set(new, mode="drop")

        found = jax.tree.map(put, found, part)
        remaining = put(remaining, jnp.zeros((chunk,), bool))
        return remaining, found

    # (Under `jax.shard_map`, the carry varies as the lanes do.)
    carry = vary_like((mask, init), mask, init)
    _, found = lax.while_loop(lambda c: jnp.any(c[0]), next_chunk, carry)
    return found


def take_lanes(dynamics: AbstractDynamics, j):
    """The model restricted to the neurons `j` (per-neuron parameters given one
    value per neuron are taken; scalars and shared parameters stay)."""

    def take(p, per_neuron):
        return p[j] if per_neuron and jnp.ndim(p) >= 1 else p

    return jax.tree.map(take, dynamics, dynamics.per_neuron_mask())


class Crossings(eqx.Module):
    """Per neuron: the crossing time `t_star` (ms), the state there before the reset
    `y_star`, the time `s_eval` where that state was evaluated (next to the crossing,
    below any blow-up), and whether the search converged (`ok`)."""

    t_star: Float[Array, " n"]
    y_star: State
    s_eval: Float[Array, " n"]
    ok: Bool[Array, " n"]


class CrossingRecord(eqx.Module):
    """A spike buffer, and what the crossing search found at each spike it holds
    (the crossing time from the interval's start, the state there, where that
    state was evaluated, whether the search converged): a backward pass that reruns
    an interval takes its crossings from here instead of searching again.

    **Fields:**

    - `spikes`: the spike times.
    - `crossings`: leaves `(n_neurons, max_spikes, ...)`, slot `j` for spike `j`.
    """

    spikes: SpikeBuffer
    crossings: Crossings

    @staticmethod
    def empty(spikes: SpikeBuffer, state: State) -> "CrossingRecord":
        n, cap = spikes.times.shape
        dtype = spikes.times.dtype

        def slots(a):
            return jnp.zeros((n, cap) + jnp.shape(a)[1:], a.dtype)

        zeros = jnp.zeros((n, cap), dtype)
        ok = jnp.ones((n, cap), bool)
        return CrossingRecord(
            spikes, Crossings(zeros, jax.tree.map(slots, state), zeros, ok)
        )

    def record(self, mask, t_start, found: Crossings) -> "CrossingRecord":
        """Append the crossings `found` of the neurons where `mask` holds (their
        spike times are `t_start + found.t_star`)."""
        n, cap = self.spikes.times.shape
        num = self.spikes.num
        keep = mask & (num < cap)
        rows = jnp.arange(n, dtype=jnp.int32)
        crossings = jax.tree.map(
            lambda a, v: set_entries(a, rows, num, keep, v), self.crossings, found
        )
        spikes = self.spikes.record(mask, t_start + found.t_star)
        return CrossingRecord(spikes, crossings)


def recorded_crossing(record: Crossings, slot) -> Crossings:
    """Per neuron, the crossing in slot `slot` of `record` (leaves `(n, max_spikes,
    ...)`; a slot past the end gives the last one)."""
    cap = record.t_star.shape[1]
    at = jnp.clip(slot, 0, max(cap - 1, 0))

    def pick(a):
        index = jnp.reshape(at, (-1, 1) + (1,) * (a.ndim - 2))
        return jnp.take_along_axis(a, index, axis=1)[:, 0]

    return jax.tree.map(pick, record)


class StepCrossings(eqx.Module):
    """One step of every neuron whose crossings are to be located: from `t` to `t1`
    (`step = t1 - t`), state `y` to `y1` with `dense` output, threshold `g0` at the
    start and `g_upper` at `upper` (the bracket's upper end: `t1`, or an interior
    maximum)."""

    t: Float[Array, " n"]
    t1: Float[Array, " n"]
    y: State
    current: Float[Array, " n"]
    step: Float[Array, " n"]
    upper: Float[Array, " n"]
    g0: Float[Array, " n"]
    g_upper: Float[Array, " n"]
    y1: State
    dense: object

    def take(self, j) -> "StepCrossings":
        return jax.tree.map(lambda a: a[j], self)


def _locate_subset(
    stepper: AbstractStepper,
    root_finder: BracketedNewton,
    dyn: AbstractDynamics,
    s: StepCrossings,
    lanes,
    interval,
) -> tuple[Crossings, Bool[Array, " n"], Bool[Array, " n"]]:
    """Crossings of a subset of neurons (`lanes` marks the real ones), whether the
    solver's own solution reaches threshold, and whether its state turned NaN/inf
    below threshold instead (see `on_sub_steps`)."""

    def sub_step(time):
        return stepper.step(dyn, s.t, time, s.y, s.current)[0]

    # On the step's dense output (cheap to evaluate; the exact flow itself for an
    # exact solver), then one solver sub-step to the crossing.
    def on_dense(time):
        time = jnp.clip(time, s.t, s.t1)
        return dyn.threshold(stepper.evaluate(dyn, s.dense, time))

    finite1 = all_finite(s.y1)
    # On an exact flow the root is the crossing: to 4 eps of its time in the
    # interval, whose clock restarts each interval (the event-driven engines',
    # which runs on, to eps). With eps here the search went on bisecting short
    # times' brackets below the threshold function's rounding to adjacent floats
    # (17-21 iterations where 12-13 did; dense CubaLIF 1.08x the time). (A
    # solver's dense output is one order below the step: its root is polished
    # below.)
    exact = isinstance(stepper, ExactStepper)
    t_star, ok, _ = root_finder.search(
        on_dense,
        s.t,
        s.upper,
        s.g0,
        s.g_upper,
        lanes & finite1,
        interval,
        clock=jnp.zeros_like(s.t) if exact else None,
        ulps=EXACT_FLOW_ULPS,
    )
    trusted = finite1
    if exact:
        y_star = sub_step(t_star)
    else:
        # The dense output is one order below the step: Newton steps on the solver's
        # own solution make the crossing time as accurate as the step (one, unless
        # the dense output was far off); the state follows to first order in the
        # last (tiny) shift.

        def newton(t_star, y_star):
            g_star = dyn.threshold(y_star)
            f_star = dyn.vector_field(t_star, y_star, s.current)
            _, g_dot = jax.jvp(dyn.threshold, (y_star,), (f_star,))
            safe_dot = jnp.where(g_dot > 0, g_dot, 1)
            new = t_star - g_star / safe_dot
            valid = (g_dot > 0) & jnp.isfinite(new) & (new > s.t) & (new <= s.upper)
            return new - t_star, f_star, valid

        tol = root_finder.tolerance(t_star, interval)
        far = lambda shift: jnp.abs(shift) * jnp.abs(shift) * _CURVATURE > tol

        def again(c):
            *_, shift, _, k = c
            return (k == 0) | ((k < _MAX_POLISH) & jnp.any(far(shift)))

        def polish(c):
            # One sub-step (traced once): in the first round every lane's, to the
            # dense output's root; then those of the lanes still far off.
            t_star, y_star, f_star, shift, trusted, k = c
            first = k == 0
            move = first | far(shift)
            t_new = t_star + shift
            y_new = sub_step(t_new)
            shift_new, f_new, valid = newton(t_new, y_new)
            # The step and its dense output must agree on the crossing (to a small
            # fraction of the step); else, as in a step that overshot into a
            # blow-up, the dense output is not trusted.
            agree = valid & (jnp.abs(shift_new) <= _TRUST * s.step)
            trusted = jnp.where(first, trusted & agree, trusted)
            # Untrusted and padding lanes stay at the dense output's root; a lane
            # whose next step is not valid stops where it is.
            shift_new = jnp.where(valid & trusted & lanes, shift_new, 0.0)
            return (
                jnp.where(move, t_new, t_star),
                where_tree(move, y_new, y_star),
                where_tree(move, f_new, f_star),
                jnp.where(move, shift_new, shift),
                trusted,
                k + 1,
            )

        start = (
            t_star,
            s.y,  # (placeholders until the first round)
            jax.tree.map(jnp.zeros_like, s.y),
            jnp.zeros_like(t_star),
            trusted,
            0,
        )
        t_star, y_star, f_star, shift, trusted, _ = lax.while_loop(again, polish, start)
        t_star = t_star + shift
        y_star = jax.tree.map(lambda a, f: a + expand(shift, a) * f, y_star, f_star)
    # A step that blew up (NaN) or is not trusted: search on the solver's own
    # sub-steps, and take the state from just below the crossing (the search's own
    # sub-step there).
    untrusted = lanes & ~trusted

    def on_sub_step(time):
        # The threshold at the sub-step's end, its slope in the end time, and the
        # state there (which the search keeps at its bracket's lower end, so that
        # no further sub-step is needed). This library's steps are differentiated
        # forward-mode: near a blow-up the flow's slope along the vector field can
        # exceed the sub-step's by orders of magnitude, and Newton steps that small
        # stall the search. diffrax's steps run their stages in a loop that has no
        # forward-mode derivative: for them, the slope along the vector field.
        if isinstance(stepper, DiffraxStepper):
            y_time = sub_step(time)
            f = dyn.vector_field(time, y_time, s.current)
            g, g_dot = jax.jvp(dyn.threshold, (y_time,), (f,))
            return g, g_dot, y_time

        def threshold_and_state(time):
            y_time = sub_step(time)
            return dyn.threshold(y_time), y_time

        ones = jnp.ones_like(time)
        (g, y_time), (g_dot, _) = jax.jvp(threshold_and_state, (time,), (ones,))
        return g, g_dot, y_time

    def on_sub_steps(_):
        t_b, ok_b, below_b, y_b = root_finder.search_with_state(
            on_sub_step, s.t, s.upper, s.g0, s.g_upper, untrusted, interval, s.y
        )
        # A crossing into a state that is not finite is a blow-up through
        # threshold only if the state below it is heading there: at its own slope
        # it reaches threshold within `_REACH` times the final bracket. Else the
        # state turned NaN/inf below threshold (a vector field not finite there):
        # no spike, and the search is reported as failed.
        g_b = dyn.threshold(y_b)
        f_b = dyn.vector_field(below_b, y_b, s.current)
        _, g_dot = jax.jvp(dyn.threshold, (y_b,), (f_b,))
        width = jnp.maximum(t_b - below_b, root_finder.tolerance(t_b, interval))
        heading = g_b + _REACH * jnp.maximum(g_dot, 0) * width >= 0
        ok_b = ok_b & heading
        # A crossing before an interior maximum of the dense output (the step ends
        # below threshold) where no sub-step of the search reached threshold (the
        # bracket's upper end never moved: it closed on the maximum from below)
        # and the state there is not heading up through it: the excursion above
        # threshold is the interpolant's, within the step's error (a peak grazing
        # threshold), and the solver's own solution does not cross in this step.
        # No spike, rather than a failed search.
        peak = s.upper < s.t1
        reached = ~(untrusted & peak & (t_b == s.upper) & ~ok_b)
        # A step end that is not finite, and a state not heading up through
        # threshold at the search's last point below it: the state turned NaN/inf
        # below threshold (see `StepOutcome.lost`). (Whether or not the search
        # converged: where the field is NaN Newton cannot help and a small
        # `max_root_iters` stops it early; a blow-up is heading up even from a
        # wide bracket.)
        lost = untrusted & ~finite1 & reached & ~heading
        return (
            Crossings(
                jnp.where(untrusted, t_b, t_star),
                where_tree(untrusted, y_b, y_star),
                jnp.where(untrusted, below_b, t_star),
                jnp.where(untrusted, ok_b | ~reached, ok),
            ),
            reached,
            lost,
        )

    def as_is(_):
        ones = jnp.ones_like(lanes)
        return Crossings(t_star, y_star, t_star, ok), ones, ~ones

    return lax.cond(jnp.any(untrusted), on_sub_steps, as_is, None)


def subset_size(n: int) -> int:
    """The number of lanes of each compact subset a search over `n` neurons takes
    at a time (see `on_subsets`)."""
    return min(n, max(_MIN_CHUNK, n // _CHUNK_DIVISOR))


def locate_crossings(
    stepper: AbstractStepper,
    root_finder: BracketedNewton,
    dynamics: AbstractDynamics,
    steps: StepCrossings,
    crossed,
    interval,
) -> tuple[Crossings, Bool[Array, " n"], Bool[Array, " n"]]:
    """The crossings of the neurons where `crossed` holds (elsewhere: the step's
    end), whether each is one (`False` where a crossing before an interior
    maximum of the dense output is not one of the solver's own solution), and
    whether the search found the state turning NaN/inf below threshold instead
    (see `_locate_subset`). Few neurons cross in one step: they are located on a
    compact subset of `chunk` neurons at a time (as many subsets as needed)."""
    n = crossed.shape[0]
    chunk = subset_size(n)

    def locate(j, real):
        return _locate_subset(
            stepper,
            root_finder,
            take_lanes(dynamics, j),
            steps.take(j),
            real,
            interval,
        )

    ones = jnp.ones((n,), bool)
    init = (Crossings(steps.t1, steps.y1, steps.t, ones), ones, ~ones)
    return on_subsets(crossed, chunk, locate, init)
