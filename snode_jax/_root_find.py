"""Bracketed search for the time of an upward threshold crossing."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from ._checks import (
    MAX_BUDGET,
    as_static_float,
    as_static_int,
    check_positive_float,
    check_positive_int,
    check_real_float,
    describe,
)
from ._custom_types import NeuronBool, NeuronFloat
from ._misc import is_concrete, where_tree


class BracketedNewton(eqx.Module):
    """The crossing search of the adaptive path: per neuron, Newton's method inside
    a bracket that is kept throughout, falling back to bisection (see
    [`bisect_crossing`][]).

    Not an `optimistix.AbstractRootFinder`: each neuron has its own bracket and its
    own convergence, and the caller needs the final bracket's lower end too (the
    state just below a crossing, when a step blew up past it), whereas
    `optimistix.root_find` stops on one criterion for the whole problem.

    **Arguments:**

    - `rtol`: relative tolerance on the crossing time (default 0).
    - `atol`: absolute tolerance (ms); default `None`: for a search on an exact
        flow, machine precision for that spike time however long the interval or
        the run: on the event-driven engines eps times the crossing's own time
        (1 to 2 ulp of it; the crossing returned, the upper end of the final
        bracket, is late by less than that), on dense inputs 4 eps of its time
        in the interval; or on a solver's dense
        output, 4 ulp of the interval length (the solver's own solution is
        polished from there).
    - `max_steps`: the iteration budget; an unconverged search is reported as
        `RESULTS.crossing_search_failed`.
    """

    rtol: float = eqx.field(static=True, default=0.0, converter=as_static_float)
    atol: float | None = eqx.field(static=True, default=None, converter=as_static_float)
    max_steps: int = eqx.field(static=True, default=200, converter=as_static_int)

    def __check_init__(self):
        check_positive_int("max_steps", self.max_steps, MAX_BUDGET)
        check_real_float("rtol", self.rtol, zero=True)
        if self.atol is not None:
            check_positive_float("atol", self.atol, " (ms) or None")

    def _atol(self, dtype, interval):
        if self.atol is None:
            return 4 * jnp.finfo(dtype).eps * interval
        return self.atol

    def tolerance(self, t, interval):
        """The search's tolerance (ms) at the crossing time `t`."""
        return self._atol(jnp.result_type(t), interval) + self.rtol * jnp.abs(t)

    def search(
        self,
        fn,
        lower,
        upper,
        g_lower,
        g_upper,
        active,
        interval,
        value_and_slope=None,
        clock=None,
        ulps: int = 1,
    ):
        """`(t, converged, below)`: the crossing (upper end of the final bracket),
        whether the search converged, and the lower end of the final bracket.
        `value_and_slope`, if given, returns `fn` and its slope (by default the slope
        comes from forward-mode autodiff of `fn`). `clock`, for a search on an
        exact flow: the time (per neuron, or one for all) that `t` is counted from;
        the default tolerance is then `ulps` eps times `clock + t` (with `ulps=1`,
        1 to 2 ulp of it), not 4 ulp of `interval`."""
        bracket = (lower, upper, g_lower, g_upper, active, interval)
        t, converged, below, _ = self._search(
            fn, value_and_slope, None, bracket, clock, ulps
        )
        return t, converged, below

    def search_with_state(
        self,
        value_slope_state,
        lower,
        upper,
        g_lower,
        g_upper,
        active,
        interval,
        state_lower,
    ):
        """`(t, converged, below, state)`: as `search`, with `value_slope_state(t)`
        returning the function, its slope and the state at `t` (a pytree of
        per-neuron leaves), and `state` the state at `below` (the search's own
        evaluation there, so the caller need not compute it again; `state_lower`,
        the state at `lower`, where the lower end never moved)."""
        bracket = (lower, upper, g_lower, g_upper, active, interval)
        return self._search(None, value_slope_state, state_lower, bracket)

    def _search(
        self, fn, value_and_slope, state_lower, bracket, clock=None, ulps: int = 1
    ):
        lower, upper, g_lower, g_upper, active, interval = bracket
        rtol, atol = self.rtol, self._atol(lower.dtype, interval)
        if clock is not None and self.atol is None:
            # `ulps` eps of the crossing's own time (`clock + hi`, the bracket's
            # upper end as it closes in; with 1, 1 to 2 ulp of it): a tolerance
            # of the interval or the run's length put early spikes of a long run
            # late by up to that much, and each late spike moved the next. (On
            # the event-driven engines 4 eps put float32 spikes 1.7 ulp late on
            # average and the delays added up: a 3-layer float32 network up to
            # 1.5e-3 ms off, against 2.5e-4 with 1. The dense path passes 4: see
            # `_crossing.py`.)
            # (With a floor of eps^2 of the bracket: about twice the mantissa's
            # bits of bisection where the threshold function jumps at the
            # bracket's lower end, as a flow written `v_inf + (v - v_inf) *
            # exp(-h / tau)` can by rounding, instead of chasing the root to 0.)
            eps = jnp.finfo(lower.dtype).eps
            floor = eps * eps * jnp.abs(upper - lower)
            rtol, atol = rtol + ulps * eps, ulps * eps * jnp.abs(clock) + floor
        return _bracket_search(
            fn,
            lower,
            upper,
            g_lower,
            g_upper,
            active,
            rtol=rtol,
            atol=atol,
            max_iters=self.max_steps,
            value_and_slope=value_and_slope,
            state_lower=state_lower,
        )


