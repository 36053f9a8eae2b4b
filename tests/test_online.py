"""`OnlineLayer`: its compiled step against the closed form and the whole-sequence
runs, one compilation across many calls, and errors on bad input."""

import logging
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .helpers import random_lif_config, reference_for
from .lif_reference import lif_reference

N_INPUTS, N_NEURONS, N_INTERVALS = 5, 8, 12
V_ATOL = 1e-9  # float64 voltages against the closed form, as in test_lif_exact.py
# Voltages of two compiled contexts (one interval per call against one scan over all
# intervals) may round differently; the tolerance of test_properties.py.
TOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}


def _config(interval=0.7):
    # Strong, mixed drive: silent neurons and neurons with many spikes per interval.
    rng = np.random.default_rng(3)
    return random_lif_config(
        rng,
        "online",
        n_inputs=N_INPUTS,
        n_neurons=N_NEURONS,
        n_intervals=N_INTERVALS,
        drive=30.0,
        per_neuron=True,
        interval=interval,
        input_low=-0.3,
    )


def _inputs(cfg, dtype):
    # Values that float32 holds exactly, so that every form of `_as_given` carries
    # the same input.
    return np.asarray(cfg.inputs(), np.float32).astype(dtype)


def _as_given(x, k):
    # Every form an input may come in: the runner casts each to the layer's dtype.
    return [
        np.asarray(x, np.float64),
        np.asarray(x, np.float32),
        jnp.asarray(x, jnp.float32),
        jnp.asarray(x, jnp.float64),
        list(np.asarray(x, np.float64)),
    ][k % 5]


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
def test_online_step_equals_closed_form_and_simulate(dtype):
    cfg = _config()
    layer = cfg.layer(dtype, per_neuron=True)
    x = _inputs(cfg, dtype)
    sol = layer.simulate(x, cfg.interval, max_spikes=512)
    forward = np.asarray(layer.forward(x, cfg.interval))
    online = sj.OnlineLayer(layer)
    state = layer.init_state()
    counts, voltages = [], []
    for k in range(N_INTERVALS):
        c = online.step(_as_given(x[k], k), cfg.interval)
        assert c.dtype == dtype and online.state.v.dtype == dtype
        counts.append(np.asarray(c))
        voltages.append(np.asarray(online.voltage))
        # The pure step it compiles: the same computation, bit for bit.
        state, c_pure = layer.step(state, x[k], cfg.interval)
        np.testing.assert_array_equal(counts[-1], np.asarray(c_pure))
        np.testing.assert_array_equal(voltages[-1], np.asarray(state.v))
    counts, voltages = np.stack(counts), np.stack(voltages)
    ref = reference_for(layer, x, cfg.interval)
    assert ref.counts.sum() > 100 and (ref.counts.sum(axis=0) == 0).any()
    np.testing.assert_array_equal(counts, forward)
    np.testing.assert_array_equal(counts, np.asarray(sol.counts))
    np.testing.assert_allclose(
        voltages, sol.interval_states.v, rtol=TOL[dtype], atol=TOL[dtype]
    )
    if dtype == jnp.float64:  # (float32 against the closed form: test_lif_exact.py)
        np.testing.assert_array_equal(counts, ref.counts)
        np.testing.assert_allclose(voltages, ref.interval_v, rtol=0, atol=V_ATOL)


def test_online_step_carries_a_state_of_two_arrays():
    # The LIF with a refractory period: the state is (v, refractory time left), and
    # a refractory period running into the next interval must survive the step.
    layer = sj.SpikingODELayer(
        4, 6, sj.ODELIFDynamics(t_ref=1.7), key=jax.random.key(1)
    )
    x = np.random.default_rng(3).standard_normal((15, 4)) * 5
    ref = lif_reference(layer.weight, x, 0.5, t_ref=1.7)
    assert ref.counts.sum() > 10 and (ref.final_refractory > 0).any()
    online = sj.OnlineLayer(layer)
    counts = np.stack([np.asarray(online.step(x[k], 0.5)) for k in range(15)])
    np.testing.assert_array_equal(counts, ref.counts)
    np.testing.assert_allclose(online.state.v, ref.final_v, rtol=0, atol=V_ATOL)
    np.testing.assert_allclose(
        online.state.refractory, ref.final_refractory, rtol=0, atol=V_ATOL
    )


