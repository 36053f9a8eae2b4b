"""Fuzz tests: each model family on the Runge-Kutta path against SciPy's DOP853 with
random parameters in their documented ranges and random piecewise inputs; and bad
inputs anywhere, which must give a clear error or a non-success result, never a
silent NaN."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import snode_jax as sj

from .scipy_reference import (
    adex_rhs,
    izhikevich_rhs,
    qif_rhs,
    simulate_reference,
)

N_INTERVALS, INTERVAL = 5, 10.0
# The library at rtol = atol = 1e-10 against SciPy at 1e-12: measured spike-time
# differences are <= ~1e-8 ms over 50 ms; a crossing's time error is the state
# error over the slope there, so 1e-6 ms leaves room for shallow crossings.
SETTINGS = dict(rtol=1e-10, atol=1e-10, dt_min=1e-7, dt_init=0.01, max_steps=50000)
TIME_TOL = 1e-6


def cuba_rhs(tau_mem, tau_syn, v_threshold, v_reset):
    def rhs(y, current):
        v, i = y
        return [-v / tau_mem + i, (current - i) / tau_syn]

    return rhs, lambda y: y[0] - v_threshold, lambda y: np.array([v_reset, y[1]])


def _family(name, draw):
    """A model with random parameters, its SciPy restatement, the initial state
    and a current scale."""
    u = draw
    if name == "adex":
        p = dict(
            C=u(100.0, 400.0),
            g_L=u(10.0, 50.0),
            E_L=u(-75.0, -60.0),
            V_T=u(-55.0, -45.0),
            Delta_T=u(1.0, 3.0),
            tau_w=u(30.0, 300.0),
            a=u(0.0, 8.0),
            b=u(0.0, 100.0),
        )
        p["v_reset"] = u(p["E_L"], p["V_T"])
        p["v_peak"] = p["V_T"] + 5 * p["Delta_T"]
        return sj.AdExDynamics(**p), adex_rhs(p), [p["E_L"], 0.0], 1500.0
    if name == "izhikevich":
        a, b, c, d = u(0.01, 0.1), u(0.15, 0.25), u(-70.0, -50.0), u(1.0, 8.0)
        dyn = sj.IzhikevichDynamics(a, b, c, d)
        return dyn, izhikevich_rhs(a, b, c, d), [-65.0, b * -65.0], 15.0
    if name == "qif":
        tau, k, vc = u(5.0, 20.0), u(0.5, 2.0), u(0.5, 2.0)
        v_reset, v_peak = u(-0.5, 0.4), u(5.0, 20.0)
        dyn = sj.QIFDynamics(tau, k, 0.0, vc, v_reset, v_peak, 1.0)
        return dyn, qif_rhs(tau, k, 0.0, vc, v_reset, v_peak, 1.0), [0.0], 3.0
    tau_mem = u(5.0, 30.0)
    tau_syn = u(1.0, 4.0)  # well apart from tau_mem
    dyn = sj.CubaLIFDynamics(tau_mem=tau_mem, tau_syn=tau_syn)
    return dyn, cuba_rhs(tau_mem, tau_syn, 1.0, 0.0), [0.0, 0.0], 0.3


@pytest.mark.parametrize("family", ["adex", "izhikevich", "qif", "cuba"])
@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1))
def test_family_against_scipy(family, seed):
    rng = np.random.default_rng(seed)

    def draw(lo, hi):
        return float(rng.uniform(lo, hi))

    dyn, (rhs, threshold, reset), y0, scale = _family(family, draw)
    currents = rng.uniform(0.0, scale, N_INTERVALS)
    layer = sj.SpikingODELayer(
        1, 1, dyn, solver=sj.Dopri5(), key=jax.random.key(0), **SETTINGS
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.ones((1, 1)))
    sol = layer.simulate(currents[:, None], INTERVAL, max_spikes=400)
    ref_times, ref_ends = simulate_reference(
        rhs, threshold, reset, y0, list(currents), INTERVAL
    )
    times = np.asarray(sol.spike_times[0])
    times = times[np.isfinite(times)]
    assert len(times) == len(ref_times), (family, seed, len(times), len(ref_times))
    if len(times):
        assert np.max(np.abs(times - ref_times)) <= TIME_TOL
    v_end = float(dyn.voltage(sol.final_state)[0])
    assert abs(v_end - ref_ends[-1][0]) <= 1e-6 * max(1.0, abs(ref_ends[-1][0]))


# -- bad inputs --------------------------------------------------------------------------

BAD = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38]


def _place(where, value):
    """A layer and inputs with `value` put at `where`."""
    layer = sj.SpikingODELayer(3, 2, key=jax.random.key(0), dtype=jnp.float32)
    x = jnp.ones((4, 3), jnp.float32)
    state = None
    if where == "inputs":
        x = x.at[2, 1].set(value)
    elif where == "weight":
        layer = eqx.tree_at(lambda m: m.weight, layer, layer.weight.at[1, 0].set(value))
    elif where == "state":
        state = sj.LIFState(jnp.array([0.0, value], jnp.float32))
    else:
        layer = eqx.tree_at(
            lambda m: getattr(m.dynamics, where),
            layer,
            jnp.asarray(value, jnp.float32),
        )
    return layer, x, state


@eqx.filter_jit
def _run(layer, x, state):
    return layer.simulate(x, 1.0, max_spikes=16, state=state, throw=False)


@settings(max_examples=40)
@given(
    where=st.sampled_from(
        ["inputs", "weight", "state", "tau_mem", "v_threshold", "v_reset", "C_mem"]
    ),
    value=st.sampled_from(BAD),
)
def test_bad_values_never_pass_silently(where, value):
    """Under `filter_jit` (values traced, so no eager check can catch them): either
    the result is not successful, or every output is finite."""
    layer, x, state = _place(where, value)
    sol = _run(layer, x, state)
    if sol.result == sj.RESULTS.successful:
        outputs = [sol.counts, sol.final_state.v, sol.interval_states.v]
        for out in outputs:
            assert np.all(np.isfinite(np.asarray(out))), (where, value)
        assert not np.any(np.isnan(np.asarray(sol.spike_times))), (where, value)
