"""The embedded Runge-Kutta path (adaptive steps + located crossings) on the LIF,
against the closed-form reference; and `adaptive_step` on its own."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .helpers import (
    LIFConfig,
    assert_padded_times_close,
    cap_spikes,
    random_lif_config,
)

MAX_SPIKES = 256


def _configs() -> list[LIFConfig]:
    rng = np.random.default_rng(77)
    configs = []
    for i, drive in enumerate([1.0, 5.0, 50.0, 600.0]):
        cfg = random_lif_config(
            rng,
            f"rk-{i}-drive{drive:g}",
            n_inputs=6,
            n_neurons=8,
            n_intervals=4,
            drive=drive,
            per_neuron=True,
            interval=float(rng.choice([0.5, 1.0, 2.0])),
        )
        configs.append(cap_spikes(cfg, 200))
    return configs


CONFIGS = _configs()


@functools.cache
def _reference(cfg):
    return cfg.reference()


def test_configurations_include_spiking_and_silent_neurons():
    totals = np.concatenate([_reference(c).counts.sum(axis=0) for c in CONFIGS])
    assert (totals == 0).any()
    assert totals.max() >= 50


def _check_stats(sol, cfg, dt_min):
    counts = np.asarray(sol.counts).sum(axis=0)
    stats = {k: np.asarray(v) for k, v in sol.stats.items()}
    print(cfg.name, {k: v.tolist() for k, v in stats.items()})
    np.testing.assert_array_equal(stats["num_crossings"], counts)
    # Every interval ends with an accepted step and every crossing cuts one short.
    assert np.all(stats["num_steps"] >= counts + cfg.n_intervals)
    # Far fewer steps than a fixed grid at dt_min would take.
    fixed = cfg.n_intervals * cfg.interval / dt_min
    assert np.all(stats["num_steps"] < fixed / 10)
    assert np.all(stats["num_rejected_steps"] >= 0)
    assert np.all(stats["num_rejected_steps"] < stats["num_steps"])
    np.testing.assert_array_equal(stats["num_dt_min_steps"], 0)
    steps_per_second = np.asarray(sol.steps_per_second)
    np.testing.assert_allclose(
        steps_per_second,
        stats["num_steps"] * 1000.0 / (cfg.n_intervals * cfg.interval),
    )


@pytest.mark.parametrize("solver", [sj.Dopri5(), sj.Tsit5()], ids=["dopri5", "tsit5"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_tight_tolerance_matches_reference(cfg, solver):
    layer = cfg.layer(per_neuron=True, solver=solver, rtol=1e-12, atol=1e-12)
    ref = _reference(cfg)
    x = cfg.inputs()
    sol = layer.simulate(x, cfg.interval, max_spikes=MAX_SPIKES)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    time_tol = 1e-9
    assert_padded_times_close(sol.spike_times, ref.padded_times(MAX_SPIKES), time_tol)
    # A spike time off by dt moves the voltage after it (v = v_inf - (v_inf -
    # v_reset) exp(-(t - t_spike) / tau_mem)) by (v_inf - v) / tau_mem * dt: the
    # voltages are checked to the spike times' tolerance times that slope.
    p = cfg.params_as(per_neuron=True)
    v_inf = p["v_rest"] + (x @ cfg.weight().T) * p["tau_mem"] / p["C_mem"]  # (T, n)
    slope = np.abs(v_inf - ref.interval_v) / p["tau_mem"]
    np.testing.assert_array_less(
        np.abs(np.asarray(sol.interval_states.v) - ref.interval_v),
        time_tol * (1 + slope),
    )
    np.testing.assert_array_less(
        np.abs(np.asarray(sol.final_state.v) - ref.final_v), time_tol * (1 + slope[-1])
    )
    _check_stats(sol, cfg, layer.dt_min)


class _OffDenseOutput(sj.Dopri5):
    """Dopri5 whose dense output is off by up to 1e-4 mV inside each step (exact at
    both ends): a stand-in for a less accurate interpolant."""

    def evaluate(self, dynamics, dense, s):
        y = super().evaluate(dynamics, dense, s)
        t0, t1, _ = dense
        span = t1 - t0
        frac = jnp.clip((s - t0) / jnp.where(span > 0, span, 1), 0, 1)
        return eqx.tree_at(lambda y: y.v, y, y.v + 4e-4 * frac * (1 - frac))


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=lambda c: c.name)
def test_crossings_as_accurate_as_the_steps_whatever_the_dense_output(cfg):
    """A crossing is found on the step's dense output and polished by Newton steps
    on the solver's own solution until the (quadratic) error left is below the
    search tolerance: its accuracy is that of the steps, not of the dense output.
    Tolerance: on these configurations Dopri5 at rtol = atol = 1e-12 is within
    2.3e-13 ms of the closed form (measured); a single Newton step from a root that
    is 1e-4 mV off (~1e-4 ms) leaves errors of 1e-10 to 5e-10 ms here."""
    layer = cfg.layer(per_neuron=True, solver=_OffDenseOutput(), rtol=1e-12, atol=1e-12)
    ref = _reference(cfg)
    sol = layer.simulate(cfg.inputs(), cfg.interval, max_spikes=MAX_SPIKES)
    assert sol.result == sj.RESULTS.successful
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    assert_padded_times_close(sol.spike_times, ref.padded_times(MAX_SPIKES), 1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_bosh3_loose_tolerance_matches_reference(cfg):
    tol = 1e-8
    layer = cfg.layer(per_neuron=True, solver=sj.Bosh3(), rtol=tol, atol=tol)
    ref = _reference(cfg)
    x = cfg.inputs()
    sol = layer.simulate(x, cfg.interval, max_spikes=MAX_SPIKES)
    _check_stats(sol, cfg, layer.dt_min)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    # Error model. Each accepted step keeps its error estimate below
    # atol + rtol |v| <= tol (1 + V), V bounding |v|: v stays below threshold, above
    # min(v_reset, v_rest, v_inf) (v_inf counts only where it is below threshold).
    # Bosh3 propagates its third-order solution, whose local error is smaller than
    # that (second-order) estimate, and the LIF flow contracts errors, so the voltage
    # error of neuron i is at most num_steps[i] * tol * (1 + V). A crossing found on
    # a solution that is off by dv is off in time by dv / (dv/dt), with
    # dv/dt = (v_inf - v_threshold) / tau_mem at the threshold.
    p = cfg.params_as(per_neuron=True)
    v_inf = p["v_rest"] + (x @ cfg.weight().T) * p["tau_mem"] / p["C_mem"]  # (T, n)
    below = np.where(v_inf < p["v_threshold"], v_inf, 0.0)
    V = np.max(
        np.abs(np.stack([*below, p["v_rest"], p["v_reset"], p["v_threshold"]])),
        axis=0,
    )
    v_tol = np.asarray(sol.stats["num_steps"]) * tol * (1 + V)
    assert np.all(np.abs(sol.final_state.v - ref.final_v) <= v_tol)
    assert np.all(np.abs(sol.interval_states.v - ref.interval_v) <= v_tol)
    time_tol = np.zeros((cfg.n_neurons, MAX_SPIKES))
    for i, ts in enumerate(ref.spike_times):
        k = np.clip(np.ceil(ts / cfg.interval).astype(int) - 1, 0, cfg.n_intervals - 1)
        slope = (v_inf[k, i] - p["v_threshold"][i]) / p["tau_mem"][i]
        time_tol[i, : len(ts)] = v_tol[i] / slope
    assert_padded_times_close(sol.spike_times, ref.padded_times(MAX_SPIKES), time_tol)
    # And the check is meaningful: much looser than Dopri5's, far tighter than the
    # spike spacing.
    assert time_tol.max() < 1e-4


# -- adaptive_step ------------------------------------------------------------------


def _problem():
    dyn = sj.ODELIFDynamics(
        tau_mem=jnp.array([1.0, 2.0, 5.0]), v_rest=jnp.array([0.0, -0.5, 0.2])
    )
    t = jnp.zeros(3)
    y = sj.LIFState(jnp.array([0.0, 0.5, -0.3]))
    current = jnp.array([3.0, 0.2, 1.0])
    return dyn, t, y, current


def _controller(*, rtol, atol, dt_min, dt_max=np.inf, **kwargs):
    return sj.PredictiveController(
        rtol=rtol, atol=atol, dtmin=dt_min, dtmax=dt_max, dt0=dt_min, **kwargs
    )


def _propose(solver, h, **settings):
    dyn, t, y, current = _problem()
    h = jnp.broadcast_to(jnp.asarray(h, jnp.float64), t.shape)
    return sj.adaptive_step(dyn, solver, _controller(**settings), t, y, current, h)


def _exact(dyn, y, current, h):
    tau = np.asarray(dyn.tau_mem)
    v_inf = np.asarray(dyn.v_rest) + np.asarray(current) * tau / np.asarray(dyn.C_mem)
    return v_inf + (np.asarray(y.v) - v_inf) * np.exp(-h / tau)


@pytest.mark.parametrize(
    "solver, order, h0",
    # Tsit5's estimate is smaller: larger steps keep it well above rounding.
    [(sj.Dopri5(), 5, 0.1), (sj.Tsit5(), 5, 0.2), (sj.Bosh3(), 3, 0.1)],
    ids=["dopri5", "tsit5", "bosh3"],
)
def test_adaptive_step_error_estimate_has_expected_order(solver, order, h0):
    dyn, _, y, current = _problem()
    hs = [h0, h0 / 2, h0 / 4]
    errors = []
    for h in hs:
        prop = _propose(solver, h, rtol=1e-300, atol=1.0, dt_min=1e-9)
        assert np.all(np.isfinite(np.asarray(prop.h_next)))  # a controlled step
        errors.append(np.asarray(prop.error_norm))  # atol = 1: the raw error
        # The propagated solution is accurate to the order of the pair.
        true_error = np.abs(np.asarray(prop.y1.v) - _exact(dyn, y, current, h))
        assert np.all(true_error <= 10 * errors[-1] + 1e-15)
    errors = np.array(errors)
    assert np.all(errors > 1e-14)  # well above rounding
    # Halving h divides the local error estimate by ~2^order.
    observed = np.log2(errors[:-1] / errors[1:])
    np.testing.assert_allclose(observed, order, atol=0.2)


def test_adaptive_step_exact_solver():
    dyn, _, y, current = _problem()
    h = jnp.array([0.3, 1.0, 7.0])
    prop = _propose(sj.Exact(), h, rtol=1e-6, atol=1e-8, dt_min=1e-3)
    np.testing.assert_array_equal(np.asarray(prop.error_norm), 0.0)
    np.testing.assert_array_equal(np.asarray(prop.h_next), np.inf)
    assert np.all(np.asarray(prop.accept))
    assert not np.any(np.asarray(prop.at_dt_min))
    np.testing.assert_allclose(
        prop.y1.v, _exact(dyn, y, current, np.asarray(h)), rtol=0, atol=1e-14
    )


def test_adaptive_step_rejects_too_large_step():
    prop = _propose(sj.Dopri5(), 5.0, rtol=1e-12, atol=1e-12, dt_min=1e-3)
    assert np.all(np.asarray(prop.error_norm) > 1)
    assert not np.any(np.asarray(prop.accept))
    assert not np.any(np.asarray(prop.at_dt_min))
    h_next = np.asarray(prop.h_next)
    # The controller shrinks the step, by at most a factor 5.
    assert np.all(h_next < 5.0) and np.all(h_next >= 1.0 - 1e-12)


def test_adaptive_step_accepts_at_dt_min_whatever_the_error():
    prop = _propose(sj.Dopri5(), 0.5, rtol=1e-14, atol=1e-14, dt_min=0.5)
    assert np.all(np.asarray(prop.error_norm) > 1)
    assert np.all(np.asarray(prop.accept))
    assert np.all(np.asarray(prop.at_dt_min))
    np.testing.assert_array_equal(np.asarray(prop.h_next), 0.5)  # clipped to dt_min


@pytest.mark.parametrize("solver", [sj.Exact(), sj.Dopri5()], ids=["exact", "dopri5"])
def test_adaptive_step_refuses_a_step_that_is_not_positive(solver):
    """A negative, zero or NaN step: refused by name where `h` is concrete; under
    `jit`, that neuron's step is not accepted (a backward step and a NaN state were
    returned as accepted)."""
    with pytest.raises(ValueError, match=r"`h` \(the step, ms\) must be finite and "):
        _propose(solver, [-1.0, 0.1, 0.1], rtol=1e-6, atol=1e-6, dt_min=1e-3)
    with pytest.raises(ValueError, match=r"got \[0.1, nan, 0.1\] \(1 of 3 not\)"):
        _propose(solver, [0.1, np.nan, 0.1], rtol=1e-6, atol=1e-6, dt_min=1e-3)
    prop = jax.jit(lambda h: _propose(solver, h, rtol=1e-6, atol=1e-6, dt_min=1e-3))(
        jnp.array([-1.0, np.nan, 0.0])
    )
    assert not np.any(np.asarray(prop.accept))
    assert not np.any(np.asarray(prop.at_dt_min))
    prop = jax.jit(lambda h: _propose(solver, h, rtol=1e-6, atol=1e-6, dt_min=1e-3))(
        jnp.array([1e-3, 1e-3, 1e-3])
    )
    assert np.all(np.asarray(prop.accept))
    # A step that does not move the time (below its resolution), or a time that
    # is not finite: not accepted either.
    dyn, _, y, current = _problem()
    controller = _controller(rtol=1e-6, atol=1e-6, dt_min=1e-3)
    t = jnp.array([1e8, np.nan, 0.0])
    prop = sj.adaptive_step(dyn, solver, controller, t, y, current, jnp.full(3, 1e-9))
    np.testing.assert_array_equal(np.asarray(prop.accept), [False, False, True])
    # A step not accepted leaves the controller's last accepted step as it was.
    before = controller.init_state((3,), jnp.float64)
    before = type(before)(jnp.array([0.5, 0.25, 0.125]), jnp.array([0.5, 0.25, 0.1]))
    prop = jax.jit(
        lambda h: sj.adaptive_step(
            dyn, solver, controller, t * 0, y, current, h, before
        )
    )(jnp.array([-1.0, 0.0, 1e-3]))
    np.testing.assert_array_equal(np.asarray(prop.accept), [False, False, True])
    for new, old in zip(
        jax.tree.leaves(prop.controller_state), jax.tree.leaves(before)
    ):
        np.testing.assert_array_equal(np.asarray(new)[:2], np.asarray(old)[:2])


def test_adaptive_step_grows_small_error_steps_within_dt_max():
    kwargs = dict(rtol=1e-3, atol=1e-3, dt_min=1e-4)
    prop = _propose(sj.Dopri5(), 0.01, **kwargs)
    assert np.all(np.asarray(prop.accept))
    np.testing.assert_allclose(prop.h_next, 0.1)  # growth capped at 10x
    prop = _propose(sj.Dopri5(), 0.01, dt_max=0.02, **kwargs)
    np.testing.assert_allclose(prop.h_next, 0.02)


def _standard_and_predictive(err, h, h_prev, error_prev):
    """Both controllers' proposals (factor clipped to [0.2, 10]), as documented."""
    err, h, h_prev = np.asarray(err), np.asarray(h), np.asarray(h_prev)
    e0 = np.maximum(np.asarray(error_prev), 1e-2)
    standard = 0.9 * err ** (-1 / 5)
    predictive = 0.9 * (h / h_prev) * (e0 / err**2) ** (1 / 5)
    return standard, predictive


