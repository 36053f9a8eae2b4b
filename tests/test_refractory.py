"""LIF with an absolute refractory period against the closed form with
refractoriness (tests/lif_reference.py), and its exact gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .lif_reference import lif_reference


def random_config(rng, trial):
    tau = rng.uniform(2, 50)
    v_rest = rng.uniform(-1, 1)
    theta = v_rest + rng.uniform(0.2, 3)
    v_reset = theta - rng.uniform(0.1, 3)
    C = rng.uniform(0.3, 3)
    interval = rng.uniform(0.1, 5)
    # Refractory periods shorter than, comparable to and longer than the interval.
    t_ref = [rng.uniform(0.01, 0.3), rng.uniform(0.5, 2.0), rng.uniform(2, 10)][
        trial % 3
    ]
    scale = 10 ** rng.uniform(-0.5, 2)
    return (tau, v_rest, theta, v_reset, C), interval, t_ref, scale


def _simulate_against(ref, layer, x, interval):
    """`layer.simulate` against the closed-form reference `ref`: counts exactly,
    spike times, interval voltages and the final refractory state to 1e-9 (ms,
    float64). Returns the solution."""
    max_spikes = int(ref.counts.sum(0).max()) + 1
    sol = layer.simulate(x, interval, max_spikes=max_spikes)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    expected = ref.padded_times(max_spikes)
    fin = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(np.asarray(sol.spike_times)), fin)
    assert (
        np.max(np.abs(np.asarray(sol.spike_times)[fin] - expected[fin]), initial=0)
        <= 1e-9
    )
    np.testing.assert_allclose(
        np.asarray(sol.interval_states.v), ref.interval_v, atol=1e-9
    )
    np.testing.assert_allclose(
        np.asarray(sol.final_state.refractory), ref.final_refractory, atol=1e-9
    )
    return sol


@pytest.mark.parametrize("trial", range(12))
def test_refractory_matches_closed_form(trial):
    rng = np.random.default_rng(100 + trial)
    params, interval, t_ref, scale = random_config(rng, trial)
    layer = sj.SpikingODELayer(
        5, 8, sj.ODELIFDynamics(*params, t_ref=t_ref), key=jax.random.key(trial)
    )
    x = rng.standard_normal((25, 5)) * scale
    ref = lif_reference(layer.weight, x, interval, *params, t_ref=t_ref)
    # Same 1e-9 ms / 1e-9 bounds as the LIF without refractoriness (float64).
    sol = _simulate_against(ref, layer, x, interval)
    # forward agrees, and the refractory period is respected.
    np.testing.assert_array_equal(np.asarray(layer.forward(x, interval)), ref.counts)
    for row in np.asarray(sol.spike_times):
        t = row[np.isfinite(row)]
        assert np.all(np.diff(t) >= t_ref - 1e-12)


def test_refractory_strong_drive_is_rate_limited():
    # With overwhelming drive the ISI tends to t_ref: at most 1 + T_total / t_ref
    # spikes, and close to it.
    layer = sj.SpikingODELayer(
        1, 1, sj.ODELIFDynamics(t_ref=2.0), key=jax.random.key(0)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[1e6]]))
    sol = layer.simulate(np.ones((20, 1)), 1.0, max_spikes=32)
    ref = lif_reference(layer.weight, np.ones((20, 1)), 1.0, t_ref=2.0)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    assert 9 <= int(np.asarray(sol.num_spikes)[0]) <= 10


def test_step_chain_carries_refractory_state():
    rng = np.random.default_rng(3)
    layer = sj.SpikingODELayer(
        4, 6, sj.ODELIFDynamics(t_ref=1.7), key=jax.random.key(1)
    )
    x = rng.standard_normal((15, 4)) * 5
    sol = layer.simulate(x, 0.5, max_spikes=32)
    state = layer.init_state()
    for k in range(15):
        state, counts = layer.step(state, x[k], 0.5)
        np.testing.assert_array_equal(np.asarray(counts), np.asarray(sol.counts[k]))
    np.testing.assert_allclose(
        np.asarray(state.v), np.asarray(sol.final_state.v), atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(state.refractory), np.asarray(sol.final_state.refractory), atol=1e-12
    )


@pytest.mark.parametrize(
    "name", ["t_ref", "tau_mem", "v_threshold", "v_reset", "C_mem"]
)
def test_refractory_gradients_match_finite_differences(name):
    rng = np.random.default_rng(7)
    layer = sj.SpikingODELayer(
        3, 4, sj.ODELIFDynamics(tau_mem=15.0, t_ref=0.8), key=jax.random.key(2)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.abs(layer.weight))
    x = rng.standard_normal((12, 3)) + 4.0
    max_spikes = 40

    def loss(model):
        sol = model.simulate(x, 1.0, max_spikes=max_spikes)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return (
            jnp.sum(t) * 1e-2
            + jnp.sum(sol.interval_states.v)
            + jnp.sum(sol.final_state.refractory)
        )

    grad = getattr(eqx.filter_grad(loss)(layer).dynamics, name)
    value = getattr(layer.dynamics, name)
    # The forward values carry round-off of ~1e-12 (accumulated over the spikes),
    # so the step is 1e-4 relative: round-off then contributes ~1e-8 relative to
    # the difference quotient and the O(eps^2) truncation about as much.
    eps = 1e-4 * max(1.0, abs(float(value)))
    plus = eqx.tree_at(lambda m: getattr(m.dynamics, name), layer, value + eps)
    minus = eqx.tree_at(lambda m: getattr(m.dynamics, name), layer, value - eps)
    counts = [m.simulate(x, 1.0, max_spikes).counts for m in (plus, minus, layer)]
    assert all(np.array_equal(counts[0], c) for c in counts[1:])  # structure fixed
    assert np.asarray(counts[2]).sum() > 30
    fd = (loss(plus) - loss(minus)) / (2 * eps)
    # 1e-6 relative is the requirement for finite differences.
    assert abs(float(grad) - float(fd)) <= 1e-6 * abs(float(fd))


def test_refractory_errors():
    with pytest.raises(ValueError, match=r"`t_ref` must be >= 0 \(ms\), got -1.0"):
        sj.ODELIFDynamics(t_ref=-1.0)
    with pytest.raises(ValueError, match="closed-form solver only"):
        sj.SpikingODELayer(
            2,
            2,
            sj.ODELIFDynamics(t_ref=1.0),
            solver=sj.Dopri5(),
            key=jax.random.key(0),
        )
    layer = sj.SpikingODELayer(
        2, 2, sj.ODELIFDynamics(t_ref=1.0), key=jax.random.key(0)
    )
    bad = sj.LIFState(jnp.zeros(2), jnp.array([-1.0, 0.0]))
    sol = layer.simulate(jnp.ones((2, 2)), 1.0, max_spikes=4, state=bad, throw=False)
    assert sol.result == sj.RESULTS.invalid_parameters


@pytest.mark.parametrize("t_ref", [0.5, 5.0, 70.0])
def test_refractory_intervals_walked_in_pieces_match_closed_form(t_ref):
    """Intervals of 75 tau_mem are walked in three pieces (each at most 30
    tau_mem), each from the state the one before ends in, the refractory period
    carried across (70 ms outlasts a whole piece)."""
    params = (2.0, 0.0, 1.0, 0.0, 1.0)  # tau_mem, v_rest, v_threshold, v_reset, C
    interval = 150.0
    layer = sj.SpikingODELayer(
        4,
        12,
        sj.ODELIFDynamics(*params, t_ref=t_ref),
        dtype=jnp.float64,
        key=jax.random.key(1),
    )
    x = np.random.default_rng(2).uniform(0.0, 1.5, (6, 4))
    x[1::2] = 0  # the input is off in every other interval
    ref = lif_reference(layer.weight, x, interval, *params, t_ref=t_ref)
    assert ref.counts.sum() > 20
    # Times up to 900 ms: float64 rounding of a few ulp of that, far below 1e-9.
    _simulate_against(ref, layer, x, interval)


@pytest.mark.parametrize("t_ref", [None, 0.3])
def test_large_batch_spike_times_match_closed_form(t_ref):
    # A batch folded into enough lanes (48 samples x 16 neurons) that the pass
    # over the spike record goes on with only the neurons that still have spikes
    # once they fit in an eighth of the lanes (see `_slot_times`), with
    # per-neuron time constants (taken for those lanes) and counts that spread
    # out (inputs scaled from sample to sample): every sample's spike times
    # against the closed form.
    rng = np.random.default_rng(7)
    n, k, T, B = 16, 4, 30, 48
    tau = rng.uniform(5.0, 40.0, n)
    dyn = sj.ODELIFDynamics(tau_mem=jnp.asarray(tau), t_ref=t_ref)
    layer = sj.SpikingODELayer(k, n, dyn, key=jax.random.key(3))
    x = np.abs(rng.standard_normal((B, T, k))) * np.geomspace(0.5, 30, B)[:, None, None]
    interval = 1.0
    refs = [
        lif_reference(layer.weight, xb, interval, tau_mem=tau, t_ref=t_ref or 0.0)
        for xb in x
    ]
    num = np.concatenate([ref.counts.sum(0) for ref in refs])  # the folded lanes'
    # Past some slot, at most an eighth of the lanes have spikes left, while
    # others still do.
    assert any(np.sum(num > j) <= num.size // 8 for j in range(int(num.max())))
    max_spikes = int(num.max()) + 1
    sols = jax.vmap(lambda xb: layer.simulate(xb, interval, max_spikes=max_spikes))(
        jnp.asarray(x)
    )
    for b, ref in enumerate(refs):
        np.testing.assert_array_equal(np.asarray(sols.counts[b]), ref.counts)
        expected = ref.padded_times(max_spikes)
        fin = np.isfinite(expected)
        got = np.asarray(sols.spike_times[b])
        np.testing.assert_array_equal(np.isfinite(got), fin)
        assert np.max(np.abs(got[fin] - expected[fin]), initial=0) <= 1e-9, b
