"""The leaky integrate-and-fire neuron, with an optional absolute refractory period."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import describe
from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractClosedFormDynamics, IntervalReplay
from ._math import log, log1p, relax
from ._params import as_param, check_below, check_params
from ._solver import Exact

_Param = RealScalarLike | Float[ArrayLike, " n"]


class LIFState(eqx.Module):
    """State of a population of LIF neurons.

    **Fields:**

    - `v`: membrane voltage, one per neuron.
    - `refractory`: remaining refractory time (ms), one per neuron; `None` for a
        model without a refractory period.
    """

    v: NeuronFloat
    refractory: NeuronFloat | None = None


def lif_vector_field(t, y, args):
    """The LIF membrane derivative, in diffrax's `(t, y, args)` term signature.

    `dv/dt = -(v - v_rest) / tau_mem + I / C_mem`, time in ms.

    **Arguments:**

    - `t`: time (ms); unused, the input is constant within an interval.
    - `y`: membrane voltage `v`, any shape.
    - `args`: a tuple `(dynamics, current)` of an [`ODELIFDynamics`][] and the input
        current `I`, broadcastable against `y`.

    **Returns:**

    `dv/dt`, with the shape of `y`.
    """
    del t
    dynamics, current = args
    return -(y - dynamics.v_rest) / dynamics.tau_mem + current / dynamics.C_mem


class _LIFEvents(eqx.Module):
    # `s` is the distance to the asymptote `v_inf = v_rest + I tau / C`, projected to
    # the end of the interval: `s = (v_inf - v) * exp(-(T - t) / tau)`. A crossing is
    # pending iff `s <= v_inf - v_threshold`; each reset multiplies `s` by the gain
    # `(v_inf - v_reset) / (v_inf - v_threshold)` (times `exp(t_ref / tau)` with a
    # refractory period, whose end is when free evolution resumes). Counting spikes
    # and finding the end state need no logarithm or exponential.
    v_inf: Array
    # `v_inf - v_threshold` where that is positive; NaN where it is not (the
    # asymptote at or below threshold, or NaN), where no crossing can happen:
    # `s <= u_threshold` is then false whatever `s` is (-inf included, where the
    # asymptote overflowed to -inf), so one compare says whether one is pending.
    u_threshold: Array
    # The gain minus one, `(v_threshold - v_reset) / (v_inf - v_threshold)`: a
    # reset adds `s * gain_minus_one` to `s`. At high rates the gain is close to 1,
    # and its own rounding (up to ~1.5 eps relative) would enter `s` once per spike,
    # all in the same direction; that of `gain_minus_one` is that much smaller
    # relative to the gain. (Measured in float32 on 240,000 neuron-intervals of up
    # to 40,000 spikes, not reported imprecise: 2755 counts differed from the
    # closed form multiplying by the gain, 25 adding; with t_ref, 123 and 2 of
    # 60,000. What remains is the rounding of the sum, which at a gain this close
    # to 1 repeats alike from one spike to the next.)
    gain_minus_one: Array
    s: Array
    tau: Array
    # The voltage `v` at the piece's start, and its decay `e^{-T/tau}` and `e^{-T/tau}
    # - 1` (one per neuron, or shared): without a spike the end voltage is `v + (v -
    # v_inf) (e^{-T/tau} - 1)`, far more precise than `v_inf - s` where `v_inf` is
    # far from `v` and the piece short (`s` rounds to its own ulp, the same way
    # piece after piece: in float32 at intervals of 2e-6 tau_mem, 1.3 % of the time
    # scale). A spike changes `s`; one that leaves it as it was leaves the neuron
    # pending until its budget runs out (reported).
    v_start: Array
    decay: Array
    decay_minus_one: Array
    # Refractory bookkeeping (None without a refractory period).
    blocked_start: Array | None  # refractory through the whole interval
    rho_carry: Array | None  # refractory time left at the end, for those
    v_hold: Array | None  # voltage of those
    spike_block: Array | None  # a spike's refractory period outlasts the interval
    block_ratio: Array | None  # `s / u_threshold` at that spike
    refractory_gain: Array | None  # exp(t_ref / tau)


class ODELIFDynamics(AbstractClosedFormDynamics):
    """Leaky integrate-and-fire membrane, `dv/dt = -(v - v_rest)/tau_mem + I/C_mem`.

    A spike is an upward crossing of `v_threshold`; `v` is set to `v_reset` at that
    instant. With a refractory period `t_ref`, `v` is then held at `v_reset` for
    `t_ref` ms, and the end of that period is itself an event located exactly. Between
    events the flow is known in closed form, so the solver steps from event to event
    and locates every crossing to machine precision.

    **Arguments:** (each a scalar or one value per neuron; all trainable)

    - `tau_mem`: membrane time constant (ms), `> 0`.
    - `v_rest`: resting potential. At or above `v_threshold` the neuron fires
        tonically: its default initial state is then `v_reset`.
    - `v_threshold`: spike threshold.
    - `v_reset`: post-spike reset potential, `< v_threshold`.
    - `C_mem`: membrane capacitance, `> 0`.
    - `t_ref`: absolute refractory period (ms), `>= 0`; default `None`, no refractory
        period (and no `refractory` entry in the state). A model with `t_ref` runs on
        the closed-form solver only.

    **Raises:**

    `ValueError` for a non-positive `tau_mem` or `C_mem`, `v_reset >= v_threshold`,
    a negative `t_ref`, or a NaN/inf parameter.
    """

    tau_mem: Float[Array, "*n"]
    v_rest: Float[Array, "*n"]
    v_threshold: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    C_mem: Float[Array, "*n"]
    t_ref: Float[Array, "*n"] | None

    parameter_names: ClassVar[tuple[str, ...]] = (
        "tau_mem",
        "v_rest",
        "v_threshold",
        "v_reset",
        "C_mem",
        "t_ref",
    )

    def __init__(
        self,
        tau_mem: _Param = 20.0,
        v_rest: _Param = 0.0,
        v_threshold: _Param = 1.0,
        v_reset: _Param = 0.0,
        C_mem: _Param = 1.0,
        t_ref: _Param | None = None,
    ):
        self.tau_mem = as_param("tau_mem", tau_mem)
        self.v_rest = as_param("v_rest", v_rest)
        self.v_threshold = as_param("v_threshold", v_threshold)
        self.v_reset = as_param("v_reset", v_reset)
        self.C_mem = as_param("C_mem", C_mem)
        self.t_ref = None if t_ref is None else as_param("t_ref", t_ref)

    def __check_init__(self):
        positive = ("tau_mem", "C_mem")
        if check_params(self, self.parameter_names, positive, {"tau_mem": "ms"}):
            check_below(self, "v_reset", "v_threshold")
            if self.t_ref is not None and np.any(np.asarray(self.t_ref) < 0):
                raise ValueError(
                    f"`t_ref` must be >= 0 (ms), got {describe(self.t_ref)}."
                )

    def check_solver(self, solver) -> None:
        if self.t_ref is not None and not isinstance(solver, Exact):
            raise ValueError(
                f"This {type(self).__name__} (with a refractory period `t_ref`) runs "
                "on the closed-form solver only: use solver=Exact() (the default), "
                f"got {solver!r}."
            )

    # -- interface -----------------------------------------------------------------

    def init_state(self, n_neurons: int, dtype) -> LIFState:
        # A resting potential at or above threshold (a tonically firing neuron)
        # has no resting state below threshold: it starts from `v_reset` and fires
        # periodically.
        rest = jnp.where(self.v_rest < self.v_threshold, self.v_rest, self.v_reset)
        v = jnp.broadcast_to(rest, (n_neurons,)).astype(dtype)
        refractory = None if self.t_ref is None else jnp.zeros((n_neurons,), dtype)
        return LIFState(v, refractory)

    def vector_field(self, t, y: LIFState, current) -> LIFState:
        dv = lif_vector_field(t, y.v, (self, current))
        if y.refractory is None:
            return LIFState(dv)
        # While refractory, the voltage is held and the time left runs down.
        held = y.refractory > 0
        return LIFState(
            jnp.where(held, 0, dv), jnp.where(held, -1, 0).astype(y.refractory.dtype)
        )

    def threshold(self, y: LIFState):
        return y.v - self.v_threshold

    def reset(self, y: LIFState) -> LIFState:
        v = jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype)
        return LIFState(v, y.refractory)

    def exact_flow(self, y: LIFState, current, h) -> LIFState:
        v_inf = self.v_rest + current * (self.tau_mem / self.C_mem)
        # (With `expm1` for short steps: in float32 the rounding of e^{-h/tau}
        # was 1.3 % of the time scale at h / tau = 2e-6, step after step.)
        return LIFState(relax(y.v, v_inf, h / self.tau_mem), y.refractory)

    def jump(self, y: LIFState, amount) -> LIFState:
        """An input spike adds `amount` to the membrane (a delta synapse)."""
        return LIFState(y.v + amount, y.refractory)

    def voltage(self, y: LIFState):
        return y.v

    def peak_in_step(self, y: LIFState, current, h):
        # The flow is monotone: no interior maximum.
        return h, jnp.zeros(jnp.shape(h), bool)

    def constraints(self, y: LIFState):
        out = {
            "tau_mem > 0": jnp.all(self.tau_mem > 0),
            "C_mem > 0": jnp.all(self.C_mem > 0),
            "v_reset < v_threshold": jnp.all(self.v_reset < self.v_threshold),
            "initial v < v_threshold": jnp.all(y.v < self.v_threshold),
        }
        if self.t_ref is not None:
            out["t_ref >= 0"] = jnp.all(self.t_ref >= 0)
        if y.refractory is not None:
            out["initial refractory time >= 0"] = jnp.all(y.refractory >= 0)
        return out

    # -- closed-form events --------------------------------------------------------

    def max_event_span(self):
        # exp(-span / tau_mem) >= exp(-30): far above the smallest normal float32.
        return 30.0 * jnp.min(self.tau_mem)

    def interval_constants(self, interval):
        # exp(t_ref / tau) and exp(t_ref / tau) - 1 (to full precision). The decay
        # over an interval, exp(-interval / tau), for `s` (precise relative to
        # itself, however small), and exp(-interval / tau) - 1 for the end voltage
        # (see `_LIFEvents.v_start`).
        refractory_gains = None
        if self.t_ref is not None:
            ratio = self.t_ref / self.tau_mem
            refractory_gains = (jnp.exp(ratio), jnp.expm1(ratio))
        x = -interval / self.tau_mem
        return (jnp.exp(x), jnp.expm1(x)), interval, refractory_gains

    def interval_start(self, y: LIFState, current, constants) -> _LIFEvents:
        (decay, decay_minus_one), interval, refractory_gains = constants
        v_inf = self.v_rest + current * (self.tau_mem / self.C_mem)
        u_threshold = v_inf - self.v_threshold
        # Only used where a crossing happens, i.e. where u_threshold > 0 (which
        # holds `u_threshold` itself to NaN elsewhere, see `_LIFEvents`).
        can_fire = u_threshold > 0
        safe = jnp.where(can_fire, u_threshold, 1)
        gain_minus_one = (self.v_threshold - self.v_reset) / safe
        u_threshold = jnp.where(can_fire, u_threshold, jnp.nan)
        u = v_inf - y.v
        tau = jnp.broadcast_to(self.tau_mem, u.shape)
        if self.t_ref is not None:
            assert y.refractory is not None
            # Free evolution starts when the refractory period ends.
            free = interval - jnp.minimum(y.refractory, interval)
            decay, decay_minus_one = jnp.exp(-free / tau), jnp.expm1(-free / tau)
        s = u * decay
        refr = (None,) * 6
        if self.t_ref is not None:
            assert y.refractory is not None and refractory_gains is not None
            exp_ratio, expm1_ratio = refractory_gains
            no_block = jnp.zeros(s.shape, bool)
            refr = (
                y.refractory >= interval,
                y.refractory - interval,
                y.v,
                no_block,
                jnp.ones_like(s),
                exp_ratio,
            )
            # (1 + g) exp(t_ref / tau) - 1.
            gain_minus_one = gain_minus_one * exp_ratio + expm1_ratio
        return _LIFEvents(
            v_inf, u_threshold, gain_minus_one, s, tau, y.v, decay, decay_minus_one,
            *refr,
        )  # fmt: skip

    def next_piece(self, ev: _LIFEvents, current, constants) -> _LIFEvents:
        if ev.spike_block is not None:  # refractory: the state at the end decides
            return super().next_piece(ev, current, constants)
        # `s` is the distance below the asymptote `v_inf`, which the current fixes
        # for the whole interval: one piece later it has decayed by the constants'
        # decay, and the end voltage has moved as in `exact_flow`.
        return eqx.tree_at(
            lambda e: (e.s, e.v_start), ev, (ev.s * ev.decay, self._end_voltage(ev))
        )

    def crossing_pending(self, ev: _LIFEvents):
        pending = ev.s <= ev.u_threshold
        if ev.blocked_start is not None:
            assert ev.spike_block is not None
            pending = pending & ~(ev.blocked_start | ev.spike_block)
        return pending

    def fire(self, ev: _LIFEvents, mask) -> _LIFEvents:
        s = jnp.where(mask, ev.s + ev.s * ev.gain_minus_one, ev.s)
        if ev.spike_block is None:
            return eqx.tree_at(lambda e: e.s, ev, s)
        assert ev.refractory_gain is not None and ev.block_ratio is not None
        # The refractory period outlasts the interval iff s * exp(t_ref/tau) >= u_th.
        now_blocked = mask & (ev.s * ev.refractory_gain >= ev.u_threshold)
        ratio = ev.s / jnp.where(ev.u_threshold > 0, ev.u_threshold, 1)
        return eqx.tree_at(
            lambda e: (e.s, e.spike_block, e.block_ratio),
            ev,
            (
                s,
                ev.spike_block | now_blocked,
                jnp.where(now_blocked, ratio, ev.block_ratio),
            ),
        )

    def count_uncertain(self, ev: _LIFEvents, count):
        # Each spike adds `s * g` to `s` (`g` the gain minus one): the sum rounds
        # (<= eps / 2 relative), and the product and `g` itself (a few roundings,
        # <= 2 eps relative together) enter in proportion g / (1 + g). Over the
        # count that is at most count * eps * (1/2 + 2.5 g / (1 + g)) relative,
        # while one period moves `s` by the factor 1 + g, i.e. by
        # log(1 + g) >= g / (1 + g) relative. The rounding can round the same way
        # spike after spike (at a gain this close to 1 the sum's rounding repeats
        # alike), so the count may be off with a chance of about the bound over a
        # period: reported once the bound exceeds a quarter of a period. That is
        # in float32 at rates where g is ~1e-4 over hundreds of spikes (e.g.
        # v_inf = 40000 with threshold 1: 2000 spikes per ms).
        eps = jnp.finfo(ev.s.dtype).eps
        # count * eps * (1 + 6 g) > g / 2, without a division; one spike is one
        # rounding (and `g` means nothing for a neuron that cannot fire). (`g`
        # taken where the count is 2 or more: the bound is then not a function
        # of the interval's constants alone, which XLA would compute for every
        # neuron ahead of the loop that rarely runs, in every interval.)
        many = count >= 2
        g = jnp.where(many, ev.gain_minus_one, 0)
        return many & (count.astype(ev.s.dtype) * (2 * eps) * (1 + 6 * g) > g)

    @staticmethod
    def _end_voltage(ev: _LIFEvents):
        """The voltage at the end of the piece, had no refractory period held it:
        without a spike (`s` as it was at the start, computed again the same way),
        from the voltage at the start."""
        u = ev.v_inf - ev.v_start
        # (Over a piece of more than ln 2 tau, `v_inf - s` is the precise one: see
        # `relax`.)
        quiet = (ev.s == u * ev.decay) & (ev.decay > 0.5)
        return jnp.where(quiet, ev.v_start - u * ev.decay_minus_one, ev.v_inf - ev.s)

    def interval_end(self, ev: _LIFEvents) -> LIFState:
        v_free = self._end_voltage(ev)
        if ev.spike_block is None:
            return LIFState(v_free)
        assert self.t_ref is not None and ev.block_ratio is not None
        assert ev.blocked_start is not None and ev.v_hold is not None
        assert ev.rho_carry is not None
        # Blocked after a spike at t*: t_ref - (T - t*) = t_ref + tau log(ratio) left.
        ratio = jnp.where(ev.spike_block, ev.block_ratio, 1)
        after_spike = jnp.maximum(self.t_ref + ev.tau * log(ratio), 0)
        v = jnp.where(ev.spike_block, self.v_reset, v_free)
        v = jnp.where(ev.blocked_start, ev.v_hold, v)
        rho = jnp.where(ev.spike_block, after_spike, 0.0)
        rho = jnp.where(ev.blocked_start, ev.rho_carry, rho)
        return LIFState(v, rho)

    def replay_interval(self, y: LIFState, current, interval, count) -> IntervalReplay:
        # The closed form, differentiable in every parameter, the current, the
        # interval and the start state: each crossing time solves v(t) = v_threshold
        # exactly, so its derivative is the implicit-function one,
        # -(dg/dtheta) / (dg/dt); the reset (and the refractory period) make the next
        # segment start from v_reset at a differentiable time. Dummy values keep `log`
        # away from invalid arguments where an entry does not apply.
        tau = self.tau_mem
        t_ref = 0.0 if self.t_ref is None else self.t_ref
        v_inf = self.v_rest + current * (tau / self.C_mem)
        u0 = v_inf - y.v
        if y.refractory is None:
            blocked_start = jnp.zeros(u0.shape, bool)
            t0 = jnp.zeros_like(u0)
        else:
            blocked_start = y.refractory >= interval
            t0 = jnp.where(blocked_start, 0.0, y.refractory)
        spiked = count >= 1
        u_th = jnp.where(spiked, v_inf - self.v_threshold, 1.0)
        # tau log(u / u_th) with u / u_th = 1 + (v_threshold - v) / u_th, the
        # difference taken directly: where v_inf is far above threshold (a large
        # tau_mem, or a strong current), the ratio of the two is close to 1, and
        # its own rounding would be tau * eps in the time.
        rise_first = jnp.where(spiked, (self.v_threshold - y.v) / u_th, 1.0)
        rise_reset = jnp.where(spiked, (self.v_threshold - self.v_reset) / u_th, 1.0)
        first = t0 + tau * log1p(rise_first)
        period = t_ref + tau * log1p(rise_reset)
        n_before = jnp.maximum(count - 1, 0).astype(first.dtype)
        t_last = first + n_before * period
        free_after = t_last + t_ref
        # A refractory period that outlasts the interval (free_after > interval)
        # ends the interval at v_reset (below); its free-evolution value is not
        # used, and clamping keeps its `exp` finite: an overflow there would give
        # NaN gradients (0 * inf) through the discarded branch. A spike at the end
        # keeps its own time's derivative (`jnp.minimum` would halve it on a tie):
        # the state there is the reset one, flowed for no time since the spike.
        # Without a refractory period nothing is clamped: a last spike counted in
        # this interval lies after its end only by rounding.
        free_in = jnp.where(
            (free_after <= interval) | (t_ref == 0), free_after, interval
        )
        # (From the segment's start value, as in `exact_flow`.)
        v_end_spiked = relax(self.v_reset, v_inf, (interval - free_in) / tau)
        # Segment that ends in the last spike: from the free start (one spike) or
        # from the end of the previous refractory period. Without a spike, the
        # free start's segment runs to the interval's end: `v_free` is then the end
        # state (the same expression, one `exp` fewer per neuron and interval).
        seg_start = jnp.where(count >= 2, t_last - period + t_ref, t0)
        v_seg = jnp.where(count >= 2, self.v_reset, y.v)
        v_free = relax(v_seg, v_inf, (interval - seg_start) / tau)
        v_end = jnp.where(spiked, v_end_spiked, v_free)
        refractory = None
        if y.refractory is not None:
            # (A refractory period of 0 blocks nothing, even at a spike at the end.)
            ends_blocked = spiked & (t_ref > 0) & (free_after >= interval)
            v_end = jnp.where(ends_blocked, self.v_reset, v_end)
            v_end = jnp.where(blocked_start, y.v, v_end)
            refractory = jnp.where(ends_blocked, free_after - interval, 0.0)
            refractory = jnp.where(blocked_start, y.refractory - interval, refractory)
        return IntervalReplay(
            y_end=LIFState(v_end, refractory),
            first=first,
            period=period,
            last_margin=v_free - self.v_threshold,
            next_margin=v_end - self.v_threshold,
        )