def bisect_crossing(
    fn: Callable[[NeuronFloat], NeuronFloat],
    lower: NeuronFloat,
    upper: NeuronFloat,
    g_lower: NeuronFloat,
    g_upper: NeuronFloat,
    active: NeuronBool,
    *,
    rtol: float,
    atol: float | NeuronFloat,
    max_iters: int,
) -> tuple[NeuronFloat, NeuronBool]:
    """Locate, per neuron, an upward zero crossing of `fn` inside `[lower, upper]`.

    Each neuron's bracket must satisfy `g_lower < 0 <= g_upper`, which the caller
    establishes from the step's end points; the bracket is kept throughout, so the
    answer is guaranteed to lie in it. The search is bisection accelerated by
    Newton's method (slopes by forward-mode autodiff of `fn`), safeguarded as in
    Numerical Recipes' `rtsafe`: a Newton step is taken from the bracket end with
    the smaller |g| only if it stays inside the bracket and at most halves the step
    before it, else the bracket is bisected; near the root a step of half the
    tolerance closes the bracket (one such step in a row: after it, a bisection).
    Convergence is quadratic for smooth crossings and never worse than bisection.
    Where the function is monotone in the bracket (the LIF flow, a solver's dense
    output over a small step) the crossing found is the earliest one.

    **Arguments:**

    - `fn`: maps times (one per neuron) to threshold values (one per neuron),
        vectorised over neurons.
    - `lower`, `upper`: the bracket, one per neuron.
    - `g_lower`, `g_upper`: `fn` at the bracket ends.
    - `active`: which neurons to search; the others return `upper` untouched.
    - `rtol`, `atol`: stop when `upper - lower <= atol + rtol * |upper|`, or when no
        floating point number lies strictly inside the bracket.
    - `max_iters`: the iteration budget (static); the loop never runs longer.

    **Returns:**

    A tuple `(t, converged)`: `t` is the upper end of the final bracket, where the
    threshold function is `>= 0` (the neuron has reached threshold; a NaN value, as
    from a state that blew up, counts as past threshold); `converged` is False for
    an active neuron whose bracket was still too wide after `max_iters`, and for an
    active neuron whose bracket is not one (`g_lower < 0 <= g_upper` and
    `lower <= upper` do not hold, or a traced tolerance is NaN or negative there):
    that neuron is not searched and returns `upper`.

    `rtol` and `atol` must be numbers `>= 0` (`atol` one, or one per neuron, or
    any shape that broadcasts to the neurons'), checked here where they are not
    traced (a traced one that is NaN or negative fails its neurons' brackets);
    `max_iters` an int `>= 0` (its range checked where it is not traced); the five
    arrays of one shape, `active` booleans. Else `TypeError` or `ValueError`
    naming the argument.
    """
    shape = jnp.shape(lower)
    tolerances = {"rtol": rtol, "atol": atol}
    for name, tol in tolerances.items():
        if not is_concrete(tol):
            continue
        host = np.asarray(tol)
        unit = " (ms)" if name == "atol" else ""
        # (`jnp.issubdtype`: bfloat16 is a floating type NumPy does not know.)
        real = not isinstance(tol, bool) and (
            jnp.issubdtype(host.dtype, jnp.floating)
            or jnp.issubdtype(host.dtype, jnp.integer)
        )
        values = host.astype(np.float64) if real else host
        if not real or not np.all(np.isfinite(values) & (values >= 0)):
            raise ValueError(
                f"`{name}` must be finite numbers >= 0{unit}, got {describe(host)}."
            )
        try:
            fits = np.broadcast_shapes(host.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"`{name}` must be one number or one per neuron (shape {shape}), got "
                f"shape {host.shape}."
            )
    dtype = getattr(max_iters, "dtype", None)
    integer = isinstance(max_iters, (int, np.integer)) or (
        dtype is not None
        and np.ndim(max_iters) == 0
        and jnp.issubdtype(dtype, jnp.integer)
    )
    if isinstance(max_iters, (bool, np.bool_)) or not integer:
        raise TypeError(f"`max_iters` must be an int >= 0, got {max_iters!r}.")
    if is_concrete(max_iters):  # (a traced budget: the loop runs that many at most)
        max_iters = int(max_iters)
    if isinstance(max_iters, int) and not 0 <= max_iters <= MAX_BUDGET:
        raise ValueError(
            f"`max_iters` must be an int from 0 to {MAX_BUDGET}, got {max_iters!r}."
        )
    arrays = {"lower": lower, "upper": upper, "g_lower": g_lower}
    arrays.update(g_upper=g_upper, active=active)
    for name, a in arrays.items():
        if jnp.shape(a) != shape:
            raise ValueError(
                f"`{name}` must have the shape of `lower` {shape} (one value per "
                f"neuron), got shape {jnp.shape(a)}."
            )
    if jnp.result_type(active) != jnp.bool_:
        raise TypeError(
            f"`active` must be booleans, got dtype {jnp.result_type(active)}."
        )
    active = jnp.asarray(active)
    # The bracket's conditions (NaN `g_upper` counts as past threshold, as in the
    # search; NaN ends or `g_lower` fail them).
    bracket = (g_lower < 0) & ~(g_upper < 0) & (lower <= upper)
    for tol in tolerances.values():
        if not is_concrete(tol):
            bracket = bracket & (jnp.asarray(tol) >= 0)
    t, converged, *_ = _bracket_search(
        fn,
        lower,
        upper,
        g_lower,
        g_upper,
        active & bracket,
        rtol=rtol,
        atol=atol,
        max_iters=max_iters,
    )
    return t, converged & (bracket | ~active)


