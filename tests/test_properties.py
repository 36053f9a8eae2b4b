"""Property tests: the different ways of running a layer agree with each other (and,
where cheap, with the reference).

Shapes are fixed so that every property compiles once per dtype; hypothesis varies
the parameters, weights, inputs, interval and initial state.
"""

import contextlib
from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import snode_jax as sj

from .helpers import random_lif_config, tree_allclose

N_INPUTS, N_NEURONS, N_INTERVALS, BATCH = 5, 6, 4, 3
MAX_SPIKES = 64
DTYPES = [jnp.float64, jnp.float32]
# Agreement between two runs of the same computation compiled in different contexts
# (XLA may fuse and reorder differently), relative and absolute: far below any
# physical difference, loose enough for reordered rounding over many spikes.
TOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}

seeds = st.integers(0, 2**31 - 1)
drives = st.sampled_from([0.5, 2.0, 10.0, 60.0])
intervals = st.sampled_from([0.25, 1.0, 3.0])


def _layer_and_inputs(seed, drive, interval, dtype, batch=None):
    rng = np.random.default_rng(seed)
    cfg = random_lif_config(
        rng,
        "prop",
        n_inputs=N_INPUTS,
        n_neurons=N_NEURONS,
        n_intervals=N_INTERVALS,
        drive=drive,
        per_neuron=True,
        interval=interval,
        input_low=-0.2,
    )
    layer = cfg.layer(dtype, per_neuron=True)
    shape = (N_INTERVALS, N_INPUTS) if batch is None else (batch, N_INTERVALS, N_INPUTS)
    x = rng.uniform(-0.2, 1.0, shape) * cfg.input_scale
    return cfg, layer, jnp.asarray(x, dtype)


def _random_state(cfg, dtype, seed):
    rng = np.random.default_rng(seed + 7)
    p = cfg.params_as(dtype, per_neuron=True)
    v = rng.uniform(p["v_reset"] - 0.5, p["v_threshold"])
    v = np.minimum(v, np.nextafter(p["v_threshold"].astype(dtype), -np.inf))
    return sj.LIFState(jnp.asarray(v, dtype))


_jit_simulate = eqx.filter_jit(
    lambda layer, x, interval: layer.simulate(x, interval, MAX_SPIKES, throw=False)
)
_jit_forward = eqx.filter_jit(lambda layer, x, interval: layer.forward(x, interval))


def _simulate(layer, x, interval, **kwargs):
    return layer.simulate(x, interval, MAX_SPIKES, throw=False, **kwargs)


def _assert_solutions_agree(a, b, dtype):
    np.testing.assert_array_equal(np.asarray(a.counts), np.asarray(b.counts))
    np.testing.assert_array_equal(np.asarray(a.num_spikes), np.asarray(b.num_spikes))
    assert a.result == b.result
    tol = TOL[dtype]
    assert tree_allclose(a.spike_times, b.spike_times, rtol=tol, atol=tol)
    assert tree_allclose(a.final_state, b.final_state, rtol=tol, atol=tol)
    assert tree_allclose(a.interval_states, b.interval_states, rtol=tol, atol=tol)


@contextlib.contextmanager
def _tracers_seen_by_constraints():
    """Record, for every call of `ODELIFDynamics.constraints` (the model's run-time
    checks, which `integrate` calls on the parameters and the initial state at its
    top level), whether it was given tracers (inside `jit`) or concrete arrays."""
    seen = []
    original = sj.ODELIFDynamics.constraints

    def constraints(self, y):
        seen.append(
            any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((self, y)))
        )
        return original(self, y)

    with mock.patch.object(sj.ODELIFDynamics, "constraints", constraints):
        yield seen


def test_probe_sees_tracers_when_traced():
    # The probe of `test_jit_equals_eager` tells traced code from eager code: traced
    # (as by `jit`; `make_jaxpr` here, which has no cache to skip the trace), the
    # model's check is handed tracers.
    _, layer, x = _layer_and_inputs(0, 2.0, 1.0, jnp.float64)
    kwargs = dict(
        max_spikes=None,
        max_steps=layer.max_steps,
        stepsize_controller=layer.stepsize_controller,
        root_finder=layer.root_finder,
    )

    def run(dynamics, state, x):
        return sj.integrate(
            dynamics, layer.solver, layer.weight, x, 1.0, state, **kwargs
        ).counts

    with _tracers_seen_by_constraints() as seen:
        jax.make_jaxpr(run)(layer.dynamics, layer.init_state(), x)
    assert seen == [True]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
