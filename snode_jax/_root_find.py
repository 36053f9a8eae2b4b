"""Bracketed search for the time of an upward threshold crossing."""

from collections.abc import Callable

import jax.lax as lax
import jax.numpy as jnp

from ._custom_types import NeuronBool, NeuronFloat


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
    answer is guaranteed to lie in it. The search is bisection accelerated by the
    Illinois variant of regula falsi: it takes a secant point inside the bracket,
    halving the weight of an end point that survives twice, and every third
    iteration is a plain bisection, so the bracket at least halves every three
    iterations whatever the function. Where the function is monotone in the bracket
    (the LIF flow, or a small solver step) the crossing found is the earliest one.

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
    an active neuron whose bracket was still too wide after `max_iters`.
    """
    t, converged, _ = _bracket_search(
        fn,
        lower,
        upper,
        g_lower,
        g_upper,
        active,
        rtol=rtol,
        atol=atol,
        max_iters=max_iters,
    )
    return t, converged


def _bracket_search(
    fn, lower, upper, g_lower, g_upper, active, *, rtol, atol, max_iters
):
    """[`bisect_crossing`][], also returning the lower end of the final bracket."""

    def done_fn(lo, hi):
        mid = lo + 0.5 * (hi - lo)
        small = (hi - lo) <= atol + rtol * jnp.abs(hi)
        return small | (mid <= lo) | (mid >= hi)

    def cond_fun(carry):
        it, lo, hi, _, _, _, done = carry
        return (it < max_iters) & jnp.any(~done)

    def body_fun(carry):
        it, lo, hi, glo, ghi, side, done = carry
        secant = hi - ghi * ((hi - lo) / (ghi - glo))
        mid = lo + 0.5 * (hi - lo)
        use_secant = (it % 3 != 2) & (secant > lo) & (secant < hi)
        c = jnp.where(use_secant, secant, mid)
        gc = fn(c)
        upper_side = ~(gc < 0)  # NaN (a blown-up state) counts as past threshold
        # Illinois: an end point kept twice in a row has its value halved.
        new_glo = jnp.where(upper_side, jnp.where(side == 1, glo * 0.5, glo), gc)
        new_ghi = jnp.where(upper_side, gc, jnp.where(side == -1, ghi * 0.5, ghi))
        new_lo = jnp.where(upper_side, lo, c)
        new_hi = jnp.where(upper_side, c, hi)
        new_side = jnp.where(upper_side, 1, -1)
        keep = done
        lo = jnp.where(keep, lo, new_lo)
        hi = jnp.where(keep, hi, new_hi)
        glo = jnp.where(keep, glo, new_glo)
        ghi = jnp.where(keep, ghi, new_ghi)
        side = jnp.where(keep, side, new_side)
        exact = (~keep) & (gc == 0)
        lo = jnp.where(exact, hi, lo)
        done = done | exact | done_fn(lo, hi)
        return it + 1, lo, hi, glo, ghi, side, done

    done0 = (~active) | done_fn(lower, upper)
    side0 = jnp.zeros(lower.shape, jnp.int32)
    init = (0, lower, upper, g_lower, g_upper, side0, done0)
    _, lo, hi, _, _, _, done = lax.while_loop(cond_fun, body_fun, init)
    return hi, done | ~active, lo