def _step_compilations(records) -> int:
    return sum(r.getMessage().startswith("Compiling jit(online_step)") for r in records)


def test_online_step_compiles_once(caplog):
    cfg = _config(interval=0.5)
    layer = cfg.layer(jnp.float64, per_neuron=True)
    x = _inputs(cfg, np.float64)
    trained = eqx.tree_at(lambda lyr: lyr.weight, layer, layer.weight * 1.5)
    jax.clear_caches()  # whatever ran before, this structure compiles here
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        online = sj.OnlineLayer(layer)
        v = None
        for k in range(40):
            # Inputs of every dtype, Python and array intervals of two values, each
            # step against the closed form from where the last one ended.
            interval = [0.5, 0.25, jnp.asarray(0.5), np.float32(0.25), 0.25][k % 5]
            xk = x[k % N_INTERVALS]
            counts = online.step(_as_given(xk, k), interval)
            ref = reference_for(layer, xk[None], interval, v0=v)
            np.testing.assert_array_equal(np.asarray(counts), ref.counts[0])
            np.testing.assert_allclose(online.voltage, ref.final_v, rtol=0, atol=V_ATOL)
            v = ref.final_v
        online.reset(sj.LIFState(layer.init_state().v.astype(jnp.float32)))
        online.step(x[0], 0.5)
        # A runner of a layer with other weights shares the compilation, and so
        # does a runner whose layer is replaced.
        other = sj.OnlineLayer(trained)
        counts = [np.asarray(other.step(x[k], 0.5)) for k in range(N_INTERVALS)]
        online.layer = trained
        online.reset()
        again = [np.asarray(online.step(x[k], 0.5)) for k in range(N_INTERVALS)]
    assert _step_compilations(caplog.records) == 1
    # ... and runs the new weights.
    ref = reference_for(trained, x, 0.5)
    np.testing.assert_array_equal(np.stack(counts), ref.counts)
    np.testing.assert_array_equal(np.stack(again), ref.counts)
    # The counter sees compilations: a new structure compiles once more.
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        sj.OnlineLayer(sj.SpikingODELayer(2, 3, key=jax.random.key(1))).step(np.ones(2))
    assert _step_compilations(caplog.records) == 2


@pytest.fixture(scope="module")
def runner():
    layer = sj.SpikingODELayer(3, 4, key=jax.random.key(0))
    return sj.OnlineLayer(layer)


@pytest.mark.parametrize(
    "interval, shown",
    [(0.0, "0.0"), (-1.0, "-1.0"), (np.nan, "nan"), (jnp.array(np.inf), "inf")],
)
def test_bad_interval_raises_every_time(runner, interval, shown):
    runner.reset()
    runner.step(np.ones(3), 1.0)
    message = rf"`interval` must be finite and > 0 \(ms\), got {shown}"
    for _ in range(2):  # a rejected value is not remembered as checked
        with pytest.raises(ValueError, match=message):
            runner.step(np.ones(3), interval)
    with pytest.raises(ValueError, match=r"`interval` must be a scalar \(ms\)"):
        runner.step(np.ones(3), np.ones(2))


@pytest.mark.parametrize("shape", [(4,), (1, 3), ()])
def test_bad_x_raises(runner, shape):
    expected = f"`x` must have shape (n_inputs,) = (3,), got {shape}."
    with pytest.raises(ValueError, match=re.escape(expected)):
        runner.step(np.ones(shape))
    with pytest.raises(ValueError, match=re.escape(expected)):
        runner.step(jnp.ones(shape))


def test_non_real_x_raises(runner):
    with pytest.raises(TypeError, match=r"`x` must be real numbers, got dtype compl"):
        runner.step(np.ones(3) * 1j)
    with pytest.raises(TypeError, match=r"`x` must be real numbers, got dtype <U1"):
        runner.step(np.array(["1", "0", "1"]))


