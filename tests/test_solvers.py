"""Solvers on the adaptive path: diffrax's solvers stepped per neuron against SciPy
and the closed form, the dense output's order of accuracy for every solver, and
held inputs of non-uniform length."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj
from snode_jax._solver import make_stepper

from .helpers import assert_padded_times_close
from .lif_reference import lif_reference
from .scipy_reference import adex_rhs, izhikevich_rhs
from .test_models import ADEX, compare, constant_current_layer
from .test_rk import _exact as _exact_v, _problem

# As test_models.TIGHT, with a diffrax solver instead.
SETTINGS = dict(rtol=1e-11, atol=1e-11, dt_min=1e-6, dt_init=0.01, max_steps=20000)


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8()], ids=type
)
def test_diffrax_solvers_on_adex_against_scipy(solver):
    currents = [500.0, 1000.0, 1500.0]
    layer = constant_current_layer(
        sj.AdExDynamics(), currents, solver=solver, **SETTINGS
    )
    assert isinstance(make_stepper(layer.solver), sj._solver.DiffraxStepper)
    sol = compare(layer, adex_rhs(ADEX), [ADEX["E_L"], 0.0], currents, 100.0, 1, "vw")
    assert np.asarray(sol.counts).sum() > 8


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8()], ids=type
)
def test_diffrax_solvers_on_izhikevich_against_scipy(solver):
    a, b, c, d = sj.IZHIKEVICH_PATTERNS["chattering"]
    currents = [4.0, 10.0]
    layer = constant_current_layer(
        sj.IzhikevichDynamics.pattern("chattering"), currents, solver=solver, **SETTINGS
    )
    sol = compare(
        layer, izhikevich_rhs(a, b, c, d), [-65.0, b * -65.0], currents, 100.0, 1, "vu"
    )
    assert np.asarray(sol.counts).sum() > 8


def test_implicit_diffrax_solver_on_adex_against_scipy():
    """Kvaerno5 (implicit, with diffrax's root finder taking the controller's
    tolerances, as in `diffeqsolve`): its dense output is a cubic Hermite, and the
    crossings are polished on its own step."""
    currents = [800.0, 1500.0]
    layer = constant_current_layer(
        sj.AdExDynamics(), currents, solver=diffrax.Kvaerno5(), **SETTINGS
    )
    sol = compare(layer, adex_rhs(ADEX), [ADEX["E_L"], 0.0], currents, 60.0, 1, "vw")
    assert np.asarray(sol.counts).sum() >= 4


@pytest.mark.parametrize(
    "solver", [diffrax.Tsit5(), diffrax.Dopri8(), diffrax.Bosh3()], ids=type
)
def test_lif_on_diffrax_solver_matches_closed_form(solver):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)) * 2.0
    layer = sj.SpikingODELayer(
        6, 5, solver=solver, rtol=1e-12, atol=1e-12, key=jax.random.key(1)
    )
    sol = layer.simulate(x, 1.0, max_spikes=64)
    ref = lif_reference(np.asarray(layer.weight), x, 1.0)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    assert ref.counts.sum() > 20
    # Crossings are polished on the solver's own step: as accurate as the step.
    assert_padded_times_close(sol.spike_times, ref.padded_times(64), 1e-9)
    np.testing.assert_allclose(sol.final_state.v, ref.final_v, rtol=0, atol=1e-9)


def test_unsuitable_diffrax_solvers_are_refused():
    with pytest.raises(ValueError, match="Euler has no error estimate"):
        sj.SpikingODELayer(2, 2, solver=diffrax.Euler(), key=jax.random.key(0))
    # IMEX solvers take two terms; each neuron is one ODE term.
    for solver in (diffrax.Sil3(), diffrax.KenCarp3()):
        with pytest.raises(ValueError, match="needs several terms"):
            sj.SpikingODELayer(2, 2, solver=solver, key=jax.random.key(0))
    # Its state carries over between steps; here every step starts afresh.
    for solver, name in (
        (diffrax.ReversibleHeun(), r"`solver` ReversibleHeun carries its state"),
        (diffrax.HalfSolver(diffrax.ReversibleHeun()), r"HalfSolver\(ReversibleHeun\)"),
    ):
        with pytest.raises(ValueError, match=name):
            sj.SpikingODELayer(
                2, 2, sj.AdExDynamics(), solver=solver, key=jax.random.key(0)
            )
    # (Heun itself, and a HalfSolver of it, are accepted.)
    for solver in (diffrax.Heun(), diffrax.HalfSolver(diffrax.Heun())):
        sj.SpikingODELayer(
            2, 2, sj.AdExDynamics(), solver=solver, key=jax.random.key(0)
        )


# -- dense output ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver, local_order, h0",
    [
        # Quartic through y0, y1, y(h/2), f0, f1: local error O(h^5).
        (sj.Dopri5(), 5, 0.2),
        (sj.Tsit5(), 5, 0.2),
        (diffrax.Dopri5(), 5, 0.2),
        (diffrax.Tsit5(), 5, 0.2),
        # Cubic Hermite: O(h^4).
        (sj.Bosh3(), 4, 0.1),
        (diffrax.Bosh3(), 4, 0.1),
        # (Its root finder's tolerances given here; in a layer they are the step
        # controller's, as in diffeqsolve.)
        (
            diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-13, atol=1e-13)),
            4,
            0.1,
        ),
        # diffrax's Dopri8 interpolant: its docstring says 8th order, but its local
        # error here falls as h^6 (measured 6.12, 6.05, 6.02 over h = 0.8 ... 0.1);
        # the test pins what it delivers, so a change is noticed.
        (diffrax.Dopri8(), 6, 0.8),
    ],
    ids=lambda p: (
        type(p).__module__.split(".")[0] + "." + type(p).__name__
        if not isinstance(p, int | float)
        else str(p)
    ),
)
def test_dense_output_order(solver, local_order, h0):
    """The dense output inside a step (at 0.3 and 0.7 of it) converges at its
    order: halving the step divides its error by 2^local_order. A lower-order
    interpolant (e.g. cubic Hermite in place of the quartic) fails this."""
    dyn, _, y, current = _problem()
    stepper = make_stepper(solver)
    errors = []
    hs = [h0, h0 / 2, h0 / 4]
    for h in hs:
        t0 = jnp.zeros(3)
        t1 = jnp.full(3, h)
        _, _, dense = stepper.step(dyn, t0, t1, y, current)
        err = 0.0
        for fraction in (0.3, 0.7):
            got = stepper.evaluate(dyn, dense, jnp.full(3, fraction * h)).v
            err = np.maximum(
                err, np.abs(np.asarray(got) - _exact_v(dyn, y, current, fraction * h))
            )
        errors.append(err)
    errors = np.array(errors)
    assert np.all(errors > 1e-14)  # well above rounding
    observed = np.log2(errors[:-1] / errors[1:])
    np.testing.assert_allclose(observed, local_order, atol=0.35)


def test_dense_output_of_exact_flow_is_exact():
    dyn, _, y, current = _problem()
    stepper = make_stepper(sj.Exact())
    _, _, dense = stepper.step(dyn, jnp.zeros(3), jnp.full(3, 2.0), y, current)
    got = stepper.evaluate(dyn, dense, jnp.full(3, 0.7)).v
    np.testing.assert_allclose(got, _exact_v(dyn, y, current, 0.7), rtol=1e-14)


# -- non-uniform intervals -------------------------------------------------------------


@pytest.mark.parametrize("solver", [sj.Exact(), sj.Dopri5()], ids=type)
def test_intervals_of_different_lengths(solver):
    """Held inputs over intervals of lengths 2, 0.5, 3, 1.5 ms equal the closed form of
    the same input held over a uniform grid of 0.5 ms intervals."""
    rng = np.random.default_rng(3)
    lengths = np.array([2.0, 0.5, 3.0, 1.5, 1.0, 2.5] * 3)
    x = rng.standard_normal((len(lengths), 4)) * 3.0
    weight = rng.standard_normal((6, 4)) / 2
    dyn = sj.ODELIFDynamics(tau_mem=8.0)
    controller = sj.PredictiveController(rtol=1e-12, atol=1e-12, dtmin=1e-6, dt0=0.1)

    def run(w, ls):
        return sj.integrate(
            dyn,
            solver,
            w,
            jnp.asarray(x),
            ls,
            dyn.init_state(6, jnp.float64),
            stepsize_controller=controller,
            max_spikes=64,
        )

    def loss(w, ls):
        s = run(w, ls)
        t = s.spike_times
        value = jnp.sum(jnp.where(jnp.isfinite(t), jnp.sin(t), 0.0))
        return value + jnp.sum(s.final_state.v), s

    # One compilation for the run, the loss and its gradients w.r.t. the weights and
    # the lengths; one for the finite differences, all evaluated in one batch.
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    batched_loss = jax.jit(jax.vmap(lambda w, ls: loss(w, ls)[0]))

    (_, sol), (g_w, g_len) = value_and_grad(jnp.asarray(weight), jnp.asarray(lengths))
    assert sol.result == sj.RESULTS.successful
    reps = (lengths / 0.5).astype(int)
    fine_x = np.repeat(x, reps, axis=0)
    ref = lif_reference(weight, fine_x, 0.5, tau_mem=8.0)
    ends = np.cumsum(reps) - 1
    per_interval = np.add.reduceat(ref.counts, np.r_[0, ends[:-1] + 1], axis=0)
    np.testing.assert_array_equal(np.asarray(sol.counts), per_interval)
    assert per_interval.sum() > 20
    tol = 1e-11 if isinstance(solver, sj.Exact) else 1e-8
    assert_padded_times_close(sol.spike_times, ref.padded_times(64), tol)
    np.testing.assert_allclose(
        sol.interval_states.v, ref.interval_v[ends], rtol=0, atol=tol
    )
    np.testing.assert_allclose(float(sol.duration), lengths.sum())

    # Gradients of spike times (and final voltages) through the non-uniform schedule
    # w.r.t. a weight, and w.r.t. the lengths themselves: each moves its own
    # interval's end and the start of every later one. (Closed form and adaptive
    # path agree; each is checked against finite differences elsewhere.)
    eps = 1e-6
    ws, ls = [], []
    for k in (None, 0, 5, 17):
        for sign in (1.0, -1.0):
            e_w, e_len = np.zeros_like(weight), np.zeros_like(lengths)
            if k is None:
                e_w[1, 2] = sign * eps
            else:
                e_len[k] = sign * eps
            ws.append(weight + e_w)
            ls.append(lengths + e_len)
    f = np.asarray(batched_loss(jnp.asarray(np.stack(ws)), jnp.asarray(np.stack(ls))))
    fd = (f[0::2] - f[1::2]) / (2 * eps)
    np.testing.assert_allclose(g_w[1, 2], fd[0], rtol=1e-5, atol=1e-8)
    fd_len = fd[1:]
    g_len = np.asarray(g_len)
    np.testing.assert_allclose(g_len[[0, 5, 17]], fd_len, rtol=1e-5, atol=1e-7)
    assert np.all(np.abs(fd_len) > 1e-3)


@pytest.mark.parametrize("solver", [sj.Exact(), sj.Dopri5(), diffrax.Tsit5()], ids=type)
def test_gradient_with_respect_to_the_interval(solver):
    """d/d(interval) of spike times and final voltages, against central finite
    differences, on the closed form and on the adaptive path."""
    rng = np.random.default_rng(8)
    layer = sj.SpikingODELayer(
        3, 4, solver=solver, rtol=1e-11, atol=1e-11, key=jax.random.key(3)
    )
    x = rng.uniform(0.0, 1.0, (3, 3))

    def loss(interval):
        sol = layer.simulate(x, interval, max_spikes=64)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.sum(t) + jnp.sum(sol.final_state.v)

    # One compilation: the finite differences take the values of the same function.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, g = value_and_grad(jnp.asarray(2.0))
    eps = 1e-6
    f = [value_and_grad(jnp.asarray(2.0 + k * eps))[0] for k in (1, -1)]
    fd = (f[0] - f[1]) / (2 * eps)
    assert abs(fd) > 1.0
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_layer_takes_intervals_of_different_lengths():
    lengths = np.array([1.0, 2.5, 0.5, 3.0])
    layer = sj.SpikingODELayer(2, 3, key=jax.random.key(5))
    x = np.random.default_rng(9).uniform(0, 1, (4, 2))
    sol = layer.simulate(x, lengths, max_spikes=64)
    reps = (lengths / 0.5).astype(int)
    ref = lif_reference(np.asarray(layer.weight), np.repeat(x, reps, axis=0), 0.5)
    assert_padded_times_close(sol.spike_times, ref.padded_times(64), 1e-11)
    assert ref.counts.sum() > 3


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Kvaerno5()], ids=type)
def test_diffrax_solver_gradients_and_vmap(solver):
    """A diffrax solver under grad (against finite differences) and vmap (against a
    loop)."""
    currents = jnp.array([[900.0], [1400.0]])
    x = np.ones((2, 1))
    # rtol = atol = 1e-9 (not 1e-11): a perturbation of C by 1e-4 leaves the solver's
    # step sequence unchanged, so its error (smooth in C) cancels in the difference;
    # measured agreement 2e-8 relative, against the 1e-4 asserted. The backward pass
    # of the implicit solver runs ~5x faster than at 1e-11.
    settings = {**SETTINGS, "rtol": 1e-9, "atol": 1e-9}

    def run(C, weight):
        layer = sj.SpikingODELayer(
            1, 2, sj.AdExDynamics(C=C), solver=solver, key=jax.random.key(0), **settings
        )
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        return layer.simulate(x, 15.0, max_spikes=16)

    def loss(C, weight):
        sol = run(C, weight)
        t = sol.spike_times
        return jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0)), sol

    # Two compilations in all: the loss with its gradient (whose solution is the
    # unbatched run), and the batched run, whose lanes also give the finite
    # differences. (Over 15 ms: one spike of the first neuron, three of the second.)
    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss, has_aux=True))
    batched_run = eqx.filter_jit(jax.vmap(run))

    C0, eps = 281.0, 1e-4
    weights = jnp.stack([currents, 1.1 * currents, currents, currents])
    Cs = jnp.array([C0, C0, C0 + eps, C0 - eps])
    batched = batched_run(Cs, weights)
    (_, first), g = value_and_grad(jnp.asarray(C0), currents)
    t = batched.spike_times[2:]
    f = jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0), axis=(1, 2))
    fd = (f[0] - f[1]) / (2 * eps)
    assert abs(fd) > 1e-3
    np.testing.assert_allclose(g, fd, rtol=1e-4)

    # vmap against a loop: the unbatched runs are the gradient's forward passes.
    (_, other), _ = value_and_grad(jnp.asarray(C0), weights[1])
    for b, one in enumerate([first, other]):
        assert np.asarray(one.counts).sum() > 0
        np.testing.assert_array_equal(batched.counts[b], one.counts)
        np.testing.assert_allclose(batched.spike_times[b], one.spike_times, rtol=1e-10)


def test_integrate_checks_its_arguments():
    dyn = sj.ODELIFDynamics(t_ref=2.0)
    args = (jnp.ones((2, 1)), jnp.ones((3, 1)), 1.0, dyn.init_state(2, jnp.float64))
    controller = sj.PredictiveController(rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="closed-form solver only"):
        sj.integrate(dyn, sj.Dopri5(), *args, stepsize_controller=controller)
    with pytest.raises(
        TypeError, match="must be a PredictiveController.*PIDController"
    ):
        sj.integrate(
            dyn,
            sj.Exact(),
            *args,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        )
    bad = (args[0], args[1], jnp.ones(2), args[3])
    with pytest.raises(ValueError, match=r"one length per interval, shape \(3,\)"):
        sj.integrate(dyn, sj.Exact(), *bad, stepsize_controller=controller)
    with pytest.raises(ValueError, match="AdExDynamics does not provide"):
        sj.adaptive_step(
            sj.AdExDynamics(),
            sj.Exact(),
            controller,
            jnp.zeros(1),
            sj.AdExState(jnp.full(1, -70.0), jnp.zeros(1)),
            jnp.ones(1),
            jnp.full(1, 0.1),
        )


# -- the adaptive backward pass checks its rerun --------------------------------------


class _Drifting(sj.AbstractDynamics):
    """A LIF whose drive is read from a Python global when traced: the forward and
    backward passes are traced at different times, so changing it in between makes
    the backward rerun take other decisions than the forward pass (a fault
    injected on purpose)."""

    tau: jax.Array
    parameter_names = ("tau",)

    def init_state(self, n_neurons, dtype):
        return sj.LIFState(jnp.zeros((n_neurons,), dtype))

    def vector_field(self, t, y, current):
        return sj.LIFState(-y.v / self.tau + current * _DRIVE[0])

    def threshold(self, y):
        return y.v - 1.0

    def reset(self, y):
        return sj.LIFState(jnp.zeros_like(y.v))

    def voltage(self, y):
        return y.v

    def constraints(self, y):
        return {"tau > 0": jnp.all(self.tau > 0)}


_DRIVE = [1.0]


@pytest.mark.parametrize("throw", [False, True])
def test_adaptive_backward_rerun_must_reproduce_counts(throw):
    x = np.full((3, 1), 1.0)
    layer = sj.SpikingODELayer(
        1, 2, _Drifting(jnp.asarray(10.0)), key=jax.random.key(0)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[0.3], [0.5]]))
    controller = layer.stepsize_controller

    def loss(weight):
        sol = sj.integrate(
            layer.dynamics,
            layer.solver,
            weight,
            jnp.asarray(x),
            jnp.asarray(5.0),
            layer.init_state(),
            stepsize_controller=controller,
            max_spikes=8,
            throw=throw,
        )
        return jnp.sum(sol.final_state.v)

    _check_drifted_backward(loss, layer.weight, throw, check_undrifted=not throw)


def _check_drifted_backward(loss, primal, throw, check_undrifted=False, drift=3.0):
    """`loss`'s forward pass at drive 1, its backward pass at drive `drift` (3:
    its rerun spikes where the forward pass did not): it raises with `throw`, else
    the gradient is NaN. `check_undrifted`: first, the gradient at drive 1 is
    finite."""
    _DRIVE[0] = 1.0
    try:
        _, vjp = jax.vjp(loss, primal)
        if check_undrifted:  # (`throw` only matters when the rerun differs)
            (g_same,) = vjp(jnp.ones(()))
            assert np.all(np.isfinite(np.asarray(g_same)))
        # The same forward pass (each call of `vjp` traces the backward pass anew).
        _DRIVE[0] = drift  # the rerun now spikes where the forward pass did not
        if throw:
            with pytest.raises(eqx.EquinoxRuntimeError, match="reran an interval"):
                jax.block_until_ready(eqx.filter_jit(vjp)(jnp.ones(())))
        else:
            (g_bad,) = vjp(jnp.ones(()))
            assert np.all(np.isnan(np.asarray(g_bad)))
    finally:
        _DRIVE[0] = 1.0


@pytest.mark.parametrize("throw", [False, True])
def test_replayed_rerun_that_crosses_early_is_caught(throw):
    """A drift too small to change any interval's count (drive 1 -> 1.05): the
    rerun's neurons cross a little before the crossings the forward pass
    recorded. The rerun replays those crossings, so its counts match; a step that
    ends above threshold short of the next recorded crossing is how it shows."""
    x = jnp.full((3, 1), 1.0)
    layer = sj.SpikingODELayer(
        1, 2, _Drifting(jnp.asarray(10.0)), key=jax.random.key(0)
    )

    def run(weight):
        return sj.integrate(
            layer.dynamics,
            layer.solver,
            weight,
            x,
            jnp.asarray(5.0),
            layer.init_state(),
            stepsize_controller=layer.stepsize_controller,
            max_spikes=8,
            throw=throw,
        )

    weight = jnp.array([[0.3], [0.5]])
    counts = []
    try:  # the counts alone would not show it (each run traced at its drive)
        for drive in (1.0, 1.05):
            _DRIVE[0] = drive
            counts.append(np.asarray(jax.jit(run)(weight).counts))
    finally:
        _DRIVE[0] = 1.0
    np.testing.assert_array_equal(counts[0], counts[1])
    assert counts[0].sum() >= 6
    loss = lambda w: jnp.sum(run(w).final_state.v)
    _check_drifted_backward(loss, weight, throw, check_undrifted=True, drift=1.05)


@pytest.mark.parametrize("throw", [False, True])
def test_saved_states_backward_rerun_check_follows_throw(throw):
    """The states at `save_times` come from a second run split at those times; its
    backward pass checks its rerun like any other, raising with `throw=True` (the
    default) rather than returning a NaN gradient. Only the saved states are
    differentiated here, so only that second run's backward pass runs."""
    x = np.full((3, 1), 1.0)
    layer = sj.SpikingODELayer(
        1, 2, _Drifting(jnp.asarray(10.0)), key=jax.random.key(0)
    )

    def loss(weight):
        sol = eqx.tree_at(lambda m: m.weight, layer, weight).simulate(
            x, 5.0, max_spikes=8, save_times=jnp.array([2.0, 7.0, 12.0]), throw=throw
        )
        return jnp.sum(sol.saved_states.v)

    _check_drifted_backward(loss, jnp.array([[0.3], [0.5]]), throw)
