"""The adaptive loop: per-neuron step control through an interval of held input,
with every crossing located inside its step and the neuron reset there."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._controller import PredictiveController, PredictiveState
from ._crossing import (
    EXACT_FLOW_ULPS,
    CrossingRecord,
    Crossings,
    StepCrossings,
    locate_crossings,
    on_subsets,
    subset_size,
    take_lanes,
)
from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._misc import vary_like, where_tree
from ._records import Counters, IntervalOutcome, SpikeBuffer
from ._root_find import BracketedNewton
from ._scan import AbstractIntegrator
from ._solver import AbstractStepper, ExactStepper, propose

# After a reset, the first step is at least this fraction of the largest step taken
# since the previous reset.
_RESTART = 0.5


# Bisection steps locating an interior maximum of the threshold function on a step's
# dense output: to 2^-30 of the step, where the (flat) maximum's value is off by
# ~g'' (1e-9 h)^2, far below a 1e-6 relative overshoot.
_PEAK_ITERS = 30


def _interior_peak(
    stepper: AbstractStepper, dynamics, dense, t, t1, y0, y1, candidates
):
    """`(t_peak, g_peak, has_peak)`: per neuron, where the threshold function on the
    dense output of a step from `t` to `t1` has an interior maximum (its slope is
    positive at `t` and negative at `t1`), found by bisection on the slope, and its
    value there; only on `candidates`. Few neurons have one in a step: the
    bisection runs on compact subsets of them (`on_subsets`)."""

    def slope_along(y, direction):
        return jax.jvp(dynamics.threshold, (y,), (direction,))[1]

    d0, d1 = stepper.end_directions(dynamics, dense, t, t1)
    has_peak = candidates & (slope_along(y0, d0) > 0) & (slope_along(y1, d1) < 0)

    def search(j, real):
        del real  # (padding lanes repeat a real one; their results are dropped)
        dyn = take_lanes(dynamics, j)
        dense_j = jax.tree.map(lambda a: a[j], dense)

        def g(s):
            return dyn.threshold(stepper.evaluate(dyn, dense_j, s))

        def slope(s):
            return jax.jvp(g, (s,), (jnp.ones_like(s),))[1]

        def body(_, bracket):
            lo, hi = bracket
            mid = lo + 0.5 * (hi - lo)
            rising = slope(mid) > 0
            return jnp.where(rising, mid, lo), jnp.where(rising, hi, mid)

        lo, hi = lax.fori_loop(0, _PEAK_ITERS, body, (t[j], t1[j]))
        t_peak = lo + 0.5 * (hi - lo)
        return t_peak, g(t_peak)

    n = t.shape[0]
    init = (t1, jnp.full_like(t, -jnp.inf))
    t_peak, g_peak = on_subsets(has_peak, subset_size(n), search, init)
    return t_peak, g_peak, has_peak


def _zero_counters(n: int) -> Counters:
    z = jnp.zeros((n,), jnp.int32)
    return Counters(z, z, z, z, z, num_imprecise_intervals=z, num_invalid_resets=z)


# A located crossing is late by up to the search's tolerance, `EXACT_FLOW_ULPS` (4)
# eps of its time in the interval on an exact flow (the upper end of the final
# bracket) and 4 eps of the interval on a solver's output (`BracketedNewton`'s
# default; see `_crossing.py`); the neuron runs on from there, so the lateness
# adds up over an interval's spikes. (Measured: an IF
# neuron over one 100 ms interval at periods of 1/30 ms ended 0.042 ms late in
# float32, 2998 spikes where float64 has 2999; at periods of 10/3 ms 1.8 ms late
# in float16, its count right only because the interval ended first.) Reported
# (`count_precision_lost`, once per interval) once the bound on that lateness
# exceeds a quarter of the neuron's latest period, as the closed-form walk does
# with its own rounding: for spikes spread over the interval, from
# `8 N^2 eps > 1` spikes on an exact flow and `16 N^2 eps > 1` on a solver's
# output (float32: about 1000 and 700; float16: 11 and 8; bfloat16: 4 and 3).
_LATENESS_ULPS = EXACT_FLOW_ULPS


class AdaptiveState(eqx.Module):
    """The loop's state, per neuron: time `t` (ms from the interval start), state
    `y`, next step `h`, spikes `count`, solver-work `counters`, step `attempts`,
    spike `buffer`, `root_fail` (a search did not converge), the largest step since
    the last reset `h_big`, the step controller's state, `lost` (the neuron
    stopped where its state turned NaN/inf below threshold, see
    `StepOutcome.lost`), and for the rounding of the spike times (see
    `_LATENESS_ULPS`): `t_spike`, the last spike's time in the interval (`-inf`
    before the first), and `lateness`, the bound on how late that spike's time
    is (`inf` once reported)."""

    t: Float[Array, " n"]
    y: State
    h: Float[Array, " n"]
    count: Int[Array, " n"]
    counters: Counters
    attempts: Int[Array, " n"]
    buffer: SpikeBuffer | CrossingRecord | None
    root_fail: Bool[Array, " n"]
    h_big: Float[Array, " n"]
    controller_state: PredictiveState
    lost: Bool[Array, " n"]
    t_spike: Float[Array, " n"]
    lateness: Float[Array, " n"]


class StepOutcome(eqx.Module):
    """What one iteration decided, per neuron: whether the neuron was still
    integrating (`active`), whether its step was accepted, crossed threshold, or
    reached the interval end at `t1`; the step's end state `y1`, its crossing, the
    next step `h_next`, and the controller's view of it. `lost`: the step's end
    is not finite and the search found no crossing into it (the state turned
    NaN/inf below threshold): the step is neither accepted nor a crossing, and
    the neuron stops there."""

    active: Bool[Array, " n"]
    accept: Bool[Array, " n"]
    crossed: Bool[Array, " n"]
    lost: Bool[Array, " n"]
    reaches_end: Bool[Array, " n"]
    t1: Float[Array, " n"]
    y1: State
    crossings: Crossings
    h_next: Float[Array, " n"]
    at_dt_min: Bool[Array, " n"]
    controller_state: PredictiveState


class AdaptiveLoop(AbstractIntegrator):
    """Integrates any model with per-neuron adaptive steps: each neuron has its own
    step size (one fast neuron does not shrink everyone's steps), each accepted step
    is checked for a crossing, and crossings are located inside the step by the root
    finder, on the step's dense output, then polished on the solver's own solution.

    **Arguments:**

    - `stepper`: the per-neuron solver (see `make_stepper`).
    - `controller`: the step-size controller.
    - `root_finder`: the crossing search.
    - `max_steps`: step attempts per neuron per interval.
    - `record_crossings`: a run that records spike times also keeps, for each
        spike, what the crossing search found ([`CrossingRecord`][]).

    The loop itself has no derivative: [`RerunAdjoint`][] differentiates it.
    """

    stepper: AbstractStepper
    controller: PredictiveController
    root_finder: BracketedNewton
    max_steps: int = eqx.field(static=True)
    record_crossings: bool = eqx.field(static=True, default=False)

    def new_buffer(self, state, max_spikes, dtype, uniform):
        spikes = super().new_buffer(state, max_spikes, dtype, uniform)
        if not self.record_crossings:
            return spikes
        return CrossingRecord.empty(spikes, state)

    def spike_times(self, dynamics, buffer, state, interval):
        if isinstance(buffer, CrossingRecord):
            buffer = buffer.spikes
        return super().spike_times(dynamics, buffer, state, interval)

    def recorded_crossings(self, buffer):
        if isinstance(buffer, CrossingRecord):
            return buffer.crossings
        return None

    def prepare(self, dynamics, interval):
        return None

    def zero_counters(self, n: int) -> Counters:
        return _zero_counters(n)

    def decide(
        self, dynamics, current, interval, st: AdaptiveState, replay=None
    ) -> StepOutcome:
        """One step attempt per neuron: its acceptance, and any crossing in it.

        `replay`, where given, takes the crossings from an earlier run of the same
        steps instead of deciding and searching for them: it maps `(accept, t1,
        count, g0, g1)` (which neurons' steps are accepted, where the steps end,
        the neurons' spikes so far in the interval, and the threshold function at
        the steps' start and end) to `(crossed, crossings)`."""
        t, y, h = st.t, st.y, st.h
        active = (t < interval) & (st.attempts < self.max_steps)
        reaches_end = t + h >= interval
        t1 = jnp.where(reaches_end, interval, t + h)
        prop = propose(
            self.stepper,
            self.controller,
            dynamics,
            t,
            t1,
            y,
            current,
            st.controller_state,
        )
        accept = active & prop.accept
        g0 = dynamics.threshold(y)
        g1 = dynamics.threshold(prop.y1)
        if replay is None:
            crossed, crossings, lost = self._crossings(
                dynamics, current, interval, t, t1, y, prop, accept, g0, g1
            )
            # A search into a step end that is not finite that found the state
            # turning NaN/inf below threshold: no spike there (its time would be
            # where the state stopped being finite, and a reset would start the
            # same failure again at once: thousands of spikes a few ulps apart
            # until the step budget ran out). (A blow-up whose search ran out of
            # iterations is a crossing, reported as failed.)
            lost = crossed & lost
            crossed = crossed & ~lost
            accept = accept & ~lost
        else:
            crossed, found = replay(accept, t1, st.count, g0, g1)
            # (Elsewhere, what the search gives a neuron that does not cross.)
            no_crossing = Crossings(t1, prop.y1, t, jnp.ones_like(accept))
            crossings = where_tree(crossed, found, no_crossing)
            lost = jnp.zeros_like(crossed)
        return StepOutcome(
            active,
            accept,
            crossed,
            lost,
            reaches_end,
            t1,
            prop.y1,
            crossings,
            prop.h_next,
            prop.at_dt_min,
            prop.controller_state,
        )

    def _crossings(self, dynamics, current, interval, t, t1, y, prop, accept, g0, g1):
        """Which neurons' accepted steps (from `t` to `t1`, from `y`, proposed as
        `prop`) cross threshold (`g0`, `g1` at the ends), and where; and where the
        search found the state turning NaN/inf below threshold instead."""
        step = t1 - t
        # NaN counts as past threshold: a model that blows up at a spike (AdEx, QIF)
        # has crossed before it overflows; the search finds where.
        crossed = accept & ~(g1 < 0)
        upper, g_upper = t1, g1
        if isinstance(self.stepper, ExactStepper):
            assert isinstance(dynamics, AbstractExactFlowDynamics)
            # A non-monotone exact flow: the earliest crossing is before an interior
            # maximum that reaches threshold, even if the step ends below it.
            t_peak, has_peak = dynamics.peak_in_step(y, current, step)
            y_peak = self.stepper.step(dynamics, t, t + t_peak, y, current)[0]
            g_peak = dynamics.threshold(y_peak)
            use_peak = accept & has_peak & (g_peak >= 0)
            crossed = crossed | use_peak
            upper = jnp.where(use_peak, t + t_peak, t1)
            g_upper = jnp.where(use_peak, g_peak, g1)
        else:
            # A rise above threshold and back below within one step: the threshold
            # function on the step's dense output rises at the start and falls at
            # the end, so it has an interior maximum; where that reaches threshold,
            # the earliest crossing lies before it.
            t_peak, g_peak, has_peak = _interior_peak(
                self.stepper, dynamics, prop.dense, t, t1, y, prop.y1, accept & ~crossed
            )
            use_peak = has_peak & (g_peak >= 0)
            crossed = crossed | use_peak
            upper = jnp.where(use_peak, t_peak, t1)
            g_upper = jnp.where(use_peak, g_peak, g1)
        steps = StepCrossings(
            t, t1, y, current, step, upper, g0, g_upper, prop.y1, prop.dense
        )
        crossings, reached, lost = locate_crossings(
            self.stepper, self.root_finder, dynamics, steps, crossed, interval
        )
        # (A peak that grazes threshold on the dense output only: no crossing.)
        return crossed & reached, crossings, lost

    def running(self, interval, st: AdaptiveState) -> Bool[Array, " n"]:
        """Per neuron, whether it is still integrating."""
        return (st.t < interval) & (st.attempts < self.max_steps)

    def start(
        self, y, current, buffer: SpikeBuffer | CrossingRecord | None
    ) -> AdaptiveState:
        """The loop's state at the start of an interval from state `y`."""
        n = current.shape[0]
        dtype = current.dtype
        zeros = jnp.zeros((n,), jnp.int32)
        controller = self.controller
        return AdaptiveState(
            t=jnp.zeros((n,), dtype),
            y=y,
            h=jnp.full((n,), min(controller.dt0, controller.dtmax), dtype),
            count=zeros,
            counters=_zero_counters(n),
            attempts=zeros,
            buffer=buffer,
            root_fail=jnp.zeros((n,), bool),
            h_big=jnp.zeros((n,), dtype),
            controller_state=controller.init_state((n,), dtype),
            lost=jnp.zeros((n,), bool),
            t_spike=jnp.full((n,), -jnp.inf, dtype),
            lateness=jnp.zeros((n,), dtype),
        )

    def advance(
        self, dynamics, current, interval, t_start, st: AdaptiveState, replay=None
    ) -> tuple[AdaptiveState, StepOutcome]:
        """One iteration of the loop: every running neuron attempts a step (see
        [`decide`][], also for `replay`), and the state moves on; also returns what
        was decided."""
        out = self.decide(dynamics, current, interval, st, replay)
        t1, y1 = out.t1, out.y1
        t_star, y_star = out.crossings.t_star, out.crossings.y_star
        y_reset = dynamics.reset(y_star)
        y_new = where_tree(out.crossed, y_reset, where_tree(out.accept, y1, st.y))
        # A reset that leaves the neuron at or above threshold would fire it again
        # at once, forever (a user model's `reset`; the built-in models' conditions
        # rule it out): reported, and the neuron stops here.
        bad_reset = out.crossed & (dynamics.threshold(y_reset) >= 0)
        t_new = jnp.where(out.crossed, t_star, jnp.where(out.accept, t1, st.t))
        h_new = jnp.where(out.active, out.h_next, st.h)
        # After a reset the neuron is back in its slow regime: restart from a step
        # near the largest one it took before the spike, not from the small one
        # that crossed the upswing (the controller rejects it if too large).
        h_new = jnp.where(out.crossed, jnp.maximum(h_new, _RESTART * st.h_big), h_new)
        # Each neuron's step history since its last reset (a reset clears it): the
        # largest accepted step, for the restart above, and the controller's.
        taken = lax.stop_gradient(out.t1 - st.t)
        h_big = jnp.where(out.accept, jnp.maximum(st.h_big, taken), st.h_big)
        h_big = jnp.where(out.crossed, 0.0, h_big)
        fresh = self.controller.init_state(st.t.shape, st.t.dtype)
        cstate = where_tree(out.active, out.controller_state, st.controller_state)
        cstate = where_tree(out.crossed, fresh, cstate)
        buffer = st.buffer
        if isinstance(buffer, CrossingRecord):
            buffer = buffer.record(out.crossed, t_start, out.crossings)
        elif buffer is not None:
            buffer = buffer.record(out.crossed, t_start + t_star)
        # An accepted step that did not advance the time (dt_min below the
        # resolution of t) would repeat forever; one forced at dt_min (its error
        # above tolerance) that left every entry of the state as it was cannot
        # move the neuron at that tolerance (its change is below the state's
        # resolution: a float16 AdEx layer at rtol 1e-6 stayed at rest through
        # 40,920 such steps and fired nothing). Both counted, and reported.
        unmoved = jnp.ones_like(out.accept)
        for a, b in zip(jax.tree.leaves(out.y1), jax.tree.leaves(st.y)):
            same = (a == b).reshape(a.shape[0], -1)
            unmoved = unmoved & jnp.all(same, axis=1)
        stuck = out.t1 <= st.t
        stalled = out.accept & ~out.crossed & (stuck | (out.at_dt_min & unmoved))
        # The spike times' rounding, added up over the interval's spikes, against
        # a quarter of the latest period (see `_LATENESS_ULPS`).
        eps = jnp.finfo(st.t.dtype).eps
        clock = t_star if isinstance(self.stepper, ExactStepper) else interval
        late = st.lateness + _LATENESS_ULPS * eps * jnp.abs(clock)
        imprecise = (
            out.crossed & (4 * late > t_star - st.t_spike) & (st.lateness < jnp.inf)
        )
        late = jnp.where(imprecise, jnp.inf, late)
        lateness = jnp.where(out.crossed, late, st.lateness)
        t_spike = jnp.where(out.crossed, t_star, st.t_spike)
        counters = st.counters + Counters(
            num_steps=out.accept.astype(jnp.int32),
            num_crossings=out.crossed.astype(jnp.int32),
            num_rejected_steps=(out.active & ~out.accept).astype(jnp.int32),
            num_dt_min_steps=(out.accept & out.at_dt_min).astype(jnp.int32),
            num_stalled_steps=stalled.astype(jnp.int32),
            num_imprecise_intervals=imprecise.astype(jnp.int32),
            num_invalid_resets=bad_reset.astype(jnp.int32),
        )
        stop = bad_reset | out.lost
        new = AdaptiveState(
            t=t_new,
            y=y_new,
            h=h_new,
            count=st.count + out.crossed,
            counters=counters,
            attempts=jnp.where(stop, self.max_steps, st.attempts + out.active),
            buffer=buffer,
            root_fail=st.root_fail | (out.crossed & ~out.crossings.ok) | out.lost,
            h_big=h_big,
            controller_state=cstate,
            lost=st.lost | out.lost,
            t_spike=t_spike,
            lateness=lateness,
        )
        return new, out

    def interval(self, dynamics, constants, y, current, t_start, interval, buffer):
        del constants

        def cond_fun(st: AdaptiveState):
            return jnp.any(self.running(interval, st))

        def body_fun(st: AdaptiveState) -> AdaptiveState:
            return self.advance(dynamics, current, interval, t_start, st)[0]

        init = self.start(y, current, buffer)
        # (Under `jax.shard_map`, the carry varies as the inputs do.)
        init = vary_like(init, y, current, dynamics, interval, t_start)
        final = lax.while_loop(cond_fun, body_fun, init)
        # (A neuron stopped where its state turned NaN/inf below threshold did not
        # run out of steps.)
        return IntervalOutcome(
            final.y,
            final.count,
            final.buffer,
            final.counters,
            (final.t < interval) & ~final.lost,
            final.root_fail,
        )
