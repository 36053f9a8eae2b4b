"""Exact gradients on the adaptive path: models whose crossings have no closed form
(AdEx, Izhikevich, QIF on Dopri5; CubaLIF on its exact flow with root finding; a
user-defined model).

Checked against central finite differences of the library's forward values at a
tight solver tolerance, with the spike structure verified unchanged by every
perturbation, and on the LIF against the closed-form gradients (test_gradients.py).

Tolerance: the loop is differentiated as the solver computed it, so the gradient
is exact up to discretization errors that shrink with the solver tolerance `TOL`
like the solution's own (measured: at most ~3e4 `TOL` relative, for AdEx followed
into its blow-up: 1e-5 at `TOL` = 1e-10, 3e-8 at 1e-12). The finite differences
carry the forward's errors divided by the step, ~`TOL / h` = 1e-7, and a
five-point truncation error O(h^4), below 1e-10 at this step. A missing or wrong
term (a crossing time not differentiated, a reset or a step length treated as
constant) changes gradients at order one.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import snode_jax as sj

jax.config.update("jax_enable_x64", True)  # also done by conftest.py

# The tests share compiled gradients (`loss_and_grads` below, one per model): under
# pytest-xdist they run on one worker.
pytestmark = pytest.mark.xdist_group(__name__)

TOL = 1e-12  # rtol = atol of the solver
FD_STEP = 1e-5  # relative step of the central differences
RTOL_FD = 1e-6  # 3e4 TOL + TOL / FD_STEP, with a margin: see the docstring
MAX_SPIKES = 32
TIGHT = dict(rtol=TOL, atol=TOL, dt_min=1e-7, dt_init=0.01, max_steps=50000)

# (dynamics, solver, weight (3 neurons x 2 inputs), interval in ms). Four intervals of
# inputs drawn in [0.5, 1.5]; every neuron fires in most intervals.
MODELS = {
    "adex": (
        sj.AdExDynamics(),
        sj.Dopri5(),
        [[700.0, 300.0], [600.0, 500.0], [800.0, 200.0]],
        50.0,
    ),
    # v_peak at 0 mV: steps that overshoot the spike overflow (inf/NaN); their lanes
    # must not poison the gradients of the others. Following the blow-up to 0 mV
    # within the tolerance needs steps far below the default `dt_min`.
    "adex_peak0": (
        sj.AdExDynamics(v_peak=0.0),
        sj.Dopri5(),
        [[700.0, 300.0], [600.0, 500.0], [800.0, 200.0]],
        50.0,
        dict(dt_min=1e-14),
    ),
    "izhikevich": (
        sj.IzhikevichDynamics.pattern("regular_spiking"),
        sj.Dopri5(),
        [[8.0, 4.0], [6.0, 5.0], [9.0, 3.0]],
        25.0,
    ),
    "qif": (
        sj.QIFDynamics(),
        sj.Dopri5(),
        [[0.5, 0.4], [0.8, 0.3], [0.3, 0.6]],
        20.0,
    ),
    "cuba": (
        sj.CubaLIFDynamics(),
        sj.Exact(),
        [[0.12, 0.1], [0.15, 0.13], [0.2, 0.02]],
        20.0,
    ),
}


def make_layer(name):
    dynamics, solver, weight, _, *extra = MODELS[name]
    settings = {**TIGHT, **(extra[0] if extra else {})}
    layer = sj.SpikingODELayer(
        2, 3, dynamics, solver=solver, key=jax.random.key(0), **settings
    )
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight))


def make_inputs(seed=0, n_intervals=4):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.5, 1.5, (n_intervals, 2)))


def outputs(layer, x, interval):
    sol = layer.simulate(x, interval, max_spikes=MAX_SPIKES)
    times = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
    # A step forced at `dt_min` misses the tolerance, and so would its derivative.
    forced = jnp.sum(sol.stats["num_dt_min_steps"])
    out = (times, sol.final_state, sol.interval_states, sol.counts)
    return out, (sol.num_spikes, forced)


def coefficients(layer, x, interval, seed=1, counts=False):
    """Random weights for every spike slot and every state component (and, with
    `counts`, for the spike counts only). Only their shapes are needed: traced, not
    compiled or run."""
    out, _ = eqx.filter_eval_shape(outputs, layer, x, interval)
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    coefs = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), out)
    zero = jax.tree.map(jnp.zeros_like, coefs)
    if counts:
        return (*zero[:3], coefs[3])
    return (*coefs[:3], zero[3])


def weighted(layer, x, interval, coefs):
    out, aux = outputs(layer, x, interval)
    pairs = zip(jax.tree.leaves(coefs), jax.tree.leaves(out))
    return sum(jnp.sum(c * a) for c, a in pairs), aux


def _with(layer, weight, dynamics):
    return eqx.tree_at(lambda m: (m.weight, m.dynamics), layer, (weight, dynamics))


@eqx.filter_jit
def loss_and_grads(layer, x, interval, coefs):
    """The weighted loss and its gradient w.r.t. `(weight, dynamics, x)`: one
    compilation per model, shared by the tests."""

    def loss(diff):
        weight, dynamics, x = diff
        return weighted(_with(layer, weight, dynamics), x, interval, coefs)

    diff = (layer.weight, layer.dynamics, x)
    (value, aux), grads = eqx.filter_value_and_grad(loss, has_aux=True)(diff)
    return value, aux, grads


@eqx.filter_jit
def loss_at(layer, thetas, unravel, interval, coefs):
    """The weighted loss at a batch of flattened `(weight, dynamics, x)`: all the
    points of the finite differences in one compiled, batched run."""

    def one(theta):
        weight, dynamics, x = unravel(theta)
        return weighted(_with(layer, weight, dynamics), x, interval, coefs)

    return jax.vmap(one)(thetas)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_match_finite_differences(name):
    """Every weight, every model parameter and every input, against a five-point
    central difference (error O(h^4)) of relative step `FD_STEP`."""
    layer = make_layer(name)
    interval = MODELS[name][3]
    x = make_inputs()
    coefs = coefficients(layer, x, interval)
    value, (num, forced), grads = loss_and_grads(layer, x, interval, coefs)
    num = np.asarray(num)
    assert num.min() >= 2 and num.max() <= MAX_SPIKES, num
    assert forced == 0
    diff = (layer.weight, layer.dynamics, x)
    theta, unravel = ravel_pytree(eqx.filter(diff, eqx.is_array))
    static = eqx.filter(diff, eqx.is_array, inverse=True)
    grad, _ = ravel_pytree(eqx.filter(grads, eqx.is_array))
    grad = np.asarray(grad)
    assert grad.shape == theta.shape and np.all(np.isfinite(grad))

    def rebuild(th):
        return eqx.combine(unravel(th), static)

    theta = np.asarray(theta)
    h = FD_STEP * np.where(theta != 0, np.abs(theta), 1.0)  # zero: 1 mV or 1 pA
    steps = np.array([-2, -1, 1, 2])
    # Point (i, k): theta with entry i moved by steps[k] * h[i].
    points = theta + np.eye(theta.size)[:, None, :] * (steps[:, None] * h)[None]
    points = np.moveaxis(points, 1, 0).reshape(-1, theta.size)
    values, (num_th, _) = loss_at(layer, jnp.asarray(points), rebuild, interval, coefs)
    # The spike structure must not change, or the difference is not a derivative.
    for n_k in np.asarray(num_th):
        np.testing.assert_array_equal(n_k, num)
    f = np.asarray(values).reshape(4, theta.size)
    fd = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
    scale = np.max(np.abs(fd))
    assert scale > 0
    # Relative, and for entries below 1% of the largest relative to that 1%: the
    # differences' noise is absolute (the forward's error over the step).
    err = np.abs(grad - fd) / np.maximum(np.abs(fd), 1e-2 * scale)
    worst = int(np.argmax(err))
    print(f"{name}: max relative error {err[worst]:.2e} over {theta.size} values")
    assert err[worst] <= RTOL_FD, (worst, grad[worst], fd[worst], err[worst])


@pytest.mark.parametrize(
    "solver, kw",
    [
        (sj.Dopri5(), dict(rtol=1e-12, atol=1e-12, dt_min=1e-7)),
        (sj.ExactFlow(), {}),
        # A budget of 25 steps (about 19 are taken per interval): the backward
        # pass pulls each interval back in segments of 5 iterations, rerunning
        # the earlier ones from their checkpoints. Measured: 3.6e-11.
        (sj.Dopri5(), dict(rtol=1e-10, atol=1e-10, dt_min=1e-7, max_steps=25)),
    ],
    ids=["Dopri5", "Exact-bisect", "Dopri5-segments"],
)
def test_lif_on_adaptive_path_matches_closed_form_gradients(solver, kw):
    """The same LIF layer on the adaptive path (Dopri5 at a tight tolerance, or the
    exact flow with root finding) and on the closed-form event walk: gradients of
    spike times and voltages agree."""
    dyn = sj.ODELIFDynamics(tau_mem=20.0, v_rest=0.1, v_threshold=1.0, v_reset=-0.1)
    x = make_inputs(2, n_intervals=3)
    weight = jnp.asarray([[1.2, 0.6], [0.8, 0.9], [0.5, 1.4]]) / 10

    def grads(solver, **kw):
        layer = sj.SpikingODELayer(
            2, 3, dyn, solver=solver, key=jax.random.key(0), **kw
        )
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        coefs = coefficients(layer, x, 10.0)
        _, (num, _), g = loss_and_grads(layer, x, 10.0, coefs)
        return np.asarray(num), np.asarray(ravel_pytree(g)[0])

    num_exact, g_exact = grads(sj.Exact())
    num_rk, g_rk = grads(solver, **kw)
    np.testing.assert_array_equal(num_rk, num_exact)
    assert num_exact.min() >= 3
    # The Dopri5 solution is within ~1e-12 relative of the closed form, and so is
    # its derivative (the LIF is far better conditioned than an AdEx upswing);
    # measured: 1.9e-13 (Dopri5), 6e-16 (exact flow with root finding).
    err = np.linalg.norm(g_rk - g_exact) / np.linalg.norm(g_exact)
    assert err <= 1e-10, err


def test_per_sample_gradients_under_vmap():
    layer = make_layer("cuba")
    # The shapes of `test_gradients_match_finite_differences[cuba]`: the unbatched
    # gradient reuses its compilation.
    xs = jnp.stack([make_inputs(seed) for seed in range(3)])
    coefs = coefficients(layer, xs[0], 20.0)

    def grads(x):
        return loss_and_grads(layer, x, 20.0, coefs)[2]

    batched = eqx.filter_vmap(grads)(xs)
    for k, x in enumerate(xs):
        expected = jax.tree.leaves(grads(x))
        actual = [a[k] for a in jax.tree.leaves(batched)]
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=0)


def test_count_surrogate_on_adaptive_path():
    """Counts get the surrogate derivative of the threshold function at each
    interval's end: `d count_k = s'(g(y_k)) dg(y_k)`, with `dg(y_k)` the exact
    gradient checked above (AdEx: `g = v - v_peak`, so w.r.t. the weight
    `dg = dv`)."""
    layer = make_layer("adex")
    x = make_inputs(3)
    coefs = coefficients(layer, x, 50.0, seed=4, counts=True)
    _, _, g_counts = loss_and_grads(layer, x, 50.0, coefs)

    (_, _, states, _), _ = outputs(layer, x, 50.0)
    slope = layer.surrogate.derivative(layer.dynamics.threshold(states))
    zero = jax.tree.map(jnp.zeros_like, coefs)
    as_voltages = sj.AdExState(coefs[3] * slope, jnp.zeros_like(slope))
    _, _, g_margin = loss_and_grads(layer, x, 50.0, (*zero[:2], as_voltages, zero[3]))
    assert np.linalg.norm(g_margin[0]) > 0
    np.testing.assert_allclose(g_counts[0], g_margin[0], rtol=1e-12, atol=0)


def test_forward_mode_is_not_available():
    layer = make_layer("qif")
    x = make_inputs(n_intervals=1)

    def final_v(weight):
        lyr = eqx.tree_at(lambda m: m.weight, layer, weight)
        return lyr.simulate(x, 5.0, max_spikes=4).final_state.v

    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(final_v, (layer.weight,), (jnp.ones_like(layer.weight),))


# -- runs without a spike buffer ---------------------------------------------------
# `forward` and `step` record no spike times (`max_spikes=None`): the run's
# `spike_times` is then an empty `(n, 0)` array, and its cotangent must not reach
# the rerun of the backward pass, which records none. The tests above all go
# through `simulate`, which always has a buffer.

# The code path (RerunAdjoint's backward pass) is the same for every adaptive
# model: one model per test keeps their compilations out of the suite's time.


def stepped(layer, x, interval):
    """The state after every interval and the spike counts, by chaining `step`
    from rest (so the gradient also flows through each step's start state)."""

    def one(state, xk):
        state, c = layer.step(state, xk, interval)
        return state, (state, c)

    _, (states, counts) = jax.lax.scan(one, layer.init_state(), x)
    return states, counts


def stepped_loss(layer, x, interval, coefs):
    states, counts = stepped(layer, x, interval)
    pairs = zip(jax.tree.leaves(coefs), jax.tree.leaves(states))
    return sum(jnp.sum(c * a) for c, a in pairs), jnp.sum(counts, axis=0)


@eqx.filter_jit
def stepped_value_and_grad(layer, x, interval, coefs):
    def loss(diff):
        weight, dynamics, x = diff
        return stepped_loss(_with(layer, weight, dynamics), x, interval, coefs)

    diff = (layer.weight, layer.dynamics, x)
    return eqx.filter_value_and_grad(loss, has_aux=True)(diff)


@pytest.mark.parametrize("name", ["qif"])
def test_step_gradients_without_spike_buffer_match_finite_differences(name):
    """A loss on the states after each interval, run by `step` (no spike buffer),
    against a five-point central difference along a random direction scaled to each
    value (a relative step `FD_STEP` of every weight, parameter and input). Same
    numerics as `test_gradients_match_finite_differences`, so the same tolerance,
    relative to the sum of the magnitudes of the directional derivative's terms."""
    layer = make_layer(name)
    interval = MODELS[name][3]
    x = make_inputs()
    # One compilation, the value and gradient's: the states' shapes are traced, not
    # run, and the points of the differences reuse it (their gradients unused).
    states, _ = eqx.filter_eval_shape(stepped, layer, x, interval)
    keys = iter(jax.random.split(jax.random.key(5), 8))
    coefs = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), states)

    (value, num), grads = stepped_value_and_grad(layer, x, interval, coefs)
    assert np.asarray(num).min() >= 2  # the resets are in it
    diff = (layer.weight, layer.dynamics, x)
    theta, unravel = ravel_pytree(eqx.filter(diff, eqx.is_array))
    static = eqx.filter(diff, eqx.is_array, inverse=True)
    grad = np.asarray(ravel_pytree(eqx.filter(grads, eqx.is_array))[0])
    assert grad.shape == theta.shape and np.all(np.isfinite(grad))

    u = np.random.default_rng(6).standard_normal(theta.size)
    direction = u * np.where(theta != 0, np.abs(np.asarray(theta)), 1.0)

    def at(s):
        weight, dynamics, x_s = eqx.combine(unravel(theta + s * direction), static)
        (val, num_th), _ = stepped_value_and_grad(
            _with(layer, weight, dynamics), x_s, interval, coefs
        )
        np.testing.assert_array_equal(num_th, num)  # spike structure unchanged
        return float(val)

    h = FD_STEP
    f = [at(k * h) for k in (-2, -1, 1, 2)]
    fd = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
    terms = grad * direction
    scale = np.sum(np.abs(terms))
    assert scale > 0
    err = abs(np.sum(terms) - fd) / scale
    print(f"{name}: relative error {err:.2e}")
    assert err <= RTOL_FD, (np.sum(terms), fd, err)


@eqx.filter_jit
def forward_count_grads(layer, x, interval, coefs):
    def loss(diff):
        weight, dynamics, x = diff
        return jnp.sum(coefs * _with(layer, weight, dynamics).forward(x, interval))

    return eqx.filter_grad(loss)((layer.weight, layer.dynamics, x))


@pytest.mark.parametrize("name", ["qif"])
def test_forward_count_gradients_equal_those_with_spike_buffer(name):
    """The surrogate gradient of the counts from `forward` (no spike buffer) is
    that of the same counts from `simulate(max_spikes=...)`, whose spike-time
    cotangents are zero here: the same rerun, only without a buffer."""
    layer = make_layer(name)
    interval = MODELS[name][3]
    x = make_inputs(7)
    coefs = coefficients(layer, x, interval, seed=8, counts=True)
    g_forward = forward_count_grads(layer, x, interval, coefs[3])
    _, (num, _), g_simulate = loss_and_grads(layer, x, interval, coefs)
    assert np.asarray(num).min() >= 1
    flat_forward = np.asarray(ravel_pytree(eqx.filter(g_forward, eqx.is_array))[0])
    flat_simulate = np.asarray(ravel_pytree(eqx.filter(g_simulate, eqx.is_array))[0])
    assert np.all(np.isfinite(flat_forward))
    assert np.linalg.norm(flat_forward) > 0
    np.testing.assert_allclose(flat_forward, flat_simulate, rtol=1e-12, atol=0)


# -- crossings replayed from the forward run ----------------------------------------
# With spike times recorded, the forward pass keeps what the crossing search found
# at each spike and the backward pass's rerun takes its crossings from there
# (`RerunAdjoint(replay_crossings=True)`, the default) instead of searching again.
# The search is deterministic, so both must give the same gradient to the bit.


def integrate_loss(layer, x, interval, adjoint, max_spikes, throw=True):
    """A spike-time and state loss of `layer` run by `sj.integrate` with `adjoint`,
    and the spike counts (`throw=False`: a forward run that failed returns)."""
    sol = sj.integrate(
        layer.dynamics,
        layer.solver,
        layer.weight,
        x,
        interval,
        layer.init_state(),
        stepsize_controller=layer.stepsize_controller,
        root_finder=layer.root_finder,
        max_steps=layer.max_steps,
        max_spikes=max_spikes,
        surrogate=layer.surrogate,
        adjoint=adjoint,
        throw=throw,
    )
    times = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
    state = sum(jnp.sum(a**2) for a in jax.tree.leaves(sol.final_state))
    value = jnp.sum(jnp.exp(-times / 50.0)) + 1e-3 * state + jnp.sum(sol.counts)
    return value, sol.num_spikes


@eqx.filter_jit
def integrate_grads(layer, xs, interval, adjoint, max_spikes, throw=True):
    """Per sample of `xs`, the value and the gradient w.r.t. `(weight, dynamics)`
    of `integrate_loss`, and the counts."""

    def one(x):
        def loss(diff):
            weight, dynamics = diff
            lyr = _with(layer, weight, dynamics)
            return integrate_loss(lyr, x, interval, adjoint, max_spikes, throw)

        return eqx.filter_value_and_grad(loss, has_aux=True)(
            (layer.weight, layer.dynamics)
        )

    return jax.vmap(one)(xs)


@pytest.mark.parametrize("name", ["adex_peak0", "cuba"])
def test_replayed_crossings_give_the_searched_gradients(name):
    """AdEx followed into its blow-up (the crossing's state is evaluated below it)
    and CubaLIF on its exact flow: the gradients with replayed crossings equal those
    of a rerun that searches again, sample by sample under `vmap`. The two are
    compiled as different programs, whose roundings may differ (measured: the
    losses 1.4e-15 apart, relative); a crossing replayed from the wrong slot, or
    not at all, moves the gradient at order one."""
    layer = make_layer(name)
    interval = MODELS[name][3]
    xs = jnp.stack([make_inputs(seed) for seed in (0, 9)])
    replayed = sj.RerunAdjoint()
    searched = sj.RerunAdjoint(replay_crossings=False)
    (v_r, num_r), g_r = integrate_grads(layer, xs, interval, replayed, MAX_SPIKES)
    (v_s, num_s), g_s = integrate_grads(layer, xs, interval, searched, MAX_SPIKES)
    assert np.asarray(num_r).min() >= 2  # crossings in every neuron to replay
    np.testing.assert_array_equal(num_r, num_s)
    np.testing.assert_allclose(v_r, v_s, rtol=1e-13, atol=0)
    flat_r = np.asarray(ravel_pytree(eqx.filter(g_r, eqx.is_array))[0])
    flat_s = np.asarray(ravel_pytree(eqx.filter(g_s, eqx.is_array))[0])
    assert np.all(np.isfinite(flat_r)) and np.linalg.norm(flat_r) > 0
    err = np.abs(flat_r - flat_s) / np.max(np.abs(flat_s))
    print(f"{name}: largest difference {np.max(err):.1e} of the largest entry")
    assert np.max(err) <= 1e-12


def test_replay_needs_every_crossing_recorded():
    """A neuron that fired more than `max_spikes` times has crossings the forward
    run did not keep: the replaying gradient is NaN, and with `throw=True` the
    backward pass says why; searching again, it is finite."""
    layer = make_layer("qif")
    interval = MODELS["qif"][3]
    xs = make_inputs()[None]
    full = integrate_grads(layer, xs, interval, sj.RerunAdjoint(), MAX_SPIKES)
    most = int(np.max(full[0][1]))
    assert most >= 2
    cap = most - 1  # the busiest neuron's last spike is not recorded

    def grads(adjoint):
        # (The forward run's full buffer is not raised: the backward pass's is.)
        _, g = integrate_grads(layer, xs, interval, adjoint, cap, throw=False)
        return np.asarray(ravel_pytree(eqx.filter(g, eqx.is_array))[0])

    assert np.all(np.isnan(grads(sj.RerunAdjoint(throw=False))))
    assert np.all(np.isfinite(grads(sj.RerunAdjoint(replay_crossings=False))))
    with pytest.raises(Exception, match="fired more than `max_spikes` times"):
        jax.block_until_ready(grads(sj.RerunAdjoint()))


def test_replay_takes_a_step_a_rounding_short_of_a_recorded_crossing():
    """The rerun's rule for a step that ends above threshold: within `64 eps` of
    the next recorded crossing's time before it (the two programs round the step's
    end differently; a blow-up rises past the margin in a few ulps: AdEx with
    `v_peak=0` did so 3-10 ulps short, in a rerun of its first interval) it is that
    crossing; farther before it, blown up (NaN) however close, or with every
    recorded crossing taken, it has left the forward run (`ok` False); ending below
    threshold after the crossing's time, it is the crossing."""
    from snode_jax._crossing import Crossings
    from snode_jax._rerun_adjoint import _replay

    t_star = 11.305989948839567
    ulp = np.spacing(t_star)
    eps = np.finfo(np.float64).eps
    lanes = 6
    record = Crossings(
        t_star=jnp.asarray([[3.0, t_star]] * lanes),
        y_star=jnp.zeros((lanes, 2)),
        s_eval=jnp.asarray([[3.0, t_star]] * lanes),
        ok=jnp.ones((lanes, 2), bool),
    )
    # Each lane has taken one of its two recorded crossings (slot 1 is next).
    replay = _replay(record, jnp.zeros(lanes, jnp.int32), jnp.full(lanes, 2))
    short = t_star - 8 * ulp
    t1 = jnp.asarray([short, t_star * (1 - 256 * eps), t_star + ulp, short, 9.0, short])
    so_far = jnp.asarray([1, 1, 1, 2, 1, 1])
    g0 = jnp.full(lanes, -1e-2)
    g1 = jnp.asarray([1e-3, 1e-3, -1e-6, 1e-3, -5.0, jnp.nan])
    crossed, found = replay(jnp.ones(lanes, bool), t1, so_far, g0, g1)
    np.testing.assert_array_equal(crossed, [True, True, True, True, False, True])
    ok = np.asarray(found.ok)[[0, 1, 2, 3, 5]]
    np.testing.assert_array_equal(ok, [True, False, True, False, False])
    np.testing.assert_array_equal(np.asarray(found.t_star)[[0, 2]], [t_star] * 2)


def test_replayed_gradient_is_finite_or_raises_in_float32():
    """AdEx with `v_peak=0` in float32 blows up within a step's rounding of its
    crossings: where the rerun replays a crossing its step did not really reach,
    the derivative comes out NaN. The backward pass says so (as a rerun mismatch)
    instead of returning it; searching again, the gradient is finite."""
    dynamics, solver, weight, interval, _ = MODELS["adex_peak0"]
    layer = sj.SpikingODELayer(
        2,
        3,
        dynamics,
        solver=solver,
        key=jax.random.key(0),
        dtype=jnp.float32,
        rtol=1e-5,
        atol=1e-5,
        dt_min=1e-3,
        dt_init=0.01,
        max_steps=50000,
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, jnp.float32))
    xs = make_inputs(0)[None].astype(jnp.float32)

    def grads(adjoint):
        _, g = integrate_grads(layer, xs, interval, adjoint, MAX_SPIKES)
        return np.asarray(ravel_pytree(eqx.filter(g, eqx.is_array))[0])

    # (Its steps forced at `dt_min` make the gradient approximate: refused by
    # default, allowed here, where the replay is tested.)
    allow = dict(allow_forced_steps=True)
    searched = grads(sj.RerunAdjoint(replay_crossings=False, **allow))
    assert np.all(np.isfinite(searched))
    try:
        replayed = grads(sj.RerunAdjoint(**allow))
    except Exception as e:  # the reported mismatch
        assert "reran an interval and got other spike counts" in str(e)
    else:
        assert np.all(np.isfinite(replayed))


def _first_spike_time(solver, w):
    """The first spike time of one LIF neuron (tau 20 ms, threshold 1, C 1) driven
    by a held input of weight `0.08 w`: `-20 ln(1 - 1 / (1.6 w))` ms."""
    dyn = sj.ODELIFDynamics(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0)
    sol = sj.integrate(
        dyn,
        solver,
        w * jnp.full((1, 1), 0.08),
        jnp.ones((1, 1)),
        30.0,
        dyn.init_state(1, jnp.float64),
        stepsize_controller=sj.PredictiveController(rtol=1e-12, atol=1e-12),
        max_spikes=4,
    )
    return sol.spike_times[0, 0]


def _event_spike_time_sum(w, recurrent):
    """The spike times' sum of three CubaLIF neurons driven by two input spikes
    (weight `w` each), with or without (weak) recurrent connections."""
    delay = 0.5 if recurrent else 0.0
    layer = sj.SpikingODELayer(
        2, 3, sj.CubaLIFDynamics(), recurrent=recurrent, delay=delay,
        key=jax.random.key(0),
    )  # fmt: skip
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.full((3, 2), w))
    if recurrent:
        rec = jnp.full((3, 3), 0.05)
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, rec)
    train = sj.SpikeTrain(jnp.array([1.0, 3.0]), jnp.array([0, 1]))
    sol = layer.simulate(train, t_end=30.0, max_spikes=64)
    return jnp.sum(jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0))


def test_a_gradient_that_is_first_order_only_is_not_differentiated_again():
    """The adaptive path's and the event engines' backward passes hold the forward
    run's decisions fixed and have no derivative of their own: `jax.jvp` of their
    gradient returned a wrong number without a word (one LIF neuron on Dopri5:
    33.33 where the second derivative of its first spike time is 122.22; the
    event engine: 0.0 where differences of its gradient give 1.67). Now
    `jax.hessian`, `jax.jvp` and `jax.grad` of such a gradient raise. The
    closed-form path's derivatives have derivatives: its Hessian is the closed
    form's."""
    exact = lambda w: -20.0 * jnp.log(1 - 1 / (1.6 * w))
    second = jax.grad(jax.grad(exact))(1.0)
    assert abs(float(second) - 122.2222) < 1e-3
    f = lambda w: _first_spike_time(sj.Exact(), w)
    np.testing.assert_allclose(jax.hessian(f)(1.0), second, rtol=1e-10)
    np.testing.assert_allclose(
        jax.jvp(jax.grad(f), (1.0,), (1.0,))[1], second, rtol=1e-10
    )
    runs = [
        lambda w: _first_spike_time(sj.Dopri5(), w),
        lambda w: _event_spike_time_sum(w, recurrent=False),
        lambda w: _event_spike_time_sum(w, recurrent=True),
    ]
    for run in runs:
        again = [
            lambda: jax.jvp(jax.grad(run), (1.5,), (1.0,)),
            lambda: jax.hessian(run)(1.5),
            lambda: jax.grad(jax.grad(run))(1.5),
        ]
        for call in again:
            with pytest.raises(TypeError, match="first-order reverse mode.*finite"):
                call()
    # The first derivative itself is unchanged (the Dopri5 run's against the
    # closed form's).
    got = jax.grad(runs[0])(1.0)
    np.testing.assert_allclose(got, jax.grad(exact)(1.0), rtol=1e-9)

    # A derivative of the gradient with respect to a parameter of the loss alone
    # (not of the run) is right: the backward pass is linear in its cotangent.
    # d/dlam of d/dw (t(w) - lam)^2 = -2 t'(w).
    def grad_of_loss(lam, run):
        return jax.grad(lambda w: (run(w) - lam) ** 2)(1.0)

    got = jax.jvp(lambda lam: grad_of_loss(lam, runs[0]), (3.0,), (1.0,))[1]
    np.testing.assert_allclose(got, -2 * jax.grad(exact)(1.0), rtol=1e-9)
    # On the event engines, against differences of their own gradient (linear
    # in lam: the difference is exact up to rounding).
    for run in runs[1:]:
        event = lambda lam: jax.grad(lambda w: (run(w) - lam) ** 2)(1.5)
        got = jax.jvp(event, (3.0,), (1.0,))[1]
        np.testing.assert_allclose(got, (event(4.0) - event(2.0)) / 2, rtol=1e-9)

    # A gradient used but not differentiated (first-order MAML), taken at
    # `stop_gradient` of its argument, as the message says.
    def adapted(w, run):
        inner = jax.grad(run)(jax.lax.stop_gradient(w))
        return run(w - 1e-3 * inner)

    for run in runs[:2]:
        got = jax.grad(adapted)(1.5, run)
        w1 = 1.5 - 1e-3 * jax.grad(run)(1.5)
        np.testing.assert_allclose(got, jax.grad(run)(w1), rtol=1e-9)


def test_a_gradient_through_steps_forced_at_dt_min_is_refused():
    """AdEx with `v_peak = 0` blows up through its last 40 mV within a microsecond:
    at the default `dt_min` its steps there are forced (accepted with their error
    above the tolerance), and their derivative made a spike time's 1600x too
    small while the spike time was right to microseconds. Such a gradient is NaN
    and the backward pass says why; with `dt_min` low enough that no step is
    forced, it matches central differences of the forward run."""
    x = jnp.ones((1, 1))

    def spike_and_grad(dt_min):
        layer = sj.SpikingODELayer(
            1,
            1,
            sj.AdExDynamics(v_peak=0.0),
            dt_min=dt_min,
            rtol=1e-10,
            atol=1e-10,
            dtype=jnp.float64,
            key=jax.random.key(0),
        )
        layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray([[1800.0]]))

        def first(m):
            sol = m.simulate(x, 10.0, max_spikes=4)
            return sol.spike_times[0, 0], sol.stats["num_dt_min_steps"][0]

        grad = eqx.filter_jit(eqx.filter_value_and_grad(first, has_aux=True))
        at = lambda w: grad(eqx.tree_at(lambda m: m.weight, layer, jnp.asarray([[w]])))
        return at

    with pytest.raises(Exception, match="steps forced at `dt_min`"):
        jax.block_until_ready(spike_and_grad(1e-3)(1800.0))
    at = spike_and_grad(1e-12)
    (_, forced), grad = at(1800.0)
    assert int(forced) == 0
    h = 1e-3  # (pA, of 1800: the spike time is smooth in the weight)
    fd = float((at(1800.0 + h)[0][0] - at(1800.0 - h)[0][0]) / (2 * h))
    # Each time within ~rtol x 5 ms = 5e-10 ms: over 2h = 2e-3 pA the difference is
    # within ~2.5e-7 ms/pA, 7e-5 of the derivative (3.5e-3).
    np.testing.assert_allclose(float(grad.weight[0, 0]), fd, rtol=1e-4)
