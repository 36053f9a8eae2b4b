"""A population on its exact flow, at and between events, for both event-driven
engines: where its neurons cross threshold (located on constants), the crossing
times' implicit-function derivatives, and the state after a jump or a reset at an
instant whose own time carries a derivative."""

import jax
import jax.lax as lax
import jax.numpy as jnp

from ._crossing import on_subsets, take_lanes
from ._custom_types import State
from ._dynamics import AbstractExactFlowDynamics
from ._misc import tangent
from ._root_find import BracketedNewton

# Crossings are searched on subsets of neurons of this size: at least _MIN_CHUNK,
# and at least 1/_CHUNK_DIVISOR of the population (more subsets if more neurons
# cross).
_MIN_CHUNK = 32
_CHUNK_DIVISOR = 16


def locate_crossings(
    dynamics: AbstractExactFlowDynamics,
    y: State,
    current,
    span,
    active,
    root_finder: BracketedNewton,
    clock,
):
    """Per neuron, on constants: whether its flow from `y` under `current` crosses
    threshold within `span`, and where (`inf` if not; time from `clock`, the time
    of `y` in the run, one for all neurons or one each, which sets the search's
    tolerance). The first crossing lies before an interior maximum above
    threshold, else (the flow rises past its minimum, or monotonically) before
    the end.

    **Returns:** `(crosses, found, converged, margin)`, `margin(h)` the threshold
    function of the constant flow (for the slope of the implicit derivative).
    """
    dyn_c, y_c, current_c, span_c = lax.stop_gradient((dynamics, y, current, span))

    def margin(h):
        return dyn_c.threshold(dyn_c.exact_flow(y_c, current_c, h))

    g_start = dyn_c.threshold(y_c)
    g_end = margin(span_c)
    t_peak, has_peak = dyn_c.peak_in_step(y_c, current_c, span_c)
    g_peak = margin(t_peak)
    before_peak = has_peak & (g_peak >= 0)
    crosses = active & (g_start < 0) & (before_peak | (g_end >= 0))
    upper = jnp.where(before_peak, t_peak, span_c)
    g_upper = jnp.where(before_peak, g_peak, g_end)
    # Few neurons cross before one event: the search runs on compact subsets of
    # `chunk` neurons (as many as needed), not on the whole population. Each
    # neuron's search is its own, so the results are those of one search over all.
    n = span_c.shape[0]
    chunk = max(_MIN_CHUNK, n // _CHUNK_DIVISOR)
    # `clock` only sets the search's tolerance: a constant here, one per neuron.
    clock_c = jnp.broadcast_to(lax.stop_gradient(clock), (n,))
    if chunk >= n:  # a small population: one search over all of it
        found, converged, _ = root_finder.search(
            margin,
            jnp.zeros_like(span_c),
            upper,
            g_start,
            g_upper,
            crosses,
            span_c,
            clock=clock_c,
        )
        return crosses, jnp.where(crosses, found, jnp.inf), converged, margin

    def search(j, real):
        dyn_j = take_lanes(dyn_c, j)
        y_j = jax.tree.map(lambda a: a[j], y_c)
        current_j = current_c[j]

        def margin_j(h):
            return dyn_j.threshold(dyn_j.exact_flow(y_j, current_j, h))

        found_j, converged_j, _ = root_finder.search(
            margin_j,
            jnp.zeros((chunk,), span_c.dtype),
            upper[j],
            g_start[j],
            g_upper[j],
            real & crosses[j],
            span_c[j],
            clock=clock_c[j],
        )
        return found_j, converged_j

    found, converged = on_subsets(crosses, chunk, search, (upper, jnp.ones((n,), bool)))
    return crosses, jnp.where(crosses, found, jnp.inf), converged, margin


def implicit_crossing(
    dynamics: AbstractExactFlowDynamics, y: State, current, h, margin
):
    """The crossing times `h` (located on constants) with the implicit-function
    derivative of the root of `g(h; y, p) = 0`: equal to `h` in value."""
    _, slope = jax.jvp(margin, (h,), (jnp.ones_like(h),))
    g = dynamics.threshold(dynamics.exact_flow(y, current, h))
    safe_slope = jnp.where(slope != 0, slope, 1)
    return h - tangent(g) / safe_slope


def fire_terms(dynamics: AbstractExactFlowDynamics, t, y: State, shift, current):
    """The terms, zero in value, that turn the reset of `y` into [`reset_at`][]'s:
    a neuron firing at its own time `t + shift`, taken with the state and current
    it crossed with. Stored when the crossing is found, they are added to the
    reset when the neuron fires, after any other jumps at that instant."""
    return jax.tree.map(
        jnp.subtract, reset_at(dynamics, t, y, shift, current), dynamics.reset(y)
    )


def earliest(*times):
    """The earliest of `times`, the clock's next stop; on a tie, the first listed.

    Its derivative is that of the time chosen (`jnp.minimum` would split a tie's
    derivative between the two). The order matters where the clock's derivative is
    not corrected afterwards: the run's end first (the final state is that at
    `t_end`), then a switch of held current (which takes effect at the clock);
    a jump at that instant is applied with its own time's derivative whatever the
    clock's ([`jump_at`][], [`reset_at`][]).
    """
    out = times[-1]
    for t in reversed(times[:-1]):
        out = jnp.where(t <= out, t, out)
    return out


def jump_at(dynamics: AbstractExactFlowDynamics, t, y: State, amount, offset, current):
    """`y` after the jump `amount` at the clock `t`, where the jump's own time is
    `t + offset` (`offset` zero in value, with a derivative): moving the jump by dt
    moves the state after it by dt (f(y-) - f(y+)), f the vector field."""
    y_plus = dynamics.jump(y, amount)
    f_minus = dynamics.vector_field(t, y, current)
    f_plus = dynamics.vector_field(t, y_plus, current)
    return jax.tree.map(
        lambda yp, fm, fp: yp + offset * (fm - fp), y_plus, f_minus, f_plus
    )


def reset_at(dynamics: AbstractExactFlowDynamics, t, y: State, shift, current):
    """The reset state at the clock `t` of neurons firing at their own time
    `t + shift` (`shift` zero in value): to first order the state there is
    `y + shift f(y)`, and the reset state flows back to the clock, `- shift
    f(reset)`. Both terms carry the derivative of each neuron's own spike time
    into everything after it."""
    f_pre = dynamics.vector_field(t, y, current)
    y_fire = jax.tree.map(lambda a, f: a + shift * f, y, f_pre)
    reset = dynamics.reset(y_fire)
    f_reset = dynamics.vector_field(t, reset, current)
    return jax.tree.map(lambda a, f: a - shift * f, reset, f_reset)