# Few examples: the eager run traces and compiles the integration loop afresh on
# every call (see below), about 3 s each.
@settings(max_examples=2)
@given(seed=seeds, drive=drives, interval=intervals)
def test_jit_equals_eager(dtype, seed, drive, interval):
    # Eager: `jax.disable_jit()` makes the layer's `eqx.filter_jit` call straight
    # through, so `integrate`, its checks and its custom_jvp run op by op in Python.
    # The integration loop itself is still traced: `jax.custom_batching.custom_vmap`
    # (the batching rule of `run_folded`) traces its function to a jaxpr on every
    # call, even under disable_jit, and evaluates it primitive by primitive; the scan
    # over intervals is unrolled there, while `lax.while_loop`/`lax.cond` on traced
    # predicates fall back to their primitives, each compiled on its own. So the
    # eager side shares no compiled program with the jitted one.
    _, layer, x = _layer_and_inputs(seed, drive, interval, dtype)
    with _tracers_seen_by_constraints() as seen, jax.disable_jit():
        eager = _simulate(layer, x, interval)
    assert seen == [False]  # `integrate` ran on concrete arrays
    jitted = _jit_simulate(layer, x, jnp.asarray(interval, dtype))
    _assert_solutions_agree(eager, jitted, dtype)
    np.testing.assert_array_equal(
        np.asarray(_jit_forward(layer, x, jnp.asarray(interval, dtype))),
        np.asarray(eager.counts),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@given(seed=seeds, drive=drives, interval=intervals)
def test_vmap_equals_loop(dtype, seed, drive, interval):
    _, layer, xb = _layer_and_inputs(seed, drive, interval, dtype, batch=BATCH)
    counts = jax.vmap(lambda x: layer.forward(x, interval, throw=False))(xb)
    sols = jax.vmap(lambda x: _simulate(layer, x, interval))(xb)
    assert counts.shape == (BATCH, N_INTERVALS, N_NEURONS)
    for i in range(BATCH):
        sol_i = _simulate(layer, xb[i], interval)
        np.testing.assert_array_equal(np.asarray(counts[i]), np.asarray(sol_i.counts))
        sol_b = jax.tree.map(lambda a: a[i], sols)
        _assert_solutions_agree(sol_b, sol_i, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@settings(max_examples=4)  # every OnlineLayer compiles its own step
@given(seed=seeds, drive=drives, interval=intervals)
def test_online_layer_equals_forward(dtype, seed, drive, interval):
    _, layer, x = _layer_and_inputs(seed, drive, interval, dtype)
    sol = _simulate(layer, x, interval)
    online = sj.OnlineLayer(layer)
    online.reset()
    np.testing.assert_array_equal(
        np.asarray(online.voltage), np.asarray(layer.init_state().v)
    )
    tol = TOL[dtype]
    for k in range(N_INTERVALS):
        counts = online.step(x[k], interval=interval)
        np.testing.assert_array_equal(np.asarray(counts), np.asarray(sol.counts[k]))
        np.testing.assert_allclose(
            online.voltage, sol.interval_states.v[k], rtol=tol, atol=tol
        )
    # reset() returns to rest, reset(state) to that state.
    online.reset()
    np.testing.assert_array_equal(
        np.asarray(online.voltage), np.asarray(layer.init_state().v)
    )
    state = sj.LIFState(sol.interval_states.v[1])
    online.reset(state)
    counts = online.step(x[2], interval=interval)
    np.testing.assert_array_equal(np.asarray(counts), np.asarray(sol.counts[2]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@given(seed=seeds, drive=drives, interval=intervals, from_rest=st.booleans())
def test_step_chain_equals_simulate(dtype, seed, drive, interval, from_rest):
    cfg, layer, x = _layer_and_inputs(seed, drive, interval, dtype)
    state0 = layer.init_state() if from_rest else _random_state(cfg, dtype, seed)
    sol = _simulate(layer, x, interval, state=state0)
    state = state0
    tol = TOL[dtype]
    for k in range(N_INTERVALS):
        state, counts = layer.step(state, x[k], interval, throw=False)
        np.testing.assert_array_equal(np.asarray(counts), np.asarray(sol.counts[k]))
        np.testing.assert_allclose(
            state.v, sol.interval_states.v[k], rtol=tol, atol=tol
        )
    assert tree_allclose(state, sol.final_state, rtol=tol, atol=tol)
    # Counts are exact integers whatever the dtype.
    c = np.asarray(sol.counts)
    np.testing.assert_array_equal(c, np.round(c))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@given(seed=seeds, drive=drives, interval=intervals)
def test_splitting_the_input_sequence(dtype, seed, drive, interval):
    # Simulating the first half, then the second half from its final state, equals
    # simulating everything (counts exactly; spike times shifted by the first half).
    _, layer, x = _layer_and_inputs(seed, drive, interval, dtype)
    whole = layer.forward(x, interval, throw=False)
    half = N_INTERVALS // 2
    x2 = jnp.concatenate([x[:half], x[:half]])  # same shape: no recompilation
    first = _simulate(layer, x2, interval)
    # Interval states after `half` intervals of x[:half]:
    state = sj.LIFState(first.interval_states.v[half - 1])
    x3 = jnp.concatenate([x[half:], x[half:]])
    second = layer.forward(x3, interval, state=state, throw=False)
    np.testing.assert_array_equal(
        np.asarray(whole), np.concatenate([first.counts[:half], second[:half]])
    )
