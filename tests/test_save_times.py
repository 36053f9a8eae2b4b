"""`simulate(..., save_times=)`: the neuron state at given times, against closed
forms (LIF), SciPy's DOP853 with resets (CubaLIF, AdEx) and the independent event
simulator (spike-train inputs), with its errors, gradients, `jit` and `vmap`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .lif_reference import lif_reference
from .network_reference import simulate_layer
from .scipy_reference import adex_rhs, states_at_reference

KEY = jax.random.key(0)
TAU = 20.0
# Every call of a test module passes this many save times (a grid, or spike times
# padded with the end time), so that the module compiles each path once.
NUM_SAVE = 64


def padded(times, end):
    """`times` sorted, then repeated `end` up to `NUM_SAVE` entries."""
    times = np.sort(np.asarray(times, float))
    assert len(times) <= NUM_SAVE
    return np.concatenate([times, np.full(NUM_SAVE - len(times), end)])


def with_weight(layer, weight):
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, float))


def lif_voltage_at(ref, inputs, weight, interval, t, v_reset=0.0):
    """Closed-form LIF voltage at time `t` (post-reset at a spike): from the latest
    of the interval start and the last spike at or before `t`, `v(t) = v_inf + (v0
    - v_inf) exp(-(t - t0) / tau)` with the interval's held current."""
    currents = np.asarray(inputs) @ np.asarray(weight).T
    n = currents.shape[1]
    if t <= 0:
        return np.zeros(n)
    k = min(int(np.ceil(t / interval)) - 1, currents.shape[0] - 1)
    start = k * interval
    v0 = ref.interval_v[k - 1] if k > 0 else np.zeros(n)
    out = np.empty(n)
    for i in range(n):
        spikes = ref.spike_times[i]
        spikes = spikes[(spikes > start) & (spikes <= t)]
        t0, vi = (spikes[-1], v_reset) if len(spikes) else (start, v0[i])
        v_inf = currents[k, i] * TAU
        out[i] = v_inf + (vi - v_inf) * np.exp(-(t - t0) / TAU)
    return out


# -- dense inputs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lif_case():
    rng = np.random.default_rng(1)
    n, n_in, steps, interval = 4, 3, 6, 5.0
    weight = rng.uniform(0.0, 0.06, (n, n_in))
    inputs = rng.uniform(0.0, 2.0, (steps, n_in))
    layer = with_weight(
        sj.SpikingODELayer(n_in, n, sj.ODELIFDynamics(TAU), key=KEY), weight
    )
    ref = lif_reference(weight, inputs, interval, tau_mem=TAU)
    return layer, inputs, interval, ref


def test_lif_closed_form(lif_case):
    layer, inputs, interval, ref = lif_case
    assert sum(len(s) for s in ref.spike_times) >= 6  # spikes inside intervals
    # A grid (with every interval boundary and both ends) and off-grid times.
    grid = np.arange(0.0, interval * len(inputs) + 0.25, 0.5)  # boundaries too
    save = np.sort(np.concatenate([grid, [0.3, 7.77, 12.5001]]))
    sol = layer.simulate(inputs, interval, max_spikes=32, save_times=save)
    assert sol.saved_states.v.shape == (len(save), 4)
    np.testing.assert_array_equal(sol.save_times, save)
    expected = np.stack(
        [lif_voltage_at(ref, inputs, layer.weight, interval, t) for t in save]
    )
    # Closed form against closed form in float64: rounding only.
    np.testing.assert_allclose(sol.saved_states.v, expected, rtol=0, atol=1e-12)
    # At interval ends: `interval_states` (up to rounding: the second run's
    # intervals are split at the save times).
    ends = np.searchsorted(save, interval * np.arange(1, len(inputs) + 1))
    np.testing.assert_allclose(
        sol.saved_states.v[ends], sol.interval_states.v, rtol=0, atol=1e-13
    )


def at_own_spikes(sol, saved_v, save):
    """The saved voltage of each neuron at each of its own recorded spike times."""
    out = []
    spikes = np.asarray(sol.spike_times)
    for i in range(spikes.shape[0]):
        own = spikes[i][np.isfinite(spikes[i])]
        rows = np.searchsorted(save, own)
        np.testing.assert_array_equal(save[rows], own)
        out.append(np.asarray(saved_v)[rows, i])
    return np.concatenate(out)


