"""`bisect_crossing`: bracketed search for an upward zero crossing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

# Per-lane test functions (vectorised over lanes), each with a known root in [0, 1].
ROOT_EXP = np.log(2.0) / 50.0


def _linear(t):
    return 3.0 * (t - 0.3)


def _exp(t):
    # Very convex: plain regula falsi keeps the lower end and crawls.
    return jnp.exp(50.0 * t) - 2.0


def _steep_flat(t):
    # Flat almost everywhere, a near-jump at 0.7: secants land far from the root.
    return jnp.tanh(1000.0 * (t - 0.7)) + 1e-3 * (t - 0.7)


def _cubic(t):
    # A flat (triple) root: g ~ (t - 0.45)^3.
    return (t - 0.45) ** 3


def _lif(t):
    # The LIF voltage from 0 towards v_inf = 1.5 (tau = 0.5) minus threshold 1.
    return 1.5 * (1.0 - jnp.exp(-t / 0.5)) - 1.0


CASES = {
    "linear": (_linear, 0.3),
    "exp": (_exp, ROOT_EXP),
    "steep_flat": (_steep_flat, 0.7),
    "cubic": (_cubic, 0.45),
    "lif": (_lif, 0.5 * np.log(3.0)),
}


def _search(fn, lower, upper, active=None, **kwargs):
    lower = jnp.asarray(lower, jnp.float64)
    upper = jnp.asarray(upper, jnp.float64)
    if active is None:
        active = jnp.ones(lower.shape, bool)
    kwargs.setdefault("rtol", 0.0)
    kwargs.setdefault("atol", 1e-13)
    kwargs.setdefault("max_iters", 200)
    return sj.bisect_crossing(fn, lower, upper, fn(lower), fn(upper), active, **kwargs)


@functools.partial(jax.jit, static_argnames=("name", "max_iters"))
def _search_case(name, lower, upper, atol, *, max_iters):
    # One compilation per test function; the tolerance is traced (per lane).
    fn = CASES[name][0]
    active = jnp.ones(lower.shape, bool)
    return sj.bisect_crossing(
        fn,
        lower,
        upper,
        fn(lower),
        fn(upper),
        active,
        rtol=0.0,
        atol=atol,
        max_iters=max_iters,
    )


# The bracket at least halves every three iterations whatever the function, so
# 3 log2(width / atol) iterations (plus a few) always suffice; here width <= 2 and
# atol >= 1e-13. The tests run with exactly that budget.
BUDGET = 3 * int(np.ceil(np.log2(2.0 / 1e-13))) + 3


@pytest.mark.parametrize("name", list(CASES))
def test_converges_to_known_root(name):
    fn, root = CASES[name]
    # Several brackets around the root, of different widths and asymmetries, each
    # with three tolerances.
    lower = np.array([0.0, root - 1e-3, root - 0.2, 0.0]).clip(0.0)
    upper = np.array([1.0, root + 0.5, root + 1e-6, 2.0 * root + 0.01]).clip(max=2.0)
    assert np.all(np.asarray(fn(lower)) < 0) and np.all(np.asarray(fn(upper)) >= 0)
    atol = np.repeat([1e-4, 1e-9, 1e-13], len(lower))
    lower, upper = np.tile(lower, 3), np.tile(upper, 3)
    t, converged = _search_case(name, lower, upper, atol, max_iters=BUDGET)
    assert np.all(np.asarray(converged))
    t = np.asarray(t)
    # The returned end has g >= 0 and lies within the tolerance above the root.
    assert np.all(np.asarray(fn(jnp.asarray(t))) >= 0)
    assert np.all(t >= lower) and np.all(t <= upper)
    assert np.all(np.abs(t - root) <= atol + 4e-16), np.abs(t - root) / atol


def test_relative_tolerance():
    root = 1234.5
    fn = lambda t: t - root
    t, converged = _search(
        fn, jnp.array([1000.0]), jnp.array([2000.0]), rtol=1e-6, atol=0.0
    )
    assert bool(converged[0])
    assert root <= float(t[0]) <= root * (1 + 1.01e-6)


def test_machine_precision_when_tolerance_is_zero():
    # atol = rtol = 0: stops when no float lies strictly inside the bracket.
    fn, root = CASES["lif"]
    t, converged = _search(fn, jnp.array([0.0]), jnp.array([1.0]), atol=0.0)
    assert bool(converged[0])
    t = float(t[0])
    assert float(fn(jnp.asarray(t))) >= 0
    assert abs(t - root) <= 4 * np.spacing(root)


def test_exact_zero_at_upper_end():
    fn = lambda t: t - 0.5
    t, converged = _search(fn, jnp.array([0.0, 0.25]), jnp.array([0.5, 0.5]))
    assert np.all(np.asarray(converged))
    np.testing.assert_allclose(t, 0.5, rtol=0, atol=1e-13)
    assert np.all(np.asarray(fn(t)) >= 0)


def test_inactive_lanes_untouched():
    fn, root = CASES["exp"]
    # Lane 2 is no bracket at all (g > 0 at both ends).
    lower = jnp.array([0.0, 0.0, 0.5, 0.0])
    upper = jnp.array([1.0, 1.0, 0.7, 1.0])
    active = jnp.array([True, False, False, True])
    t, converged = _search(fn, lower, upper, active=active)
    t = np.asarray(t)
    # Inactive lanes return `upper` bit for bit and count as converged.
    np.testing.assert_array_equal(t[[1, 2]], [1.0, 0.7])
    assert np.all(np.asarray(converged))
    np.testing.assert_allclose(t[[0, 3]], root, rtol=0, atol=1e-13)


def test_all_inactive_is_a_no_op():
    fn, _ = CASES["exp"]
    upper = jnp.array([1.0, 0.9])
    t, converged = _search(fn, jnp.array([0.0, 0.0]), upper, active=jnp.zeros(2, bool))
    np.testing.assert_array_equal(np.asarray(t), np.asarray(upper))
    assert np.all(np.asarray(converged))


def test_max_iters_too_small_reports_not_converged():
    fn, root = CASES["exp"]
    lower = jnp.array([0.0, 0.0, 0.0])
    upper = jnp.array([1.0, 1.0, 1.0])
    active = jnp.array([True, True, False])
    t, converged = _search(fn, lower, upper, active=active, atol=1e-14, max_iters=3)
    converged = np.asarray(converged)
    assert not converged[0] and not converged[1]
    assert converged[2]  # inactive
    # The answer is still the upper end of a valid bracket.
    t = np.asarray(t)
    assert np.all(t[:2] >= root) and np.all(t[:2] <= 1.0)
    assert np.all(np.asarray(fn(jnp.asarray(t[:2]))) >= 0)
    # With the budget it converges.
    t, converged = _search(fn, lower, upper, active=active, atol=1e-14)
    assert np.all(np.asarray(converged))


def test_a_bracket_that_is_not_one_is_not_converged():
    """Lanes whose ends do not bracket an upward crossing are not searched: they
    return `upper` and `converged` False (an inactive lane stays converged)."""
    lower = jnp.array([0.0, 0.0, 0.6, 0.0, 1.0, 0.0, 0.0])
    upper = jnp.array([1.0, 0.4, 1.0, 1.0, 0.0, 1.0, 0.4])
    g_lower = lower - 0.5
    g_upper = upper - 0.5
    g_upper = g_upper.at[3].set(-g_upper[3]).at[5].set(jnp.nan)
    g_lower = g_lower.at[3].set(-g_lower[3])
    # 0: a bracket; 1: below zero at both ends; 2: above at both; 3: a downward
    # crossing; 4: ends reversed; 5: NaN upper value (past threshold: a bracket);
    # 6: not a bracket, inactive.
    active = jnp.array([True] * 6 + [False])
    t, converged = sj.bisect_crossing(
        lambda t: t - 0.5,
        lower,
        upper,
        g_lower,
        g_upper,
        active,
        rtol=0.0,
        atol=1e-13,
        max_iters=200,
    )
    np.testing.assert_array_equal(
        np.asarray(converged), [True, False, False, False, False, True, True]
    )
    np.testing.assert_allclose(np.asarray(t)[[0, 5]], 0.5, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(np.asarray(t)[1:5], np.asarray(upper)[1:5])

    # A traced tolerance that is NaN or negative fails its lane the same way.
    def search(atol):
        return sj.bisect_crossing(
            lambda t: t - 0.5,
            lower[:3],
            upper[:3] * 0 + 1,
            lower[:3] - 0.5,
            jnp.full(3, 0.5),
            active[:3],
            rtol=0.0,
            atol=atol,
            max_iters=200,
        )

    _, converged = jax.jit(search)(jnp.array([1e-13, jnp.nan, -1.0]))
    np.testing.assert_array_equal(np.asarray(converged), [True, False, False])
    # A traced `rtol` is taken as well (NaN or negative: every lane fails).
    for rtol, expected in ((1e-9, True), (jnp.nan, False), (-1.0, False)):
        _, converged = jax.jit(
            lambda r: sj.bisect_crossing(
                lambda t: t - 0.5,
                jnp.zeros(2),
                jnp.ones(2),
                jnp.full(2, -0.5),
                jnp.full(2, 0.5),
                jnp.ones(2, bool),
                rtol=r,
                atol=0.0,
                max_iters=200,
            )
        )(jnp.asarray(rtol))
        np.testing.assert_array_equal(np.asarray(converged), [expected] * 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_iters": -5}, ValueError, r"`max_iters` must be an int from 0 to .*-5"),
        ({"max_iters": 2.0}, TypeError, r"`max_iters` must be an int >= 0, got 2\.0"),
        ({"max_iters": True}, TypeError, "`max_iters` must be an int >= 0"),
        (
            {"rtol": float("nan")},
            ValueError,
            r"`rtol` must be finite numbers >= 0, got nan",
        ),
        ({"rtol": -1e-3}, ValueError, "`rtol` must be finite numbers >= 0"),
        ({"rtol": "0"}, ValueError, "`rtol` must be finite numbers >= 0, got '0'"),
        ({"atol": -1.0}, ValueError, r"`atol` must be finite numbers >= 0 .*-1\.0"),
        ({"atol": jnp.array([1e-9, jnp.inf])}, ValueError, "`atol` must be finite"),
        ({"atol": jnp.ones(3)}, ValueError, r"`atol` must be one number or one per"),
        ({"g_upper": jnp.ones(3)}, ValueError, r"`g_upper` must have the shape of "),
        ({"active": jnp.ones((1, 2), bool)}, ValueError, "`active` must have the"),
        ({"active": jnp.ones(2)}, TypeError, "`active` must be booleans, got dtype f"),
    ],
)
def test_arguments_are_checked(kwargs, error, match):
    arrays = {"lower": jnp.zeros(2), "upper": jnp.ones(2)}
    arrays.update(g_lower=-jnp.ones(2), g_upper=jnp.ones(2), active=jnp.ones(2, bool))
    options = {"rtol": 0.0, "atol": 1e-9, "max_iters": 50}
    for name, value in kwargs.items():
        (arrays if name in arrays else options)[name] = value
    with pytest.raises(error, match=match):
        sj.bisect_crossing(lambda t: 2 * t - 1, *arrays.values(), **options)


def test_arguments_of_other_accepted_forms():
    """A tolerance that broadcasts to the neurons (one number, shape (1,)), a 0-d
    integer array as `max_iters`, a Python bool `active` for one 0-d neuron."""
    fn = lambda t: 2 * t - 1
    lower, upper = jnp.zeros(3), jnp.ones(3)
    for atol, max_iters in ((jnp.array([1e-12]), jnp.array(200)), (0, np.int64(200))):
        t, converged = _search(
            fn, lower, upper, rtol=jnp.zeros(()), atol=atol, max_iters=max_iters
        )
        assert np.all(np.asarray(converged))
        np.testing.assert_allclose(np.asarray(t), 0.5, rtol=0, atol=1e-12)
    # bfloat16 tolerances (a floating type NumPy does not know), a traced budget.
    lo16, hi16 = jnp.zeros(3, jnp.bfloat16), jnp.ones(3, jnp.bfloat16)
    eps16 = jnp.finfo(jnp.bfloat16).eps
    t, converged = jax.jit(
        lambda m: sj.bisect_crossing(
            fn,
            lo16,
            hi16,
            fn(lo16),
            fn(hi16),
            jnp.ones(3, bool),
            rtol=jnp.bfloat16(0.01),
            atol=eps16 * hi16,
            max_iters=m,
        )
    )(50)
    assert np.all(np.asarray(converged))
    np.testing.assert_allclose(np.asarray(t, np.float64), 0.5, rtol=0, atol=0.01)
    t, converged = sj.bisect_crossing(
        fn,
        jnp.zeros(()),
        jnp.ones(()),
        fn(jnp.zeros(())),
        fn(jnp.ones(())),
        True,  # type: ignore[arg-type]
        rtol=0.0,
        atol=1e-12,
        max_iters=200,
    )
    assert converged.dtype == jnp.bool_ and bool(converged)
    np.testing.assert_allclose(float(t), 0.5, rtol=0, atol=1e-12)


def test_already_converged_bracket_needs_no_iterations():
    fn = lambda t: t - 0.5
    t, converged = _search(
        fn, jnp.array([0.5 - 1e-15]), jnp.array([0.5]), atol=1e-12, max_iters=0
    )
    assert bool(converged[0])
    assert float(t[0]) == 0.5


def test_under_jit_and_vmap():
    def solve(a, lower, upper):
        fn = lambda t: jnp.exp(a * t) - 2.0  # root log(2) / a
        return sj.bisect_crossing(
            fn,
            lower,
            upper,
            fn(lower),
            fn(upper),
            jnp.ones(lower.shape, bool),
            rtol=0.0,
            atol=1e-12,
            max_iters=200,
        )

    a = jnp.array([[1.0, 5.0, 50.0], [2.0, 10.0, 100.0]])  # (batch, lanes)
    lower = jnp.zeros((2, 3))
    upper = jnp.ones((2, 3))
    t_vmap, ok_vmap = jax.jit(jax.vmap(solve))(a, lower, upper)
    np.testing.assert_allclose(t_vmap, np.log(2.0) / np.asarray(a), rtol=0, atol=1e-12)
    assert np.all(np.asarray(ok_vmap))
    for i in range(2):
        t_i, _ = jax.jit(solve)(a[i], lower[i], upper[i])
        np.testing.assert_allclose(t_vmap[i], t_i, rtol=0, atol=1e-12)


def test_float32():
    fn = lambda t: jnp.exp(3.0 * t) - 2.0
    lower = jnp.zeros(2, jnp.float32)
    upper = jnp.array([1.0, 0.5], jnp.float32)
    active = jnp.ones(2, bool)
    t, converged = sj.bisect_crossing(
        fn,
        lower,
        upper,
        fn(lower),
        fn(upper),
        active,
        rtol=0.0,
        atol=0.0,
        max_iters=200,
    )
    assert t.dtype == jnp.float32
    assert np.all(np.asarray(converged))
    assert np.all(np.asarray(fn(t)) >= 0)
    np.testing.assert_allclose(t, np.log(2.0) / 3.0, rtol=4e-7)


def test_search_returns_the_state_at_the_lower_end():
    """`BracketedNewton.search_with_state`: the fourth output is the state that
    `value_slope_state` gave at the final lower end `below` (bit for bit), or
    `state_lower` where the lower end never moved (an inactive lane)."""

    def value_slope_state(t):
        # The LIF case, with a state of two leaves (one with a trailing axis) that
        # differs at every time.
        g, dg = jax.jvp(_lif, (t,), (jnp.ones_like(t),))
        state = {"v": g + 1.0, "w": jnp.stack([jnp.sin(t), t * t], axis=-1)}
        return g, dg, state

    lower = jnp.array([0.0, 0.1, 0.2, 0.0])
    upper = jnp.array([1.0, 0.9, 0.6, 1.0])
    active = jnp.array([True, True, True, False])
    g_lower, _, start = value_slope_state(lower)
    g_upper, _, _ = value_slope_state(upper)
    start = {"v": start["v"] + 7.0, "w": start["w"] - 3.0}  # marked: never computed
    search = jax.jit(
        lambda lo, hi: sj.BracketedNewton(atol=1e-12).search_with_state(
            value_slope_state, lo, hi, g_lower, g_upper, active, 1.0, start
        )
    )
    t, converged, below, state = search(lower, upper)
    assert np.all(np.asarray(converged))
    root = 0.5 * np.log(3.0)
    np.testing.assert_allclose(t[:3], root, rtol=0, atol=1e-12)
    assert np.all(np.asarray(below[:3]) < root) and np.all(np.asarray(below[:3]) > 0.2)
    _, _, expected = value_slope_state(below)
    for key in ("v", "w"):
        np.testing.assert_array_equal(state[key][:3], expected[key][:3])
        np.testing.assert_array_equal(state[key][3], start[key][3])
    # `search` with the same function's value and slope: the same search.
    two = lambda t: value_slope_state(t)[:2]
    t2, converged2, below2 = jax.jit(
        lambda lo, hi: sj.BracketedNewton(atol=1e-12).search(
            None, lo, hi, g_lower, g_upper, active, 1.0, two
        )
    )(lower, upper)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(below2, below)
    np.testing.assert_array_equal(converged2, converged)