def test_adaptive_step_predictive_controller():
    """With the last accepted step given, an accepted step's successor is the smaller
    of the standard and the predictive (Gustafsson) proposals; a rejected step's is
    the standard one."""
    dyn, t, y, current = _problem()
    controller = _controller(rtol=1e-6, atol=1e-6, dt_min=1e-6)

    def propose(y, h, h_prev=None, error_prev=None):
        history = None
        if h_prev is not None:
            history = sj.PredictiveState(jnp.array(h_prev), jnp.array(error_prev))
        return sj.adaptive_step(
            dyn, sj.Dopri5(), controller, t, y, current, jnp.array(h), history
        )

    # Accepted steps. Lane 0: the error per h^5 grew since the last step (of another
    # size): the predictive proposal is the smaller. Lane 1: it fell: the standard
    # one is. Lane 2: a previous error below the 1e-2 floor, which decides.
    h, h_prev, error_prev = [0.2, 0.15, 0.5], [0.25, 0.3, 0.5], [0.05, 0.5, 1e-4]
    plain = propose(y, h)
    pred = propose(y, h, h_prev, error_prev)
    err = np.asarray(pred.error_norm)
    np.testing.assert_array_equal(err, np.asarray(plain.error_norm))
    assert np.all(np.asarray(pred.accept))
    standard, predictive = _standard_and_predictive(err, h, h_prev, error_prev)
    # Neither proposal is clipped, so the comparison is decided by the controller.
    assert np.all((standard > 0.2) & (standard < 10))
    assert np.all((predictive > 0.2) & (predictive < 10))
    assert predictive[0] < standard[0] and predictive[1] > standard[1]
    assert predictive[2] < standard[2]
    unfloored = 0.9 * (0.5 / 0.5) * (1e-4 / err[2] ** 2) ** 0.2
    assert unfloored < 0.9 * predictive[2]
    # The factor is computed in single precision.
    np.testing.assert_allclose(plain.h_next, np.asarray(h) * standard, rtol=1e-6)
    np.testing.assert_allclose(
        pred.h_next, np.asarray(h) * np.minimum(standard, predictive), rtol=1e-6
    )
    # No history (zeros, as after a reset): the standard controller alone.
    zero = [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(propose(y, h, zero, zero).h_next, plain.h_next)

    # Lane 0: a rejected step whose predictive proposal would be smaller: the
    # standard one. Lane 1: a non-finite error: the smallest factor, 0.2.
    h, h_prev, error_prev = [0.3, 0.1, 0.1], [1.0, 0.1, 0.1], [0.5, 0.5, 0.5]
    y_bad = sj.LIFState(y.v.at[1].set(jnp.nan))
    pred = propose(y_bad, h, h_prev, error_prev)
    err = np.asarray(pred.error_norm)
    assert not pred.accept[0] and np.isnan(err[1])
    standard, predictive = _standard_and_predictive(err, h, h_prev, error_prev)
    assert max(predictive[0], 0.2) < standard[0]  # the gate decides
    np.testing.assert_allclose(pred.h_next[0], 0.3 * standard[0], rtol=1e-6)
    np.testing.assert_allclose(pred.h_next[1], 0.1 * 0.2, rtol=1e-6)


def _upswing_attempts(use_history):
    """Accepted and rejected steps of one AdEx neuron from its reset to its spike,
    stepped by `adaptive_step` alone (rtol = atol = 1e-7)."""
    dyn = sj.AdExDynamics().astype(jnp.float64)
    y = dyn.init_state(1, jnp.float64)
    current = jnp.array([1500.0])
    controller = _controller(rtol=1e-7, atol=1e-7, dt_min=1e-9, predictive=use_history)

    @jax.jit
    def attempt(t, y, h, h_prev, error_prev):
        history = sj.PredictiveState(h_prev, error_prev)
        return sj.adaptive_step(dyn, sj.Dopri5(), controller, t, y, current, h, history)

    t, h = jnp.zeros(1), jnp.full(1, 0.01)
    h_prev = error_prev = jnp.zeros(1)
    accepted = rejected = 0
    while accepted + rejected < 1000:
        prop = attempt(t, y, h, h_prev, error_prev)
        if not bool(prop.accept[0]):
            rejected += 1
        elif bool(dyn.threshold(prop.y1)[0] >= 0):
            return accepted, rejected
        else:
            accepted += 1
            t, y, h_prev, error_prev = t + h, prop.y1, h, prop.error_norm
        h = prop.h_next
    raise AssertionError("no spike within 1000 attempts")


def test_predictive_controller_avoids_upswing_rejections():
    plain_accepted, plain_rejected = _upswing_attempts(False)
    accepted, rejected = _upswing_attempts(True)
    # The standard controller alone overshoots on the accelerating upswing about
    # every other step; the predictive bound removes most of those rejections
    # without many more accepted steps.
    assert plain_rejected >= 5
    assert rejected <= plain_rejected / 3
    assert accepted + rejected < plain_accepted + plain_rejected
    assert accepted <= 1.2 * plain_accepted


def test_predictive_controller_in_diffeqsolve():
    """The controller is a diffrax adaptive controller: `diffeqsolve` with it solves
    dy/dt = -y + sin(t) to its tolerance, and its predictive bound is active there
    (it changes the steps, unlike `predictive=False`)."""

    def field(t, y, args):
        return -y + jnp.sin(t)

    def exact(t):  # y(0) = 1
        return 1.5 * np.exp(-t) + 0.5 * (np.sin(t) - np.cos(t))

    ts = np.linspace(0.0, 10.0, 11)
    steps = {}
    for predictive in (True, False):
        controller = sj.PredictiveController(
            rtol=1e-8, atol=1e-8, dtmin=1e-6, dt0=0.01, predictive=predictive
        )
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            0.0,
            10.0,
            None,
            jnp.asarray(1.0),
            stepsize_controller=controller,
            saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
        )
        assert sol.result == diffrax.RESULTS.successful
        # Local errors of 1e-8 per step over ~40 steps, damped by the decay.
        np.testing.assert_allclose(np.asarray(sol.ys), exact(ts), rtol=0, atol=1e-7)
        assert sol.stats is not None
        steps[predictive] = int(sol.stats["num_steps"])
    assert steps[True] != steps[False]


def test_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="`dtmin` must be <= `dt0`"):
        sj.PredictiveController(rtol=1e-6, atol=1e-6, dtmin=0.5, dt0=0.1)
    with pytest.raises(ValueError, match="`rtol` must be a positive number"):
        sj.PredictiveController(rtol=-1.0, atol=1e-6)


def test_lif_vector_field():
    dyn = sj.ODELIFDynamics(tau_mem=4.0, v_rest=-0.5, C_mem=2.0)
    v = jnp.array([[0.0, 1.0], [-2.0, 0.5]])
    current = jnp.array([1.0, -3.0])
    dv = sj.lif_vector_field(0.0, v, (dyn, current))
    expected = -(np.asarray(v) + 0.5) / 4.0 + np.asarray(current) / 2.0
    np.testing.assert_allclose(dv, expected, rtol=1e-15)
    assert dv.shape == v.shape