def test_lif_at_spike_times_post_reset(lif_case):
    layer, inputs, interval, _ = lif_case
    end = interval * len(inputs)
    sol = layer.simulate(inputs, interval, max_spikes=32, save_times=padded([], end))
    spikes = np.asarray(sol.spike_times)
    save = padded(np.unique(spikes[np.isfinite(spikes)]), end)
    at = layer.simulate(inputs, interval, max_spikes=32, save_times=save)
    v = at_own_spikes(at, at.saved_states.v, save)
    assert len(v) >= 6
    # Right after the reset: v_reset = 0 (flowed for no time at all); just before
    # it the voltage is at the threshold, 1.
    np.testing.assert_allclose(v, 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_spike_times_from_another_program_save_after_the_reset(dtype):
    """Spike times taken from one run are save times of another, compiled apart,
    which may round a spike a few ulp later than the time given: the saved state
    is still the one after the reset, as for a spike a few ulp earlier (the state
    before it, at the threshold, came back under `jit` for times from an eager
    run). Checked with each spike time moved by 1 and 2 ulp either way, and with
    an eager run's times used under `jit`; 64 ulp before it (and 1e-3 ms in
    float32), the state is the one before the spike."""
    rng = np.random.default_rng(2)
    n, v_reset = 6, -0.25
    model = sj.ODELIFDynamics(tau_mem=rng.uniform(3, 30, n), v_reset=v_reset)
    layer = sj.SpikingODELayer(2, n, model, dtype=dtype, key=KEY)
    weight = jnp.asarray(rng.uniform(0.5, 2, (n, 2)), dtype)
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    x = rng.uniform(0.3, 1, (10, 2)).astype(dtype)
    lengths = jnp.asarray(rng.uniform(0.5, 3, 10), dtype)
    spikes = np.asarray(layer.simulate(x, lengths, 100).spike_times)
    times = np.sort(spikes[np.isfinite(spikes)])
    assert len(times) >= 30
    run = eqx.filter_jit(lambda s: layer.simulate(x, lengths, 100, save_times=s))
    atol = 1e-10 if dtype == jnp.float64 else 1e-3
    for shift in (0, 1, -1, 2, -2):
        save = times
        for _ in range(abs(shift)):
            save = np.nextafter(save, np.inf if shift > 0 else -np.inf)
        sol = run(jnp.asarray(save, dtype))
        own = np.asarray(sol.spike_times)
        v = np.asarray(sol.saved_states.v)
        for i in range(n):
            mine = own[i][np.isfinite(own[i])]
            # The save time nearest each of its spikes (this run's spike times
            # may differ from the eager run's by rounding).
            rows = np.abs(times[None, :] - mine[:, None]).argmin(axis=1)
            # After the reset, flowed for a few ulp of the time at most (a slope
            # below 40 / ms here): 1e-10 (float64) and 1e-3 (float32) from v_reset,
            # where the state before it is at the threshold, 1.25 away.
            np.testing.assert_allclose(v[rows, i], v_reset, rtol=0, atol=atol)
    # Further before a spike (64 ulp, and 1e-3 of a time unit in float32): the
    # state before it, below the threshold of 1 by about its slope times the gap.
    for gap in ("64 ulp", 1e-3):
        if gap == "64 ulp":
            save = times
            for _ in range(64):
                save = np.nextafter(save, -np.inf)
        elif dtype == jnp.float32:
            save = (times - gap).astype(np.float32)
        else:
            continue
        v = np.asarray(run(jnp.asarray(save, dtype)).saved_states.v)
        own = np.asarray(layer.simulate(x, lengths, 100).spike_times)
        for i in range(n):
            mine = own[i][np.isfinite(own[i])]
            rows = np.abs(times[None, :] - mine[:, None]).argmin(axis=1)
            assert np.all(v[rows, i] > 0.9), (gap, v[rows, i])
            assert np.all(v[rows, i] < 1.0), (gap, v[rows, i])


def test_refractory_lif_at_spike_times():
    dyn = sj.ODELIFDynamics(TAU, t_ref=2.0)
    layer = with_weight(sj.SpikingODELayer(1, 2, dyn, key=KEY), [[0.08], [0.2]])
    inputs = np.ones((3, 1))
    sol = layer.simulate(inputs, 10.0, max_spikes=16, save_times=padded([], 30.0))
    times = np.asarray(sol.spike_times[1])
    times = times[np.isfinite(times)]
    assert len(times) >= 3
    # At each spike, and halfway through the refractory period after it.
    times = times[times + 1.0 <= 30.0]
    save = padded(np.concatenate([times, times + 1.0]), 30.0)
    at = layer.simulate(inputs, 10.0, max_spikes=16, save_times=save)
    on, mid = np.searchsorted(save, times), np.searchsorted(save, times + 1.0)
    # The membrane is held at v_reset = 0 throughout; the refractory period starts
    # at the spike (2 ms left) and 1 ms is left halfway.
    np.testing.assert_allclose(at.saved_states.v[on, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(at.saved_states.refractory[on, 1], 2.0, atol=1e-12)
    np.testing.assert_allclose(at.saved_states.v[mid, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(at.saved_states.refractory[mid, 1], 1.0, atol=1e-12)


def cuba_rhs(tau_mem, tau_syn):
    def rhs(y, current):
        v, i = y
        return [-v / tau_mem + i, (current - i) / tau_syn]

    return rhs, lambda y: y[0] - 1.0, lambda y: np.array([0.0, y[1]])


ADEX = dict(
    C=281.0,
    g_L=30.0,
    E_L=-70.6,
    V_T=-50.4,
    Delta_T=2.0,
    tau_w=144.0,
    a=4.0,
    b=80.5,
    v_reset=-70.6,
    v_peak=-40.4,
)


def model_case(model):
    """A layer of two neurons, each driven by its own input (identity weights), over
    three intervals of held input: its settings, and the SciPy reference's."""
    if model == "cuba":
        dyn, rhs = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=4.0), cuba_rhs(10.0, 4.0)
        currents = np.array([[0.0, 0.16], [0.25, 0.05], [0.12, 0.3]])
        interval, y0, names = 10.0, [0.0, 0.0], ("v", "i_syn")
        kwargs = {}
    else:
        dyn, rhs = sj.AdExDynamics(), adex_rhs(ADEX)
        currents = np.array([[600.0, 1000.0], [900.0, 300.0], [1200.0, 800.0]])
        interval, y0, names = 40.0, [-70.6, 0.0], ("v", "w")
        kwargs = dict(
            solver=sj.Dopri5(),
            rtol=1e-11,
            atol=1e-11,
            dt_min=1e-6,
            dt_init=0.01,
            max_steps=20000,
        )
    n = currents.shape[1]
    layer = with_weight(sj.SpikingODELayer(n, n, dyn, key=KEY, **kwargs), np.eye(n))
    return layer, currents, interval, rhs, y0, names


@pytest.mark.parametrize("model", ["cuba", "adex"])
def test_against_scipy(model):
    layer, currents, interval, rhs, y0, names = model_case(model)
    n = currents.shape[1]
    # CubaLIF (exact flow): rounding, and the reference's rtol 1e-12. AdEx: the
    # second run restarts its steps at each save time; it and the reference carry
    # global errors of order rtol times the growth through the upswing to v_peak
    # (measured: 4e-10 relative).
    tol = 1e-9 if model == "cuba" else 1e-8
    duration = interval * len(currents)
    save = np.linspace(0.0, duration, NUM_SAVE)
    sol = layer.simulate(currents, interval, max_spikes=64, save_times=save)
    spikes = np.asarray(sol.spike_times)
    on_spikes = padded(np.unique(spikes[np.isfinite(spikes)]), duration)
    at = layer.simulate(currents, interval, max_spikes=64, save_times=on_spikes)
    v_reset = 0.0 if model == "cuba" else -70.6
    # At the spike times: just after the reset.
    v = at_own_spikes(at, at.saved_states.v, on_spikes)
    np.testing.assert_allclose(v, v_reset, atol=1e-9)
    for i in range(n):
        times, states = states_at_reference(*rhs, y0, currents[:, i], interval, save)
        assert len(times) == np.isfinite(spikes[i]).sum() > 0
        for j, name in enumerate(names):
            got = np.asarray(getattr(sol.saved_states, name))[:, i]
            scale = np.maximum(1.0, np.abs(states[:, j]))
            err = np.abs(got - states[:, j]) / scale
            np.testing.assert_array_less(err, tol)


# -- the event-driven engine -------------------------------------------------------


def reference_states(model, W, times, sources, save, W_rec=None, delay=0.0, **p):
    """The independent event simulator run up to each save time: its state at the
    end of `[0, t]` (a crossing at exactly `t` counts, so after the reset)."""
    out_v, out_i = [], []
    for t in save:
        keep = times <= t
        if t == 0:
            out_v.append(np.zeros(W.shape[0]))
            out_i.append(np.zeros(W.shape[0]))
            continue
        r = simulate_layer(
            W, times[keep], sources[keep], t, model, W_rec=W_rec, delay=delay, **p
        )
        out_v.append(r.final_v)
        out_i.append(r.final_i)
    return np.array(out_v), np.array(out_i)


@pytest.fixture(scope="module")
def spike_case():
    rng = np.random.default_rng(3)
    n_in, n, t_end = 5, 4, 30.0
    times = np.sort(rng.uniform(0.0, 25.0, 40))
    times[7] = times[6]  # two input spikes at one instant
    sources = rng.integers(0, n_in, 40)
    W = rng.uniform(-0.2, 0.9, (n, n_in))
    return n_in, n, t_end, times, sources, W


@pytest.mark.parametrize("model", ["lif", "cuba"])
@pytest.mark.parametrize("recurrent", [False, True])
def test_events_against_reference(spike_case, model, recurrent):
    n_in, n, t_end, times, sources, W = spike_case
    W_rec = np.random.default_rng(4).uniform(-0.3, 0.4, (n, n))
    if model == "cuba":
        W, W_rec = W * 0.1, W_rec * 0.1
        dyn = sj.CubaLIFDynamics(tau_mem=TAU, tau_syn=5.0)
    else:
        W = W * 0.3
        dyn = sj.ODELIFDynamics(TAU)
    layer = sj.SpikingODELayer(
        n_in, n, dyn, key=KEY, recurrent=recurrent, delay=0.7 if recurrent else 0.0
    )
    layer = with_weight(layer, W)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.asarray(W_rec))
    else:
        W_rec = None
    save = padded(np.concatenate([np.linspace(0.0, t_end, 31), times[:5]]), t_end)
    train = sj.SpikeTrain(jnp.asarray(times), jnp.asarray(sources))
    sol = layer.simulate(train, t_end=t_end, max_spikes=32, save_times=save)
    assert np.isfinite(sol.spike_times).sum() >= 4
    ref_v, ref_i = reference_states(
        model,
        W,
        times,
        sources,
        save,
        W_rec=W_rec,
        delay=0.7 if recurrent else 0.0,
        tau_mem=TAU,
        tau_syn=5.0,
    )
    # Both follow the exact flow from event to event: rounding, and spike times
    # that agree to ~1e-13 ms.
    np.testing.assert_allclose(sol.saved_states.v, ref_v, rtol=0, atol=1e-10)
    if model == "cuba":
        np.testing.assert_allclose(sol.saved_states.i_syn, ref_i, rtol=0, atol=1e-10)
    # The last save time is the end: the final state.
    np.testing.assert_allclose(sol.saved_states.v[-1], sol.final_state.v, atol=1e-12)
    # At each recorded spike time of a neuron: after its reset.
    spikes = np.asarray(sol.spike_times)
    on_spikes = padded(np.unique(spikes[np.isfinite(spikes)]), t_end)
    at = layer.simulate(train, t_end=t_end, max_spikes=32, save_times=on_spikes)
    np.testing.assert_allclose(
        at_own_spikes(at, at.saved_states.v, on_spikes), 0.0, atol=1e-12
    )


def test_recurrent_dense_inputs_closed_form(lif_case):
    # A recurrent layer runs dense inputs on the event engine too; with zero
    # recurrent weights it is the feed-forward LIF of the closed form.
    layer, inputs, interval, ref = lif_case
    rec = sj.SpikingODELayer(
        layer.n_inputs,
        layer.n_neurons,
        layer.dynamics,
        recurrent=True,
        delay=0.5,
        key=KEY,
    )
    rec = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        rec,
        (layer.weight, jnp.zeros_like(rec.recurrent_weight)),
    )
    save = np.linspace(0.0, interval * len(inputs), NUM_SAVE)
    sol = rec.simulate(inputs, interval, max_spikes=32, save_times=save)
    expected = np.stack(
        [lif_voltage_at(ref, inputs, layer.weight, interval, t) for t in save]
    )
    np.testing.assert_allclose(sol.saved_states.v, expected, rtol=0, atol=1e-11)


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "save, match",
    [
        ([1.0, np.nan], r"`save_times` must be finite .*nan"),
        ([-0.5, 1.0], r"`save_times` must be >= 0 .*-0.5"),
        ([1.0, 31.0], r"`save_times` must lie in \[0, 30.0\] .*31.0"),
        ([2.0, 1.0], r"ascending, got save_times\[0\] = 2.0 > save_times\[1\] = 1.0"),
        ([[1.0]], r"1-D array .*shape \(1, 1\)"),
    ],
)
def test_errors(lif_case, spike_case, save, match):
    layer, inputs, interval, _ = lif_case
    with pytest.raises(ValueError, match=match):
        layer.simulate(inputs, interval, save_times=np.asarray(save))
    n_in, n, t_end, times, sources, W = spike_case
    ev = sj.SpikingODELayer(n_in, n, key=KEY)
    train = sj.SpikeTrain(jnp.asarray(times), jnp.asarray(sources))
    with pytest.raises(ValueError, match=match):
        ev.simulate(train, t_end=t_end, save_times=np.asarray(save))


def test_save_times_32_bits_would_change_are_refused():
    # Without float64, `save_times` in int64 would wrap around (2**32 + 5 read as
    # 5 ms) and a float64 beyond float32 would be reported as inf.
    with jax.enable_x64(False):
        layer = sj.SpikingODELayer(1, 2, key=KEY)
        with pytest.raises(ValueError, match=r"`save_times` holds integers outside"):
            layer.simulate(np.ones((3, 1)), 10.0, save_times=np.array([2**32 + 5]))
        with pytest.raises(
            ValueError, match=r"`save_times` holds values beyond .*1e\+39"
        ):
            layer.simulate(np.ones((3, 1)), 10.0, save_times=np.array([1e39]))
    for bad in (["1.0"], [True, 2.0]):
        with pytest.raises(TypeError, match="`save_times` must be a real number"):
            layer.simulate(np.ones((3, 1)), 10.0, save_times=bad)
    with pytest.raises(TypeError, match="`save_times` must be ints or floats of at"):
        layer.simulate(np.ones((3, 1)), 10.0, save_times=[2**70])


def test_empty_save_times_on_every_engine():
    # Dense feed-forward, spike-train inputs, and a recurrent layer on dense inputs:
    # an empty state record, shaped (0, n), where the event engine failed inside.
    dense = sj.SpikingODELayer(2, 3, key=KEY)
    recurrent = sj.SpikingODELayer(2, 3, recurrent=True, delay=0.5, key=KEY)
    train = sj.SpikeTrain(jnp.array([1.0, 2.0]), jnp.array([0, 1]))
    runs = [
        dense.simulate(np.ones((3, 2)), 1.0, save_times=[]),
        dense.simulate(train, t_end=10.0, save_times=np.zeros((0,))),
        recurrent.simulate(np.ones((3, 2)), 1.0, save_times=[]),
    ]
    for sol in runs:
        assert sol.result == sj.RESULTS.successful
        assert sol.saved_states.v.shape == (0, 3)
        assert sol.save_times.shape == (0,)


def test_repeated_save_times_do_not_fail_a_run_that_succeeded():
    # A neuron that fires with no input (v_rest above threshold), held below
    # threshold by its input, on a budget of 5 steps per interval: the run
    # succeeds with no spike. Save times that make no piece of their own (an
    # interval end, 0, a repeat, the end) must not add a run that fires.
    layer = sj.SpikingODELayer(
        1, 1, sj.ODELIFDynamics(20.0, v_rest=2.0), max_steps=5, key=KEY
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[1.0]]))
    x = np.array([[-1.0], [-1.0]])
    base = layer.simulate(x, 200.0)
    assert base.result == sj.RESULTS.successful and int(base.num_spikes[0]) == 0
    # The closed form: from v_reset = 0 (the start of a neuron that rests above
    # threshold) towards v_rest + tau w x / C = 2 - 20 = -18.
    v = lambda t: -18.0 + (0.0 + 18.0) * np.exp(-t / 20.0)
    for save in ([200.0], [0.0], [100.0, 100.0], [400.0], [0.0, 200.0, 400.0]):
        sol = layer.simulate(x, 200.0, save_times=save)
        assert sol.result == sj.RESULTS.successful, save
        np.testing.assert_allclose(
            sol.saved_states.v[:, 0], v(np.asarray(save)), rtol=0, atol=1e-12
        )