def test_a_traced_step_is_refused_by_name(runner):
    """The runner keeps its state between calls: under `jax.jit` or `lax.scan` it
    failed with JAX's TracerArrayConversionError; it now says to use the pure
    `layer.step`, and its state stays."""
    runner.reset()
    before = np.asarray(runner.voltage)
    message = r"`OnlineLayer.step` runs eagerly.*layer.step\(state, x, interval\)"
    with pytest.raises(TypeError, match=message):
        jax.jit(lambda x: runner.step(x))(jnp.ones(3))
    with pytest.raises(TypeError, match=message):
        jax.lax.scan(lambda c, x: (c, runner.step(x)), 0, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=message):
        jax.jit(lambda dt: runner.step(np.ones(3), dt))(1.0)
    np.testing.assert_array_equal(np.asarray(runner.voltage), before)


def test_failed_step_raises_and_keeps_state(runner):
    runner.reset()
    runner.step(np.array([4.0, 4.0, 4.0]), 1.0)
    before = np.asarray(runner.voltage)
    # A bad input is named by its entry, as the layer's own checks name it (the
    # step runs on traced values: it raised "The inputs, the parameters or the
    # initial state contain NaN or inf", naming nothing).
    for bad, shown in [(np.nan, "nan"), (np.inf, "inf")]:
        for x in (np.array([1.0, bad, 0.0]), jnp.array([1.0, bad, 0.0])):
            with pytest.raises(
                ValueError, match=rf"`x` must be finite, got {shown} at x\[1\]"
            ):
                runner.step(x, 1.0)
            np.testing.assert_array_equal(np.asarray(runner.voltage), before)
    # A float64 JAX array beyond a float32 layer's range (cast on the device).
    narrow = sj.OnlineLayer(
        sj.SpikingODELayer(3, 4, dtype=jnp.float32, key=jax.random.key(0))
    )
    with pytest.raises(
        ValueError, match=r"`x` must fit the layer's dtype float32 .* 1e\+39 at x\[2\]"
    ):
        narrow.step(jnp.array([1.0, 0.0, 1e39], jnp.float64), 1.0)
    np.testing.assert_array_equal(np.asarray(narrow.voltage), 0.0)
    # Finite inputs whose current overflows.
    with pytest.raises(eqx.EquinoxRuntimeError, match="overflow"):
        runner.step(np.full(3, np.finfo(runner.layer.dtype).max), 1.0)
    np.testing.assert_array_equal(np.asarray(runner.voltage), before)
    # A start at threshold is an invalid initial state (checked when run).
    runner.reset(sj.LIFState(jnp.ones(4)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="need initial v < v_threshold"):
        runner.step(np.ones(3))
    # The runner goes on after a failure.
    runner.reset()
    counts = runner.step(np.zeros(3), 1.0)
    np.testing.assert_array_equal(np.asarray(counts), np.zeros(4))


def test_bad_state_and_layer_raise(runner):
    with pytest.raises(
        ValueError, match=r"`state` arrays must have shape \(4,\), got \(3,\)"
    ):
        runner.reset(sj.LIFState(jnp.zeros(3)))
    # A state that is not finite is refused where it is set, naming the entry (it
    # was taken, and the next step failed naming nothing).
    runner.reset()
    before = np.asarray(runner.voltage)
    with pytest.raises(
        ValueError, match=r"`state.v` must be finite, got nan at state.v\[2\]"
    ):
        runner.reset(sj.LIFState(jnp.array([0.0, 0.0, jnp.nan, 0.0])))
    np.testing.assert_array_equal(np.asarray(runner.voltage), before)
    with pytest.raises(ValueError, match=r"`state` must be a LIFState"):
        runner.state = jnp.zeros(4)
    with pytest.raises(TypeError, match=r"`layer` must be a SpikingODELayer, got str"):
        runner.layer = "layer"
    # A layer the current state does not fit is refused, and the runner keeps the
    # layer it had.
    with pytest.raises(ValueError, match=r"`state` arrays must have shape \(5,\)"):
        runner.layer = sj.SpikingODELayer(3, 5, key=jax.random.key(0))
    assert runner.layer.n_neurons == 4
    recurrent = sj.SpikingODELayer(3, 4, recurrent=True, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"steps a feed-forward layer.*use `simulate`"):
        sj.OnlineLayer(recurrent)