def _bracket_search(
    fn,
    lower,
    upper,
    g_lower,
    g_upper,
    active,
    *,
    rtol,
    atol,
    max_iters,
    value_and_slope=None,
    state_lower=None,
):
    """[`bisect_crossing`][], also returning the lower end of the final bracket and,
    with `state_lower`, the state there (else `None`; see
    `BracketedNewton.search_with_state`)."""

    def jvp_slope(s):
        # `fn` acts lane by lane, so a tangent of ones gives each lane's slope.
        return jax.jvp(fn, (s,), (jnp.ones_like(s),))

    if value_and_slope is None:
        value_and_slope = jvp_slope

    def tol_fn(hi):
        return atol + rtol * jnp.abs(hi)

    def done_fn(lo, hi):
        mid = lo + 0.5 * (hi - lo)
        return ((hi - lo) <= tol_fn(hi)) | (mid <= lo) | (mid >= hi)

    # The bracket's seven per-neuron values travel as one (7, n) array: XLA's CPU
    # compiler emits a kernel for each array the loop carries, so one array makes
    # one kernel of their update, not seven (a smaller program to compile).
    def cond_fun(carry):
        it, _, done, _ = carry
        return (it < max_iters) & jnp.any(~done)

    def body_fun(carry):
        it, packed, done, ylo = carry
        lo, hi, glo, ghi, dlo, dhi, step_old = packed
        # Newton from the end nearer the root (smaller |g|; NaN counts as far).
        from_low = jnp.abs(glo) <= jnp.where(jnp.isnan(ghi), jnp.inf, jnp.abs(ghi))
        x = jnp.where(from_low, lo, hi)
        gx = jnp.where(from_low, glo, ghi)
        dgx = jnp.where(from_low, dlo, dhi)
        # Where the slope is not known yet (a bracket end given by the caller), the
        # secant through the bracket stands in for it.
        dgx = jnp.where(dgx != 0, dgx, (ghi - glo) / (hi - lo))
        newton = x - gx / jnp.where(dgx != 0, dgx, 1)
        # Near the root Newton's steps fall below the tolerance; stepping half the
        # tolerance instead lands past the root and closes the bracket.
        half_tol = 0.5 * tol_fn(hi)
        small = jnp.abs(newton - x) < half_tol
        toward = jnp.where(from_low, half_tol, -half_tol)  # into the bracket
        newton = jnp.where(small, x + toward, newton)
        # Safeguard (as in Numerical Recipes' rtsafe): Newton only when it stays
        # strictly inside the bracket and at most half the step before last; else
        # bisect. The bracket thus at least halves every other iteration.
        use_newton = (dgx != 0) & jnp.isfinite(newton)
        use_newton = use_newton & (newton > lo) & (newton < hi)
        fast = jnp.abs(newton - x) <= 0.5 * jnp.abs(step_old)
        # A half-tolerance step only once in a row: where the slope is far too
        # steep (the vector field's slope near a blow-up, standing in for a
        # sub-step's), Newton's steps stay tiny and half-tolerance steps would
        # creep towards a root far away; bisect instead.
        creeping = small & (jnp.abs(step_old) <= 2 * half_tol)
        use_newton = use_newton & ((small & ~creeping) | fast)
        mid = lo + 0.5 * (hi - lo)
        c = jnp.where(use_newton, newton, mid)
        if state_lower is None:
            gc, dgc = value_and_slope(c)
        else:
            gc, dgc, yc = value_and_slope(c)
        upper_side = ~(gc < 0)  # NaN (a blown-up state) counts as past threshold
        to_lo = (~done) & ~upper_side
        to_hi = (~done) & upper_side
        exact = (~done) & (gc == 0)
        lo = jnp.where(to_lo | exact, c, lo)
        glo = jnp.where(to_lo | exact, gc, glo)
        dlo = jnp.where(to_lo | exact, dgc, dlo)
        if state_lower is not None:
            ylo = where_tree(to_lo | exact, yc, ylo)
        hi = jnp.where(to_hi, c, hi)
        ghi = jnp.where(to_hi, gc, ghi)
        dhi = jnp.where(to_hi, dgc, dhi)
        step_old = jnp.where(done, step_old, jnp.where(use_newton, c - x, hi - lo))
        done = done | exact | done_fn(lo, hi)
        packed = jnp.stack([lo, hi, glo, ghi, dlo, dhi, step_old])
        return it + 1, packed, done, ylo

    # Slopes at the ends are not known yet (zero: the secant is used instead). No
    # function evaluation happens before the loop, so a search with no active
    # neuron costs nothing.
    glo, ghi = g_lower, g_upper
    dlo = dhi = jnp.zeros_like(lower)
    done0 = (~active) | done_fn(lower, upper)
    step0 = upper - lower
    packed = jnp.stack([lower, upper, glo, ghi, dlo, dhi, step0])
    carry = (0, packed, done0, state_lower)
    _, packed, done, ylo = lax.while_loop(cond_fun, body_fun, carry)
    lo, hi = packed[0], packed[1]
    return hi, done | ~active, lo, ylo