def test_zero_delay_recurrent_error():
    layer = sj.SpikingODELayer(2, 3, recurrent=True, key=KEY)
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    with pytest.raises(ValueError, match=r"needs `delay > 0`"):
        layer.simulate(train, t_end=5.0, save_times=jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"needs `delay > 0`"):
        layer.simulate(np.ones((2, 2)), 1.0, save_times=jnp.array([1.0]))


def test_traced_invalid_save_times(lif_case):
    layer, inputs, interval, _ = lif_case

    @eqx.filter_jit
    def run(save, throw):
        return layer.simulate(inputs, interval, save_times=save, throw=throw)

    for bad in ([1.0, 40.0], [3.0, 2.0], [-1.0, 2.0], [np.nan, 2.0]):
        sol = run(jnp.asarray(bad), False)
        assert sol.result == sj.RESULTS.invalid_save_times
        with pytest.raises(Exception, match="`save_times` is invalid"):
            run(jnp.asarray(bad), True)
    assert run(jnp.asarray([1.0, 30.0]), False).result == sj.RESULTS.successful


# -- gradients, jit, vmap ----------------------------------------------------------


def central_difference(f, x, eps):
    x = np.asarray(x, float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        out[idx] = (f(x + step) - f(x - step)) / (2 * eps)
    return out


@pytest.mark.parametrize("case", ["lif", "adex", "events"])
def test_gradient_against_finite_differences(lif_case, spike_case, case):
    if case == "lif":
        layer, inputs, interval, _ = lif_case
        save = jnp.linspace(1.0, 29.0, NUM_SAVE)

        def loss(w):
            sol = with_weight(layer, w).simulate(
                inputs, interval, max_spikes=32, save_times=save
            )
            return jnp.sum(sol.saved_states.v * jnp.arange(1, NUM_SAVE + 1)[:, None])

        w0, eps, tol = layer.weight, 1e-6, 1e-6
    elif case == "adex":
        layer, inputs, interval, *_ = model_case("adex")
        grid = np.linspace(0.0, 120.0, NUM_SAVE)
        sol = layer.simulate(inputs, interval, max_spikes=64, save_times=grid)
        spikes = np.asarray(sol.spike_times)
        spikes = spikes[np.isfinite(spikes)]
        # Away from the upswings, where v(t) moves by tens of mV per ms and a
        # finite difference would step across a spike.
        far = np.min(np.abs(grid[:, None] - spikes[None]), axis=1) > 1.0
        save = jnp.asarray(padded(grid[far], grid[far][-1]))

        def loss(w):
            sol = with_weight(layer, w).simulate(
                inputs, interval, max_spikes=64, save_times=save
            )
            return jnp.sum(sol.saved_states.v) + jnp.sum(sol.saved_states.w)

        # The weights scale currents of ~1000 pA: a step of 1e-5 (0.01 pA) keeps
        # the truncation error (~eps^2) and the solver's noise (~rtol |v| / eps)
        # below 1e-6 relative.
        w0, eps, tol = layer.weight, 1e-5, 1e-5
    else:
        n_in, n, t_end, times, sources, W = spike_case
        layer = with_weight(
            sj.SpikingODELayer(n_in, n, sj.CubaLIFDynamics(tau_mem=TAU), key=KEY),
            W * 0.1,
        )
        train = sj.SpikeTrain(jnp.asarray(times), jnp.asarray(sources))
        save = jnp.linspace(2.0, 30.0, NUM_SAVE)

        def loss(w):
            sol = with_weight(layer, w).simulate(
                train, t_end=t_end, max_spikes=32, save_times=save
            )
            return jnp.sum(sol.saved_states.v * jnp.arange(1, NUM_SAVE + 1)[:, None])

        w0, eps, tol = layer.weight, 1e-6, 1e-6
    # One compiled gradient: eager, it compiles the forward and backward passes of
    # the jitted run one by one (AdEx: 17 -> 13 s). The differences reuse the
    # run compiled for the forward values.
    grad = jax.jit(jax.grad(loss))(jnp.asarray(w0))
    fd = central_difference(lambda w: float(loss(jnp.asarray(w))), w0, eps)
    assert np.abs(fd).max() > 0.1
    np.testing.assert_allclose(grad, fd, rtol=tol, atol=tol * np.abs(fd).max())


def test_gradient_in_save_times(lif_case):
    """The derivative of the saved state in its save time, against the closed
    form's slope `(v_inf - v) / tau`: inside intervals, at interval ends (from the
    right, where the next interval's current holds), at 0, at the end of the run
    (from the left), and at repeated save times (each its own)."""
    layer, inputs, interval, ref = lif_case
    weight = np.asarray(layer.weight)
    num_intervals = inputs.shape[0]
    duration = interval * num_intervals
    chosen = [0.0, 2.5, interval, interval, 7.3, 7.3, 2 * interval, 17.9, duration]
    spikes = np.concatenate([np.asarray(row, float) for row in ref.spike_times])
    assert np.min(np.abs(np.subtract.outer(chosen, spikes))) > 1e-3
    save = padded(chosen, duration)  # the end, repeated
    scale = jnp.arange(1.0, NUM_SAVE + 1)

    def loss(s):
        sol = layer.simulate(inputs, interval, max_spikes=32, save_times=s)
        return jnp.sum(sol.saved_states.v * scale[:, None])

    grad = jax.jit(jax.grad(loss))(jnp.asarray(save))
    currents = inputs @ weight.T
    slopes = []
    for t in save:
        k = min(int(np.floor(t / interval)), num_intervals - 1)
        v = lif_voltage_at(ref, inputs, weight, interval, t)
        slopes.append(np.sum((currents[k] * TAU - v) / TAU))
    expected = np.asarray(slopes) * np.asarray(scale)
    assert np.all(np.abs(expected) > 1e-3)
    np.testing.assert_allclose(grad, expected, rtol=1e-9)


def test_jit_and_vmap(lif_case, spike_case):
    layer, inputs, interval, _ = lif_case
    save = jnp.linspace(0.0, 30.0, NUM_SAVE)
    # Under jit: a batch of inputs, and a batch of save times, against one
    # (eager) run each.
    batch = np.stack([inputs, inputs[::-1], 0.5 * inputs])
    saves = jnp.stack([save, save * 0.5, save * 0.25])
    run = eqx.filter_jit(
        jax.vmap(lambda x, s: layer.simulate(x, interval, max_spikes=32, save_times=s))
    )
    batched = run(batch, saves)
    for b in range(3):
        one = layer.simulate(batch[b], interval, max_spikes=32, save_times=saves[b])
        np.testing.assert_allclose(
            batched.saved_states.v[b], one.saved_states.v, atol=1e-12
        )
    n_in, n, t_end, times, sources, W = spike_case
    ev = with_weight(sj.SpikingODELayer(n_in, n, key=KEY), W * 0.3)
    trains = sj.SpikeTrain(
        jnp.stack([times, times * 0.9]), jnp.stack([sources, sources[::-1]])
    )
    ev_run = eqx.filter_jit(
        jax.vmap(
            lambda tr: ev.simulate(tr, t_end=t_end, max_spikes=32, save_times=save)
        )
    )(trains)
    for b in range(2):
        tr = sj.SpikeTrain(trains.times[b], trains.sources[b])
        one = ev.simulate(tr, t_end=t_end, max_spikes=32, save_times=save)
        np.testing.assert_allclose(
            ev_run.saved_states.v[b], one.saved_states.v, atol=1e-12
        )


def _cuba_unit_response(t, tau_mem, tau_syn):
    """CubaLIF from rest on a unit drive held from 0 (v' = -v / tau_mem + i,
    i = 1 - exp(-t / tau_syn)): v(t) = tau_mem + c exp(-t / tau_syn) - (tau_mem + c)
    exp(-t / tau_mem), c = tau_mem tau_syn / (tau_mem - tau_syn)."""
    c = tau_mem * tau_syn / (tau_mem - tau_syn)
    return tau_mem + c * np.exp(-t / tau_syn) - (tau_mem + c) * np.exp(-t / tau_mem)


@pytest.mark.parametrize("model", ["lif", "lif_refractory", "cuba"])
def test_gradient_at_own_spike_times(model):
    """Each neuron saved at its own first spike time, from rest on a drive `w` held
    from 0: the state right after the reset at t*, so with f the vector field there
    d/ds = f(reset) and d/dw = -f(reset) dt*/dw, the latter from the implicit
    function theorem on a closed form v(t) = w k(t): dt*/dw = -k(t*) / (w k'(t*)).
    (The pieces of the run end on those crossings, which rounding places on either
    side of the save time: some neurons here land on each.) With a refractory
    period the time left, t_ref - (s - t*), is what moves: -1 and dt*/dw."""
    tau_syn = 5.0
    ws = np.array([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55])
    if model == "cuba":
        dyn = sj.CubaLIFDynamics(tau_mem=TAU, tau_syn=tau_syn)
        ws = ws / 2

        def k(t):
            return _cuba_unit_response(t, TAU, tau_syn)

        def slope(t, w):  # dv/dt before the spike, per unit w
            return -k(t) / TAU + (1 - np.exp(-t / tau_syn))

        def field_after(t, w):  # dv/dt after the reset (v = 0): the current
            return w * (1 - np.exp(-t / tau_syn))
    else:
        dyn = sj.ODELIFDynamics(TAU, t_ref=2.0 if model == "lif_refractory" else None)
        ws = np.linspace(0.06, 0.16, len(ws))  # v_inf = 20 w from 1.2 to 3.2

        def k(t):
            return TAU * (1 - np.exp(-t / TAU))

        def slope(t, w):
            return np.exp(-t / TAU)

        def field_after(t, w):
            return w

    ws = ws[::-1]  # (spike times, and so save times, ascending)
    layer = with_weight(sj.SpikingODELayer(1, len(ws), dyn, key=KEY), ws[:, None])
    x, interval = np.ones((4, 1)), 10.0
    first = np.asarray(layer.simulate(x, interval, max_spikes=8).spike_times[:, 0])
    assert np.all(np.isfinite(first)) and first.max() < 4 * interval
    for t, w in zip(first, ws):  # the closed form's crossing
        np.testing.assert_allclose(w * k(t), 1.0, rtol=1e-12)

    def own(save, weight):
        sol = with_weight(layer, weight).simulate(
            x, interval, max_spikes=8, save_times=save
        )
        leaf = (
            sol.saved_states.refractory
            if model == "lif_refractory"
            else (sol.saved_states.v)
        )
        return jnp.diagonal(leaf)

    @jax.jit
    def with_jacobian(save, weight):
        return own(save, weight), jax.jacrev(own, (0, 1))(save, weight)

    # (The save times come from another run, as they would in use: equal to the
    # spike times of this one up to rounding.)
    value, (d_save, d_weight) = with_jacobian(jnp.asarray(first), ws[:, None])
    d_save = np.diagonal(np.asarray(d_save))
    d_weight = np.asarray(d_weight)[np.arange(len(ws)), np.arange(len(ws)), 0]
    dt_dw = -k(first) / (ws * slope(first, ws))
    if model == "lif_refractory":
        np.testing.assert_allclose(np.asarray(value), 2.0, rtol=1e-12)
        np.testing.assert_allclose(d_save, -1.0, rtol=1e-12)
        np.testing.assert_allclose(d_weight, dt_dw, rtol=1e-9)
    else:
        np.testing.assert_allclose(np.asarray(value), 0.0, atol=1e-14)
        f = field_after(first, ws)
        np.testing.assert_allclose(d_save, f, rtol=1e-9)
        np.testing.assert_allclose(d_weight, -f * dt_dw, rtol=1e-9)


@pytest.mark.parametrize(
    "dtype, t_in, delay, rounds",
    [
        (jnp.float64, 5.0, 1e-20, True),
        (jnp.float32, 100.0, 2e-6, True),  # float32 spacing at 100: 7.6e-6
        (jnp.float32, 100.0, 1e-4, False),
    ],
)
def test_delay_that_rounds_away_is_reported(dtype, t_in, delay, rounds):
    # Neuron 0 fires on the input; its delivery fires neurons 1 and 2, whose
    # deliveries excite 0 again (0.4, below threshold). A delay that rounds away at
    # the spike time (t + delay == t) cascades as with zero delay: the replay of
    # the saved states cannot follow it (it gave v = 0 for neuron 0 at t_end, where
    # the run ends at 0.4 decayed), so it is reported, and raised by default.
    layer = sj.SpikingODELayer(
        1, 3, sj.ODELIFDynamics(tau_mem=10.0), recurrent=True, delay=delay,
        dtype=dtype, key=KEY,
    )  # fmt: skip
    w_rec = jnp.array([[0, 0.4, 0], [1.2, 0, 0], [0.5, 0.6, 0]], dtype)
    layer = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        layer,
        (jnp.array([[1.5], [0.0], [0.0]], dtype), w_rec),
    )
    train = sj.SpikeTrain(jnp.array([t_in], dtype), jnp.array([0]))
    t_end = t_in + 3.0
    save = jnp.array([t_in + 1.0, t_end], dtype)
    sol = layer.simulate(train, t_end=t_end, max_spikes=4, save_times=save, throw=False)
    np.testing.assert_array_equal(np.asarray(sol.num_spikes), [1, 1, 1])
    assert float(sol.final_state.v[0]) > 0.25  # 0.4 e^{-3/10} (or just under)
    if rounds:
        assert sol.result == sj.RESULTS.delay_below_resolution
        with pytest.raises(Exception, match="delay_below_resolution|rounded to that"):
            layer.simulate(train, t_end=t_end, max_spikes=4, save_times=save)
        # Save times before the spike replay nothing that cascaded: no report.
        early = layer.simulate(
            train, t_end=t_end, max_spikes=4, save_times=jnp.array([t_in / 2], dtype)
        )
        assert early.result == sj.RESULTS.successful
    else:
        assert sol.result == sj.RESULTS.successful
        tol = 1e-6 if dtype == jnp.float32 else 1e-12
        np.testing.assert_allclose(
            np.asarray(sol.saved_states.v[-1]), np.asarray(sol.final_state.v), atol=tol
        )
