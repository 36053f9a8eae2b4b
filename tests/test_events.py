"""The event-driven engine beyond the network reference tests: agreement with the
interval engine on dense inputs, the readout's exact maximum, the instant rule's
corner cases, budgets, and argument errors."""

import functools
from decimal import Decimal
from fractions import Fraction

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .lif_reference import lif_reference

_KEY = jax.random.key(3)


def _train(times, sources):
    return sj.SpikeTrain(jnp.asarray(times, jnp.float64), jnp.asarray(sources))


def _layer(n_in, n, dyn, weight, **kwargs):
    layer = sj.SpikingODELayer(n_in, n, dyn, key=_KEY, dtype=jnp.float64, **kwargs)
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, jnp.float64))


# -- dense inputs through the event engine ---------------------------------------


@pytest.mark.parametrize(
    "dyn",
    [sj.ODELIFDynamics(tau_mem=12.0, v_rest=-0.1), sj.CubaLIFDynamics(8.0, 3.0)],
    ids=["lif", "cuba"],
)
@pytest.mark.parametrize("engine", ["global", "per-neuron"])
def test_recurrent_layer_without_recurrent_weights_matches_interval_engine(dyn, engine):
    """A recurrent layer runs dense inputs on the event engine (held currents as
    events); with zero recurrent weights it must give the feed-forward layer's
    spikes, which come from the interval engine (closed-form walk / exact-flow
    steps): two independent implementations."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)) * 1.5
    x = np.abs(rng.normal(size=(12, 3))) * 2 + 0.3
    ff = _layer(3, 5, dyn, w)
    rec = _layer(3, 5, dyn, w, recurrent=True, delay=0.0)
    rec = eqx.tree_at(lambda m: m.recurrent_weight, rec, jnp.zeros((5, 5)))
    a = ff.simulate(x, 0.7, max_spikes=64)
    if engine == "global":
        b = rec.simulate(x, 0.7, max_spikes=64)
    else:
        # No recurrent weights at all: the engine with one clock per neuron, its
        # held currents started at the interval boundaries.
        b = sj.integrate_events(
            dyn, ff.weight, ff.init_state(), inputs=x, interval=0.7, max_spikes=64
        )
        assert b.result == sj.RESULTS.successful
    assert int(jnp.sum(a.counts)) > 10
    np.testing.assert_array_equal(np.asarray(a.counts), np.asarray(b.counts))
    fin = np.isfinite(np.asarray(a.spike_times))
    np.testing.assert_array_equal(fin, np.isfinite(np.asarray(b.spike_times)))
    diff = np.asarray(a.spike_times)[fin] - np.asarray(b.spike_times)[fin]
    assert np.max(np.abs(diff)) <= 1e-11
    for got, want in zip(
        jax.tree.leaves(b.final_state), jax.tree.leaves(a.final_state)
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-11)


def test_dense_recurrent_lif_against_closed_form_with_delay_beyond_the_run():
    """With a delay longer than the run no recurrent spike arrives: the LIF's
    closed-form reference (a separate NumPy implementation) must hold."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 2)) * 2
    x = np.abs(rng.normal(size=(6, 2))) * 2
    rec = _layer(2, 4, sj.ODELIFDynamics(tau_mem=10.0), w, recurrent=True, delay=1e3)
    sol = rec.simulate(x, 1.5, max_spikes=32)
    ref = lif_reference(w, x, 1.5, tau_mem=10.0)
    assert ref.counts.sum() > 5
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    for i, times in enumerate(ref.spike_times):
        got = np.asarray(sol.spike_times[i])
        np.testing.assert_allclose(got[np.isfinite(got)], times, atol=1e-11)


# -- the instant rule --------------------------------------------------------------


def test_supra_threshold_jump_fires_at_the_input_time_and_is_not_clipped():
    layer = _layer(1, 2, sj.ODELIFDynamics(tau_mem=10.0), [[2.5], [0.4]])
    sol = layer.simulate(_train([3.25, jnp.inf], [0, 0]), t_end=10.0, max_spikes=4)
    assert float(sol.spike_times[0, 0]) == 3.25
    assert int(sol.num_spikes[0]) == 1 and int(sol.num_spikes[1]) == 0
    # Reset to v_reset = 0, then decays toward rest (0): stays at 0.
    assert float(sol.final_state.v[0]) == 0.0


def test_simultaneous_jumps_are_summed_before_the_threshold_check():
    """Two inputs at the same instant: 0.6 + 0.6 fires although neither alone does;
    +1.5 and -1.0 at the same instant do not fire although +1.5 alone would."""
    dyn = sj.ODELIFDynamics(tau_mem=10.0)
    layer = _layer(2, 2, dyn, [[0.6, 0.6], [1.5, -1.0]])
    sol = layer.simulate(_train([2.0, 2.0], [1, 0]), t_end=5.0, max_spikes=4)
    assert float(sol.spike_times[0, 0]) == 2.0
    assert int(sol.num_spikes[1]) == 0
    np.testing.assert_allclose(float(sol.final_state.v[1]), 0.5 * np.exp(-0.3))


def test_zero_delay_cascade_fires_at_the_same_instant():
    """Neuron 0 is driven over threshold at t = 1; with zero delay its recurrent
    weight lifts neuron 1 over threshold at that instant, which lifts neuron 2."""
    dyn = sj.ODELIFDynamics(tau_mem=10.0)
    layer = _layer(1, 3, dyn, [[1.2], [0.5], [0.0]], recurrent=True)
    w_rec = jnp.array([[0.0, 0.0, 0.0], [0.7, 0.0, 0.0], [0.0, 1.1, 0.0]])
    layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, w_rec)
    sol = layer.simulate(_train([1.0], [0]), t_end=3.0, max_spikes=4)
    np.testing.assert_array_equal(np.asarray(sol.num_spikes), [1, 1, 1])
    np.testing.assert_array_equal(np.asarray(sol.spike_times[:, 0]), [1.0, 1.0, 1.0])
    # With a delay each link of the chain takes `delay`.
    delayed = _layer(1, 3, dyn, layer.weight, recurrent=True, delay=0.25)
    delayed = eqx.tree_at(lambda m: m.recurrent_weight, delayed, w_rec)
    sol = delayed.simulate(_train([1.0], [0]), t_end=3.0, max_spikes=4)
    np.testing.assert_allclose(np.asarray(sol.spike_times[:, 0]), [1.0, 1.25, 1.5])
    # Neuron 1 decayed from 0.5 for 0.25 ms before the 0.7 arrived: still fires.


def test_runaway_zero_delay_loop_is_reported_not_hung():
    """A self-connection above threshold re-fires the neuron at one instant without
    end: the run stops at a full buffer (or the event budget) and says so."""
    layer = _layer(1, 1, sj.ODELIFDynamics(), [[1.5]], recurrent=True)
    layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.array([[1.5]]))
    train = _train([1.0], [0])
    sol = layer.simulate(train, t_end=2.0, max_spikes=5, throw=False)
    assert sol.result == sj.RESULTS.spike_buffer_full
    np.testing.assert_array_equal(np.asarray(sol.spike_times[0]), [1.0] * 5)
    sol = layer.simulate(train, t_end=2.0, max_spikes=50, max_events=20, throw=False)
    assert sol.result == sj.RESULTS.max_events_reached
    with pytest.raises(Exception, match="max_events"):
        layer.simulate(train, t_end=2.0, max_spikes=50, max_events=20)


def test_feedforward_default_budget_is_tight_and_only_a_full_buffer_exhausts_it():
    """Without recurrence the default event budget counts one iteration per input
    event and one per round of crossings between two events, at most
    `min(n, stretches) * max_spikes` rounds. Three neurons each fire `m` times in a
    stretch of their own: a buffer of `m` must run to the end inside the default
    budget, using nearly all of it (the bound is tight); a buffer of `m - 1`
    stops on the buffer, not on the budget."""
    dyn = sj.CubaLIFDynamics(tau_mem=8.0, tau_syn=3.0)
    layer = _layer(3, 3, dyn, 4.0 * np.eye(3))
    train = _train([1.0, 30.0, 60.0], [0, 1, 2])
    wide = layer.simulate(train, t_end=90.0, max_spikes=64)
    m = int(wide.num_spikes[0])
    assert m >= 5
    np.testing.assert_array_equal(np.asarray(wide.num_spikes), [m, m, m])
    # Each neuron's spikes lie in its own stretch.
    times = np.asarray(wide.spike_times)
    assert times[0, m - 1] < 30.0 and 30.0 < times[1, 0] and times[1, m - 1] < 60.0
    sol = layer.simulate(train, t_end=90.0, max_spikes=m)
    assert sol.result == sj.RESULTS.successful
    np.testing.assert_array_equal(np.asarray(sol.spike_times), times[:, :m])
    budget = int(sol.stats["max_events"])
    used = int(sol.stats["num_events"])
    assert used <= budget
    assert used >= 3 * m + 3  # three rounds of m, plus the three input events
    assert budget - used <= 5, (budget, used)
    short = layer.simulate(train, t_end=90.0, max_spikes=m - 1, throw=False)
    assert short.result == sj.RESULTS.spike_buffer_full


def _cuba_single_crossing(tm, ts, w):
    """When a CubaLIF at rest (threshold 1) driven by one input spike of weight `w`
    at time 0 first crosses threshold: the root of its closed form
    `v(t) = w tm ts / (tm - ts) (exp(-t / tm) - exp(-t / ts))` before its peak,
    by bisection in NumPy."""

    def v(t):
        return w * tm * ts / (tm - ts) * (np.exp(-t / tm) - np.exp(-t / ts))

    peak = tm * ts / (tm - ts) * np.log(tm / ts)
    assert v(peak) > 1.1
    lo, hi = 0.0, peak
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if v(mid) < 1.0 else (lo, mid)
    return hi


def test_crossing_between_events_and_at_the_end():
    """A CubaLIF driven by one input spike crosses threshold later, by its flow; a
    crossing is located to the closed form's root (found here by bisection in
    NumPy), and a run that ends before it has no spike."""
    tm, ts, w = 10.0, 5.0, 0.5
    layer = _layer(1, 1, sj.CubaLIFDynamics(tau_mem=tm, tau_syn=ts), [[w]])

    # The peak of v: at t = ln(tm/ts) tm ts / (tm - ts), v = 1.25 > threshold.
    hi = _cuba_single_crossing(tm, ts, w)

    def run(t_end):  # (both durations share one compiled run)
        return layer.simulate(_train([2.0], [0]), t_end=t_end, max_spikes=4)

    sol = run(30.0)
    assert int(sol.num_spikes[0]) >= 1
    np.testing.assert_allclose(float(sol.spike_times[0, 0]), 2.0 + hi, atol=1e-12)
    early = run(2.0 + 0.5 * hi)
    assert int(early.num_spikes[0]) == 0


# -- input order -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 17, 511, 1600, 5000])
def test_time_order_is_a_stable_argsort(n):
    """The input spikes are put in time order by sorting only a prefix that holds
    the spikes (padding `+inf` after them): the order must be `argsort`'s, stable
    among tied times, for every fill level of a batch and unbatched (arrays of 512
    entries and more; shorter ones are sorted whole). The fill levels take every
    prefix: at 1600 entries 64, 256, 1024 and the whole array, at 5000 also 4096."""
    from snode_jax._misc import time_order

    rng = np.random.default_rng(n)
    batched = jax.jit(jax.vmap(time_order))  # one compilation per length
    single = jax.jit(time_order)
    for fill in (0.0, 0.02, 0.1, 0.3, 1.0):
        t = rng.integers(-3, 10, (6, n)).astype(np.float32)  # many ties
        t[rng.random((6, n)) < 0.05] = -np.inf
        t[rng.random((6, n)) >= fill] = np.inf
        t[0] = np.inf  # one run of the batch with no spike at all
        want = np.argsort(t, axis=-1, kind="stable")
        got = batched(jnp.asarray(t))
        np.testing.assert_array_equal(np.asarray(got), want)
        for row in (1, 5):
            got = single(jnp.asarray(t[row]))
            np.testing.assert_array_equal(np.asarray(got), want[row])
    # An empty batch runs (no prefix to choose).
    assert jax.vmap(time_order)(jnp.zeros((0, n))).shape == (0, n)


def test_time_order_under_vmap_stays_a_branch():
    """Under `vmap` the prefix is chosen once for the batch: the sorts stay in the
    branches of a `cond`, not a select that runs all of them."""
    from snode_jax._misc import time_order

    jaxpr = jax.make_jaxpr(jax.vmap(time_order))(jnp.zeros((4, 600))).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1
    assert not any(e.primitive.name == "sort" for e in jaxpr.eqns)
    assert len(conds[0].params["branches"]) == 3  # prefixes 64, 256 and 600


def test_padding_does_not_change_a_run_or_its_gradient():
    """The same spikes with 3000 `+inf` entries interleaved (the shape of a spike
    train recorded by a large layer) give bitwise the same spike times and the
    same input-time gradient, in a batch where the runs hold different numbers of
    spikes; the times also match the closed form of a single input spike."""
    tm, ts, w = 10.0, 5.0, 0.5
    layer = _layer(2, 1, sj.CubaLIFDynamics(tau_mem=tm, tau_syn=ts), [[w, w]])
    times = np.array([[2.0, 9.0, 2.0], [4.0, np.inf, np.inf]])
    sources = np.array([[0, 1, 1], [1, 0, 0]])
    pad = 3000
    padded_times = np.full((2, pad + 3), np.inf)
    padded_sources = np.zeros((2, pad + 3), int)
    slots = np.array([100, 1700, 2999])  # spread through the padding
    padded_times[:, slots] = times
    padded_sources[:, slots] = sources

    def first_times(t, src):
        def one(t, src):
            sol = layer.simulate(sj.SpikeTrain(t, src), t_end=40.0, max_spikes=32)
            return sol.spike_times[0]

        return jax.vmap(one)(t, src)

    def loss(t, src):
        s = first_times(t, src)
        return jnp.sum(jnp.where(jnp.isfinite(s), s, 0.0)), s

    # The spike times as the value's aux: one compilation per shape.
    grad = jax.jit(jax.grad(loss, has_aux=True))
    ga, a = grad(jnp.asarray(times), jnp.asarray(sources))
    gb, b = grad(jnp.asarray(padded_times), jnp.asarray(padded_sources))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.isfinite(float(a[1, 0]))
    ga, gb = np.asarray(ga), np.asarray(gb)
    np.testing.assert_array_equal(gb[:, slots], ga)
    assert not np.any(gb[:, np.setdiff1d(np.arange(pad + 3), slots)])
    # Run 1 has one input spike at 4 ms: its first spike comes 4 ms after the
    # single-spike crossing of the closed form (located by bisection).
    hi = _cuba_single_crossing(tm, ts, w)
    np.testing.assert_allclose(float(a[1, 0]), 4.0 + hi, atol=1e-12)
    # Moving that input spike moves the output spike with it.
    np.testing.assert_allclose(ga[1, 0], 1.0, atol=1e-9)


# -- readout -----------------------------------------------------------------------


def test_readout_max_voltage_is_exact_and_differentiable():
    rng = np.random.default_rng(2)
    n_in, n_out, t_end = 4, 3, 40.0
    times = rng.uniform(0, 30, size=10)
    sources = rng.integers(0, n_in, size=10)
    train = _train(np.append(times, np.inf), np.append(sources, 0))
    tm, ts = 15.0, 4.0
    ro = sj.LeakyReadout(
        n_in, n_out, sj.CubaLIFDynamics(tm, ts), key=_KEY, dtype=jnp.float64
    )

    # One compilation for the run, its gradient and the finite differences.
    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(ro):
        sol = ro.simulate(train, t_end=t_end)
        return jnp.sum(sol.max_voltage**2), sol

    (_, sol), g = loss(ro)
    # Brute force: the closed form on a fine grid, each input a two-exponential
    # kernel (superposition holds: the readout never resets).
    # The voltage has kinks at the input times (the synaptic current jumps), where
    # a maximum may sit: they are on the grid too.
    grid = np.sort(np.concatenate([np.linspace(0, t_end, 400001), times]))
    w = np.asarray(ro.weight)
    v = np.zeros((n_out, grid.size))
    for s, k in zip(times, sources):
        dt = np.clip(grid - s, 0, None)
        kern = tm * ts / (tm - ts) * (np.exp(-dt / tm) - np.exp(-dt / ts))
        v += w[:, k : k + 1] * kern
    # Elsewhere the grid maximum is below the exact one by at most
    # max|v''| dt^2 / 8 < 1e-9.
    got = np.asarray(sol.max_voltage)
    assert np.all(got >= v.max(axis=1) - 1e-12)
    np.testing.assert_allclose(got, v.max(axis=1), atol=1e-8)
    np.testing.assert_allclose(
        np.asarray(sol.max_time), grid[v.argmax(axis=1)], atol=2e-3
    )

    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 3)]:

        def f(d, i=i, j=j):
            m = eqx.tree_at(lambda r: r.weight, ro, ro.weight.at[i, j].add(d))
            return loss(m)[0][0]

        fd = (f(eps) - f(-eps)) / (2 * eps)
        np.testing.assert_allclose(float(g.weight[i, j]), float(fd), rtol=1e-6)


def test_network_with_readout_and_first_spike_times():
    rng = np.random.default_rng(4)
    l1 = _layer(2, 6, sj.ODELIFDynamics(tau_mem=10.0), rng.uniform(0.3, 0.8, (6, 2)))
    ro = sj.LeakyReadout(6, 2, key=_KEY, dtype=jnp.float64)
    net = sj.SpikingODENetwork([l1, ro])
    train = _train([1.0, 1.5, 2.0, 4.0], [0, 1, 0, 1])
    nsol = net.simulate(train, t_end=20.0, max_spikes=8)
    direct = l1.simulate(train, t_end=20.0, max_spikes=8)
    np.testing.assert_array_equal(
        np.asarray(nsol.layers[0].spike_times), np.asarray(direct.spike_times)
    )
    first = sj.first_spike_times(direct)
    np.testing.assert_array_equal(
        np.asarray(first), np.asarray(direct.spike_times[:, 0])
    )
    assert np.any(np.isfinite(np.asarray(first)))
    out = ro.simulate(direct.spike_train(), t_end=20.0)
    np.testing.assert_array_equal(
        np.asarray(nsol.output.max_voltage), np.asarray(out.max_voltage)
    )


# -- errors --------------------------------------------------------------------------


def test_argument_errors():
    lif = sj.ODELIFDynamics()
    layer = _layer(2, 3, lif, np.ones((3, 2)))
    train = _train([1.0, jnp.inf], [0, 5])
    with pytest.raises(ValueError, match=r"`t_end`"):
        layer.simulate(train, max_spikes=4)
    with pytest.raises(ValueError, match=r"`interval`"):
        layer.simulate(train, 1.0, t_end=5.0)
    with pytest.raises(ValueError, match=r"`t_end` must be finite and > 0"):
        layer.simulate(train, t_end=-1.0)
    with pytest.raises(ValueError, match=r"<= t_end = 0.5"):
        layer.simulate(train, t_end=0.5)
    with pytest.raises(
        ValueError, match=r"`sources` must be input indices in \[0, 2\)"
    ):
        layer.simulate(_train([1.0], [2]), t_end=5.0)
    with pytest.raises(ValueError, match="`times` must be >= 0"):
        sj.SpikeTrain(jnp.array([1.0, -0.5]), jnp.array([0, 0]))
    with pytest.raises(ValueError, match="`times` must be >= 0"):
        sj.SpikeTrain(jnp.array([jnp.nan]), jnp.array([0]))
    with pytest.raises(TypeError, match="`sources` must be integers"):
        sj.SpikeTrain(jnp.array([1.0]), jnp.array([0.0]))
    with pytest.raises(ValueError, match="same shape"):
        sj.SpikeTrain(jnp.array([1.0, 2.0]), jnp.array([0]))
    with pytest.raises(ValueError, match="jax.vmap"):
        layer.simulate(_train([[1.0]], [[0]]), t_end=5.0)
    with pytest.raises(ValueError, match=r"`max_events` must be at most 2147483647"):
        layer.simulate(train, t_end=5.0, max_events=2**31)
    with pytest.raises(ValueError, match=r"`max_events` must be at most 2147483647"):
        sj.integrate_events(
            lif,
            jnp.ones((3, 2)),
            layer.init_state(),
            spikes=train,
            t_end=5.0,
            max_events=2**31,
        )
    with pytest.raises(ValueError, match="`max_spikes` must be >= 1"):
        layer.simulate(_train([1.0], [0]), t_end=5.0, max_spikes=0)
    with pytest.raises(ValueError, match="`max_spikes` must be >= 1, got 0"):
        sj.integrate_events(
            layer.dynamics,
            layer.weight,
            layer.init_state(),
            spikes=_train([1.0], [0]),
            t_end=5.0,
            max_spikes=0,
        )
    with pytest.raises(ValueError, match="`t_end` .* applies to event-driven"):
        layer.simulate(np.ones((2, 2)), 1.0, t_end=3.0)
    with pytest.raises(TypeError, match="use `simulate`"):
        layer.forward(_train([1.0], [0]), 1.0)
    with pytest.raises(ValueError, match="exact flow"):
        sj.SpikingODELayer(2, 3, sj.AdExDynamics(), key=_KEY).simulate(
            _train([1.0], [0]), t_end=5.0
        )
    with pytest.raises(ValueError, match="refractory"):
        sj.SpikingODELayer(2, 3, sj.ODELIFDynamics(t_ref=1.0), key=_KEY).simulate(
            _train([1.0], [0]), t_end=5.0
        )
    with pytest.raises(ValueError, match="`delay` must be finite and >= 0"):
        sj.SpikingODELayer(2, 3, recurrent=True, delay=-1.0, key=_KEY)
    with pytest.raises(ValueError, match="needs `recurrent=True`"):
        sj.SpikingODELayer(2, 3, delay=1.0, key=_KEY)
    # The same checks on the function, where a traced delay is refused too (the
    # loop holds it fixed).
    rec = sj.SpikingODELayer(2, 3, recurrent=True, delay=1.0, key=_KEY)

    def run_with_delay(delay, recurrent_weight=rec.recurrent_weight):
        return sj.integrate_events(
            rec.dynamics,
            rec.weight,
            rec.init_state(),
            spikes=_train([1.0], [0]),
            t_end=5.0,
            recurrent_weight=recurrent_weight,
            delay=delay,
        )

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"`delay` must be finite and >= 0 .*got"):
            run_with_delay(bad)
    with pytest.raises(TypeError, match="`delay` must be a number >= 0 .*traced"):
        jax.jit(run_with_delay)(1.0)
    with pytest.raises(TypeError, match=r"`delay` must be one number .*shape \(1,\)"):
        run_with_delay(np.array([1.0]))
    with pytest.raises(ValueError, match="needs a `recurrent_weight`"):
        run_with_delay(1.0, None)
    with pytest.raises(ValueError, match=r"`layers\[1\]` takes 2 inputs"):
        sj.SpikingODENetwork([layer, _layer(2, 1, lif, np.ones((1, 2)))])
    ro = sj.LeakyReadout(3, 1, key=_KEY)
    with pytest.raises(ValueError, match="only be the last layer"):
        sj.SpikingODENetwork([ro, layer])


def test_invalid_spikes_under_jit_are_reported():
    """Traced trains cannot be checked eagerly: the run reports them."""
    layer = _layer(2, 3, sj.ODELIFDynamics(), np.ones((3, 2)))

    @eqx.filter_jit
    def run(times, sources):
        return layer.simulate(
            sj.SpikeTrain(times, sources), t_end=5.0, max_spikes=4, throw=False
        ).result

    ok = run(jnp.array([1.0, jnp.inf]), jnp.array([0, 7]))  # padding: any source
    assert ok == sj.RESULTS.successful
    for times, sources in [
        ([1.0, 6.0], [0, 1]),  # past t_end
        ([1.0, jnp.nan], [0, 1]),
        ([1.0, -2.0], [0, 1]),
        ([1.0, 2.0], [0, 2]),  # source out of range
        ([1.0, 2.0], [-1, 0]),
    ]:
        res = run(jnp.array(times), jnp.array(sources))
        assert res == sj.RESULTS.invalid_input_spikes, (times, sources)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_sources_of_a_narrow_integer_type_index_every_input(dtype):
    """Sources of fewer than 32 bits are compared with the layer's input count as
    int32: with 300 inputs, source 100 in uint8 is valid (in uint8, 300 would
    wrap around to 44 and refuse it), eagerly and under jit, and drives the
    neuron as in int32. The weight from input 100 alone (1.5) makes the neuron
    fire at once (v jumps from 0 to 1.5 > 1): a source read as another input
    would leave it silent."""
    weight = np.zeros((1, 300))
    weight[0, 100] = 1.5
    layer = _layer(300, 1, sj.ODELIFDynamics(), weight)
    times = jnp.array([1.0, 2.0])

    def run(train):
        return layer.simulate(train, t_end=10.0, max_spikes=4)

    want = run(sj.SpikeTrain(times, jnp.array([100, 7], jnp.int32)))
    assert float(np.sum(want.counts)) == 1
    np.testing.assert_array_equal(want.spike_times[0, 0], 1.0)
    train = sj.SpikeTrain(times, jnp.array([100, 7], dtype))
    for got in (run(train), eqx.filter_jit(run)(train)):
        assert got.result == sj.RESULTS.successful
        np.testing.assert_array_equal(got.spike_times, want.spike_times)
        np.testing.assert_array_equal(got.final_state.v, want.final_state.v)


def test_t_end_of_any_real_number_type():
    """`t_end` may be any real number: the same run for an int, NumPy and JAX
    scalars, a fraction, a decimal; a bool, a string or a bool array is refused
    by name."""
    layer = _layer(1, 1, sj.ODELIFDynamics(), [[1.5]])
    train = sj.SpikeTrain(jnp.array([1.0, 4.0]), jnp.array([0, 0]))
    want = layer.simulate(train, t_end=10.0, max_spikes=4)
    for t_end in (
        10,
        np.int64(10),
        np.float32(10),
        jnp.array(10.0),
        Fraction(10),
        Decimal(10),
    ):
        got = layer.simulate(train, t_end=t_end, max_spikes=4)
        np.testing.assert_array_equal(got.spike_times, want.spike_times)
        np.testing.assert_array_equal(got.final_state.v, want.final_state.v)
    for t_end in (True, "10", np.array(True)):
        with pytest.raises(TypeError, match="`t_end` must be a real number"):
            layer.simulate(train, t_end=t_end, max_spikes=4)


def test_a_finite_time_beyond_the_dtype_is_invalid_not_padding():
    """A float64 time of 1e39 given to a float32 layer is past `t_end`: refused
    eagerly, and reported under jit, where the cast to float32 makes it +inf,
    which would otherwise read as padding and drop the spike."""
    layer = sj.SpikingODELayer(1, 1, dtype=jnp.float32, key=_KEY)
    train = sj.SpikeTrain(jnp.array([1.0, 1e39]), jnp.array([0, 0]))
    with pytest.raises(ValueError, match="must be <= t_end"):
        layer.simulate(train, t_end=10.0)
    run = eqx.filter_jit(lambda t: layer.simulate(t, t_end=10.0, throw=False).result)
    assert run(train) == sj.RESULTS.invalid_input_spikes
    padded = sj.SpikeTrain(jnp.array([1.0, jnp.inf]), jnp.array([0, 0]))
    assert run(padded) == sj.RESULTS.successful


def test_an_invalid_traced_t_end_is_reported_by_name():
    """A traced `t_end` cannot be checked eagerly: the run reports
    `invalid_parameters` (whose message names `t_end`, not only `interval`), and
    with `throw=True` raises naming the condition."""
    layer = sj.SpikingODELayer(1, 1, key=_KEY)
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    result = eqx.filter_jit(
        lambda t_end: layer.simulate(train, t_end=t_end, throw=False).result
    )
    for bad in (-1.0, 0.0, jnp.nan, jnp.inf):
        assert result(jnp.asarray(bad)) == sj.RESULTS.invalid_parameters, bad
    assert (
        "`t_end` (spike trains) is not finite and > 0"
        in sj.RESULTS[sj.RESULTS.invalid_parameters]
    )
    assert result(jnp.asarray(5.0)) == sj.RESULTS.successful
    run = eqx.filter_jit(lambda t_end: layer.simulate(train, t_end=t_end).spike_times)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"need 0 < t_end < inf"):
        jax.block_until_ready(run(jnp.asarray(-1.0)))


def test_a_run_with_invalid_input_spikes_has_zero_gradient_not_an_error():
    """With `throw=False` a run with an invalid input train is reported in its
    `result`; a loss that leaves it out has a zero (finite) gradient with respect
    to the input times and the weights, for a NaN time too (whose replay used to
    raise an internal error), while a valid train's gradient is not zero."""
    layer = _cuba_pair()

    @eqx.filter_jit
    @functools.partial(eqx.filter_value_and_grad, has_aux=True)
    def loss(args):
        layer, times = args
        sol = layer.simulate(
            sj.SpikeTrain(times, jnp.array([0, 1, 2])),
            t_end=40.0,
            max_spikes=8,
            throw=False,
        )
        ok = sol.result == sj.RESULTS.successful
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.where(ok, jnp.sum(t), 0.0), sol.result

    (value, result), (g_layer, g_times) = loss((layer, jnp.array([1.0, 2.0, 3.0])))
    assert result == sj.RESULTS.successful and float(value) > 0
    assert np.any(np.asarray(g_times) != 0) and np.any(np.asarray(g_layer.weight) != 0)
    for times in ([1.0, np.nan, 3.0], [1.0, -2.0, 3.0], [1.0, 50.0, 3.0]):
        (value, result), (g_layer, g_times) = loss((layer, jnp.array(times)))
        assert result == sj.RESULTS.invalid_input_spikes, times
        assert float(value) == 0.0
        np.testing.assert_array_equal(np.asarray(g_times), 0.0)
        np.testing.assert_array_equal(np.asarray(g_layer.weight), 0.0)


# -- derivatives at ties and simultaneous events ----------------------------------


def _cuba_pair():
    dyn = sj.CubaLIFDynamics(tau_mem=20.0, tau_syn=5.0)
    return _layer(3, 2, dyn, [[0.3, 0.2, 0.25], [0.1, 0.35, 0.3]])


def _central(f, x, eps=1e-6):
    return np.array(
        [
            (f(x.at[k].add(eps)) - f(x.at[k].add(-eps))) / (2 * eps)
            for k in range(len(x))
        ]
    )


def test_tied_crossings_each_get_their_own_derivative():
    """Two neurons with identical weights cross at the same instant: each spike
    time depends on its own weights only (a tie broken by the argmin lane would
    give the second neuron the first one's derivative)."""
    layer = _layer(1, 2, sj.CubaLIFDynamics(20.0, 5.0), [[0.6], [0.6]])
    train = _train([1.0], [0])

    # One compilation for the spike times, their Jacobian and the finite
    # differences (the times come along as the Jacobian's auxiliary output).
    @jax.jit
    @functools.partial(jax.jacrev, has_aux=True)
    def jac_and_first(w):
        lay = eqx.tree_at(lambda m: m.weight, layer, w[:, None])
        t = lay.simulate(train, t_end=40.0, max_spikes=4).spike_times[:, 0]
        return t, t

    w = jnp.array([0.6, 0.6])
    jac, t = jac_and_first(w)
    assert float(t[0]) == float(t[1]) and np.isfinite(float(t[0]))
    jac = np.asarray(jac)
    fd = np.stack(
        [_central(lambda v, i=i: jac_and_first(v)[1][i], w) for i in range(2)]
    )
    # Finite differences carry the search's tolerance (4 ulp of t_end, ~4e-14 ms)
    # divided by the step: ~1e-7 absolute.
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-7)
    assert jac[0, 1] == 0 and jac[1, 0] == 0 and jac[0, 0] < 0


# One compilation for the loss, its gradient and the finite differences of every
# case below (the layer is an argument, the times are traced).
@eqx.filter_jit
@eqx.filter_value_and_grad
def _input_time_loss(t, layer):
    sol = layer.simulate(
        sj.SpikeTrain(t, jnp.array([0, 1, 2])), t_end=40.0, max_spikes=8
    )
    st = sol.spike_times
    state = sol.final_state
    return jnp.sum(jnp.where(jnp.isfinite(st), st, 0.0)) + jnp.sum(
        state.v + state.i_syn
    )


@pytest.mark.parametrize(
    "times", [[0.0, 1.0, 2.0], [1.0, 1.0, 2.0], [1.0, 1.0, 1.0]], ids=str
)
def test_input_time_gradients_at_time_zero_and_simultaneous_inputs(times):
    """The derivative with respect to each input spike time, also for an input at
    t = 0 and for inputs sharing an instant (the CubaLIF's jumps commute, so the
    run is differentiable there): central differences, float64. With three equal
    times both neurons also fire at one instant (a tie)."""
    layer = _cuba_pair()

    def loss(t):
        return _input_time_loss(t, layer)[0]

    t = jnp.array(times)
    if times[0] == 0.0:  # one-sided at 0: move later only
        eps = 1e-7
        fd = np.array([(loss(t.at[k].add(eps)) - loss(t)) / eps for k in range(3)])
        rtol = 1e-5
    else:
        fd, rtol = _central(loss, t), 1e-6
    np.testing.assert_allclose(np.asarray(_input_time_loss(t, layer)[1]), fd, rtol=rtol)


def _spikes(t, layer):
    spikes = layer.simulate(
        sj.SpikeTrain(t, jnp.array([0, 1])), t_end=40.0, max_spikes=4
    ).spike_times[0]
    return spikes, spikes


# The spike times come along as the Jacobian's auxiliary output: one compilation
# for both cases below (the layer is an argument).
_spikes_jacobian = eqx.filter_jit(jax.jacrev(_spikes, has_aux=True))


@pytest.mark.parametrize(
    "times, weights",
    [([0.0, jnp.inf], [2.0, 0.0]), ([5.0, 5.0], [0.2, 0.3])],
    ids=["input at 0", "two inputs at one instant"],
)
def test_instant_spike_carries_its_input_time_into_later_spikes(times, weights):
    """A tonic LIF (rest 1.5 above threshold 1, reset 0) is lifted to threshold by
    an input and fires at once; its later spikes follow at the period
    `tau ln 3` after it, so every spike time moves one-for-one with the lifting
    input (closed form: derivative 1). At t = 0 the clock itself has no derivative
    and at a shared instant it has the first input's: the derivative reaches the
    later spikes only through the reset at the spike's own time. With two inputs at
    one instant, moving both moves everything: their derivatives sum to 1."""
    layer = _layer(2, 1, sj.ODELIFDynamics(tau_mem=10.0, v_rest=1.5), [weights])
    t = jnp.asarray(times, jnp.float64)
    jac, spikes = _spikes_jacobian(t, layer)
    period = 10.0 * np.log(3.0)
    first = times[0] if weights[0] >= 1 else times[1]
    np.testing.assert_allclose(
        np.asarray(spikes), first + period * np.arange(4), rtol=1e-12
    )
    jac = np.asarray(jac)
    total = jac[:, 0] + np.where(np.isfinite(times[1]), jac[:, 1], 0)
    np.testing.assert_allclose(total, np.ones(4), rtol=1e-9)


def test_readout_applies_simultaneous_jumps_together():
    """+1.5 and -1.5 at one instant into a delta-synapse readout: the voltage there
    is 0 whichever order they come in."""
    ro = sj.LeakyReadout(2, 1, sj.ODELIFDynamics(tau_mem=10.0), key=_KEY)
    ro = eqx.tree_at(lambda m: m.weight, ro, jnp.array([[1.5, -1.5]]))
    for sources in ([0, 1], [1, 0]):
        sol = ro.simulate(_train([5.0, 5.0], sources), t_end=10.0)
        assert float(sol.max_voltage[0]) == 0.0
        assert sol.result == sj.RESULTS.successful


def test_readout_maximum_after_jumps_at_time_zero():
    """Jumps at t = 0 are in before the voltage there counts: an inhibitory one
    leaves the start voltage out of the maximum (it was taken, v_rest at t = 0,
    with no gradient in the weight). Against the closed form -w e^{-t_end/tau}."""
    ro = sj.LeakyReadout(2, 1, sj.ODELIFDynamics(tau_mem=10.0), key=_KEY)
    for w, sources in (([-1.0, 0.0], [0]), ([-1.0, 0.5], [0, 1])):
        ro_w = eqx.tree_at(lambda m: m.weight, ro, jnp.array([w]))
        times = [0.0] * len(sources)
        sol = ro_w.simulate(_train(times, sources), t_end=5.0)
        expected = sum(w) * np.exp(-0.5)
        np.testing.assert_allclose(float(sol.max_voltage[0]), expected, rtol=1e-6)
        assert float(sol.max_time[0]) == 5.0
        grad = jax.grad(
            lambda r: r.simulate(_train(times, sources), t_end=5.0).max_voltage[0]
        )(ro_w)
        np.testing.assert_allclose(
            np.asarray(grad.weight[0, sources]), np.exp(-0.5), rtol=1e-6
        )
    # Excitatory at t = 0: the jumped voltage is the maximum, at t = 0.
    ro_up = eqx.tree_at(lambda m: m.weight, ro, jnp.array([[0.8, 0.0]]))
    sol = ro_up.simulate(_train([0.0], [0]), t_end=5.0)
    np.testing.assert_allclose(float(sol.max_voltage[0]), 0.8, rtol=1e-6)
    assert float(sol.max_time[0]) == 0.0


def test_readout_reports_invalid_spikes_and_nonfinite_weights():
    ro = sj.LeakyReadout(3, 2, key=_KEY, dtype=jnp.float64)

    @eqx.filter_jit
    def run(ro, times, sources):
        return ro.simulate(
            sj.SpikeTrain(times, sources), t_end=30.0, throw=False
        ).result

    ok = run(ro, jnp.array([1.0, jnp.inf]), jnp.array([0, 9]))
    assert ok == sj.RESULTS.successful
    for times, sources in [([1.0, 45.0], [0, 1]), ([1.0], [7]), ([-3.0], [0])]:
        res = run(ro, jnp.array(times), jnp.array(sources))
        assert res == sj.RESULTS.invalid_input_spikes, (times, sources)
    bad = eqx.tree_at(lambda m: m.weight, ro, ro.weight.at[0, 0].set(jnp.nan))
    res = run(bad, jnp.array([1.0]), jnp.array([0]))
    assert res == sj.RESULTS.nonfinite_input
    with pytest.raises(Exception, match="NaN or inf"):
        bad.simulate(_train([1.0], [0]), t_end=30.0)


def test_network_result_reports_an_upstream_failure_and_empty_trains_run():
    layer = _layer(1, 2, sj.ODELIFDynamics(), [[1.5], [0.2]], recurrent=False)
    nxt = _layer(2, 1, sj.ODELIFDynamics(), [[0.1, 0.1]])
    net = sj.SpikingODENetwork([layer, nxt])
    train = _train([1.0, 2.0, 3.0], [0, 0, 0])
    nsol = net.simulate(train, t_end=5.0, max_spikes=2, throw=False)
    assert nsol.layers[0].result == sj.RESULTS.spike_buffer_full
    assert nsol.result == sj.RESULTS.spike_buffer_full
    empty = net.simulate(_train([], []), t_end=5.0, max_spikes=2)
    assert empty.result == sj.RESULTS.successful
    assert int(jnp.sum(empty.layers[0].num_spikes)) == 0


# -- neurons that fall silent after max_spikes ------------------------------------


def _silence_setup():
    rng = np.random.default_rng(7)
    n_in, n = 6, 5
    dyn = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=4.0)
    w = rng.uniform(0.05, 0.3, size=(n, n_in))
    times = np.sort(rng.uniform(0.0, 30.0, size=12))
    sources = rng.integers(0, n_in, size=12)
    return _layer(n_in, n, dyn, w), _train(times, sources)


@pytest.mark.parametrize("keep", [1, 3])
def test_silenced_neurons_keep_their_first_spikes(keep):
    """`after_max_spikes="silence"` keeps each neuron's first `keep` spikes (the
    neurons are independent, so a neuron's first spikes do not depend on what it
    would fire later), ends successfully although neurons stay driven above
    threshold, and counts only the spikes fired."""
    layer, train = _silence_setup()
    wide = layer.simulate(train, t_end=40.0, max_spikes=64)
    fired = np.asarray(wide.num_spikes)
    assert fired.min() >= 1 and fired.max() > keep + 2  # neurons fire on
    sol = layer.simulate(train, t_end=40.0, max_spikes=keep, after_max_spikes="silence")
    assert sol.result == sj.RESULTS.successful
    # The same operations on the same values: equal up to the rounding of two
    # differently compiled programs (a few ulp; a wrong spike is off by far more).
    np.testing.assert_allclose(
        np.asarray(sol.spike_times),
        np.asarray(wide.spike_times[:, :keep]),
        rtol=4 * np.finfo(np.float64).eps,
        atol=0,
    )
    np.testing.assert_array_equal(np.asarray(sol.num_spikes), np.minimum(fired, keep))
    np.testing.assert_array_equal(
        np.asarray(jnp.sum(sol.counts, axis=0)), np.minimum(fired, keep)
    )
    # Fewer iterations: one round per spike kept.
    assert int(sol.stats["num_events"]) < int(wide.stats["num_events"])
    # The saved states replay the recorded spikes on the exact flow (a second
    # path): silenced neurons, some left above threshold, are not reset again.
    saved = layer.simulate(
        train,
        t_end=40.0,
        max_spikes=keep,
        after_max_spikes="silence",
        save_times=jnp.array([40.0]),
    )
    np.testing.assert_allclose(
        np.asarray(saved.saved_states.v[-1]), np.asarray(sol.final_state.v), atol=1e-12
    )
    # Without silence the same buffer stops the run.
    full = layer.simulate(train, t_end=40.0, max_spikes=keep, throw=False)
    assert full.result == sj.RESULTS.spike_buffer_full


def test_silenced_first_spike_gradient_matches_finite_differences():
    """The gradient of a first-spike-time loss through silenced single-spike neurons
    is that of the first spikes: central differences in float64."""
    layer, train = _silence_setup()

    def loss(w, silence):
        m = eqx.tree_at(lambda m: m.weight, layer, w)
        kwargs = dict(max_spikes=1, after_max_spikes="silence") if silence else {}
        sol = m.simulate(train, t_end=40.0, **kwargs)
        first = sol.spike_times[:, 0]
        return jnp.sum(jnp.where(jnp.isfinite(first), first**2, 0.0))

    # `silence` is static: one compilation each, and the finite differences reuse
    # the first one's loss.
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    w = layer.weight
    grad = np.asarray(value_and_grad(w, True)[1])
    np.testing.assert_allclose(
        grad, np.asarray(value_and_grad(w, False)[1]), rtol=1e-12
    )
    eps = 1e-6
    # The sources of the first two input spikes, which come before any spike.
    s0, s1 = (int(k) for k in train.sources[:2])
    for i, j in [(0, s0), (2, s0), (4, s1)]:
        up = value_and_grad(w.at[i, j].add(eps), True)[0]
        down = value_and_grad(w.at[i, j].add(-eps), True)[0]
        fd = float(up - down) / (2 * eps)
        assert abs(grad[i, j]) > 1e-3
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-6)


def test_silence_is_refused_where_it_does_not_apply():
    layer, train = _silence_setup()
    with pytest.raises(ValueError, match="after_max_spikes.*'stop'"):
        layer.simulate(train, t_end=40.0, after_max_spikes="stop")
    # (An array holding an allowed string passed the membership test.)
    with pytest.raises(ValueError, match=r"after_max_spikes.*array\(\['fail'\]"):
        layer.simulate(train, t_end=40.0, after_max_spikes=np.array(["fail"]))
    rec = _layer(2, 2, sj.ODELIFDynamics(), np.ones((2, 2)), recurrent=True, delay=0.5)
    with pytest.raises(ValueError, match="after_max_spikes.*recurrent layer"):
        rec.simulate(_train([1.0], [0]), t_end=5.0, after_max_spikes="silence")
    with pytest.raises(ValueError, match="after_max_spikes.*dense inputs"):
        layer.simulate(jnp.ones((3, 6)), 1.0, after_max_spikes="silence")
    with pytest.raises(ValueError, match="after_max_spikes.*recurrent_weight"):
        sj.integrate_events(
            rec.dynamics,
            rec.weight,
            rec.init_state(),
            spikes=_train([1.0], [0]),
            t_end=5.0,
            recurrent_weight=rec.recurrent_weight,
            after_max_spikes="silence",
        )


def test_recurrent_layer_gradient_with_respect_to_t_end():
    """The run's end is differentiable on the global-order engine too (a recurrent
    layer): the final state flows to `t_end`, so its derivative is the vector field
    there; checked against central differences."""
    layer = _layer(1, 2, sj.CubaLIFDynamics(20.0, 5.0), [[0.9], [0.4]], recurrent=True)
    layer = eqx.tree_at(
        lambda m: m.recurrent_weight, layer, jnp.array([[0.0, -0.2], [0.2, 0.0]])
    )
    train = _train([1.0, 4.0], [0, 0])

    # One compilation for the gradient and the finite differences.
    @jax.jit
    @jax.value_and_grad
    def loss(t_end):
        sol = layer.simulate(train, t_end=t_end, max_spikes=16)
        return jnp.sum(sol.final_state.v) + jnp.sum(sol.final_state.i_syn)

    t_end = jnp.asarray(30.0)
    grad = float(loss(t_end)[1])
    eps = 1e-6
    fd = float((loss(t_end + eps)[0] - loss(t_end - eps)[0]) / (2 * eps))
    assert abs(grad) > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_steps_per_second_is_for_dense_runs():
    layer = sj.SpikingODELayer(3, 2, key=jax.random.key(0))
    sol = layer.simulate(sj.SpikeTrain(jnp.array([1.0]), jnp.array([0])), t_end=5.0)
    assert "num_events" in sol.stats
    with pytest.raises(AttributeError, match=r"counts events instead"):
        _ = sol.steps_per_second


@pytest.mark.parametrize("recurrent", [True, False], ids=["global", "replayed"])
def test_input_spike_at_t_end_gradient(recurrent):
    """An input spike exactly at `t_end` is applied, so the final state's derivative
    with respect to it is the one-sided one from before: with v- the potential just
    before it and w its weight (LIF, no spike), v(t_end) = v- + w, and moving the
    input by dt moves v(t_end) by w dt / tau, t_end by -(v- + w) dt / tau, the
    earlier input by v- dt / tau (the three sum to zero: moving everything together
    changes nothing). On the global-order engine (a recurrent layer, differentiated
    through its loop) and on the feed-forward one (its records replayed)."""
    tau, w0, w1, t0, t_end = 10.0, 0.3, 0.4, 1.0, 5.0
    dyn = sj.ODELIFDynamics(tau_mem=tau)
    layer = _layer(2, 1, dyn, [[w0, w1]], recurrent=recurrent, delay=0.0)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))

    def final_v(times, t_end):
        train = sj.SpikeTrain(times, jnp.array([0, 1]))
        return layer.simulate(train, t_end=t_end, max_spikes=4).final_state.v[0]

    value, (g_times, g_end) = jax.jit(jax.value_and_grad(final_v, (0, 1)))(
        jnp.array([t0, t_end]), jnp.asarray(t_end)
    )
    v_minus = w0 * np.exp(-(t_end - t0) / tau)
    np.testing.assert_allclose(float(value), v_minus + w1, rtol=1e-13)
    np.testing.assert_allclose(
        np.asarray(g_times), [v_minus / tau, w1 / tau], rtol=1e-12
    )
    np.testing.assert_allclose(float(g_end), -(v_minus + w1) / tau, rtol=1e-12)


@pytest.mark.parametrize("recurrent", [True, False], ids=["global", "replayed"])
@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["lifting-first", "last"])
@pytest.mark.parametrize("w_other", [0.2, -0.2])
def test_instant_spike_takes_the_time_of_the_input_that_lifts(
    recurrent, order, w_other
):
    """Two input spikes at one instant, one lifting the neuron past threshold alone
    (weight 1.5) and one not (+-0.2): the spike is at the lifting input's time
    whichever of the two moves a little and whichever the train lists first, so its
    derivative is 1 with respect to that input and 0 to the other. So is the reset
    (to 0, whence v flows to v_rest = 0.5): v(t_end) = 0.5 (1 - exp(-(t_end - t)
    / 10)) moves by -f(0) exp(-(t_end - t) / 10) per unit of that input's time."""
    dyn = sj.ODELIFDynamics(tau_mem=10.0, v_rest=0.5)
    layer = _layer(2, 1, dyn, [[1.5, w_other]], recurrent=recurrent, delay=0.0)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))
    sources = jnp.array(order)

    def run(times):
        train = sj.SpikeTrain(times, sources)
        sol = layer.simulate(train, t_end=5.0, max_spikes=4)
        return sol.spike_times[0, 0], sol.final_state.v[0]

    times = jnp.array([2.0, 2.0])
    lifting = np.eye(2)[order.index(0)]
    value, grad = jax.jit(jax.value_and_grad(lambda t: run(t)[0]))(times)
    assert float(value) == 2.0
    np.testing.assert_array_equal(np.asarray(grad), lifting)
    value, grad = jax.jit(jax.value_and_grad(lambda t: run(t)[1]))(times)
    decay = np.exp(-0.3)
    np.testing.assert_allclose(float(value), 0.5 * (1 - decay), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(grad), -0.05 * decay * lifting, rtol=1e-13)


def test_instant_spike_lifted_by_an_input_at_a_delivery():
    """The same on a recurrent layer, the other jump a delivered spike: A fires at
    t0 = 1 (input 1.2) and reaches B 2 ms later (0.2), when B's own input (1.5)
    lifts it alone: B's spike time moves with that input, not with t0."""
    layer = _layer(
        2,
        2,
        sj.ODELIFDynamics(tau_mem=10.0),
        [[1.2, 0.0], [0.0, 1.5]],
        recurrent=True,
        delay=2.0,
    )
    layer = eqx.tree_at(
        lambda m: m.recurrent_weight, layer, jnp.array([[0.0, 0.0], [0.2, 0.0]])
    )

    def spike_time(times):
        train = sj.SpikeTrain(times, jnp.array([0, 1]))
        return layer.simulate(train, t_end=5.0, max_spikes=4).spike_times[1, 0]

    value, grad = jax.jit(jax.value_and_grad(spike_time))(jnp.array([1.0, 3.0]))
    assert float(value) == 3.0
    np.testing.assert_array_equal(np.asarray(grad), [0.0, 1.0])


def test_delivery_at_an_interval_boundary_gradient():
    """A recurrent layer on held currents whose delivered spike arrives exactly at
    an interval boundary. Neuron 0 (current 0.5, then 0) fires once at
    tau ln(5/4); the delay puts its delivery (0.3) to neuron 1 at the boundary
    L = 3. Neuron 1 (current 0.03, then 0.07, never firing) ends at 2L; the switch
    moves with L, and moving it by dt changes neuron 1's potential by
    dt (0.03 - 0.07) / C whatever the potential is, so v1(2L) is differentiable in
    L at the tie. Checked against the closed form's central difference."""
    tau, L, J = 10.0, 3.0, 0.3
    dyn = sj.ODELIFDynamics(tau_mem=tau)
    x = jnp.array([[0.5, 0.03], [0.0, 0.07]])
    weight = [[1.0, 0.0], [0.0, 1.0]]
    probe = _layer(2, 2, dyn, weight, recurrent=True, delay=5.0)
    t_spike = float(probe.simulate(x, L, max_spikes=4).spike_times[0, 0])
    np.testing.assert_allclose(t_spike, tau * np.log(5 / 4), rtol=1e-14)
    delay = L - t_spike
    while t_spike + delay != L:  # the arrival exactly at the boundary
        delay = np.nextafter(delay, np.inf if t_spike + delay < L else -np.inf)
    layer = _layer(2, 2, dyn, weight, recurrent=True, delay=delay)
    layer = eqx.tree_at(
        lambda m: m.recurrent_weight, layer, jnp.array([[0.0, 0.0], [J, 0.0]])
    )

    def v1(L):
        return layer.simulate(x, L, max_spikes=4).final_state.v[1]

    def closed(L, arrival=L):
        def flow(v, current, h):
            return current * tau + (v - current * tau) * np.exp(-h / tau)

        if L >= arrival:
            v = flow(flow(0.0, 0.03, arrival) + J, 0.03, L - arrival)
            return flow(v, 0.07, L)
        v = flow(flow(0.0, 0.03, L), 0.07, arrival - L) + J
        return flow(v, 0.07, 2 * L - arrival)

    value, grad = jax.jit(jax.value_and_grad(v1))(jnp.asarray(L))
    np.testing.assert_allclose(float(value), closed(L), rtol=1e-13)
    h = 1e-5
    fd = (closed(L + h) - closed(L - h)) / (2 * h)
    np.testing.assert_allclose(float(grad), fd, rtol=1e-8)


def _first_length_with_the_spike(run, start):
    """The smallest float near `start` (a few ulps at most) at which `run(t)` has
    the spike in: there the crossing is located exactly at the run's end or at an
    interval boundary."""
    t = start
    step = -np.inf if run(t) else np.inf
    for _ in range(16):
        after = float(np.nextafter(t, step))
        if step < 0 and not run(after):
            return t
        if step > 0 and run(after):
            return after
        t = after
    raise AssertionError(f"no flip near {start!r}")


@pytest.mark.parametrize("recurrent", [True, False], ids=["global", "replayed"])
def test_crossing_exactly_at_t_end_gradient(recurrent):
    """A LIF pulled up by its rest (v_rest = 2 > threshold 1, tau = 10), kicked by
    one input w at 0, crosses at t* = tau ln(2 - w); `t_end` exactly there: the
    spike is in the run, at its own crossing time (dt*/dt_end = 0, dt*/dw =
    -tau / (2 - w)), and the final state is the reset one flowed for no time
    (dv/dt_end = f(0) = 2 / tau, dv/dw = -f(0) dt*/dw)."""
    tau, w = 10.0, 0.1
    kwargs = dict(recurrent=True, delay=0.5) if recurrent else {}
    layer = _layer(1, 1, sj.ODELIFDynamics(tau_mem=tau, v_rest=2.0), [[w]], **kwargs)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))
    train = _train([0.0], [0])

    @jax.jit
    def run(t_end, w):
        weighted = eqx.tree_at(lambda m: m.weight, layer, jnp.reshape(w, (1, 1)))
        sol = weighted.simulate(train, t_end=t_end, max_spikes=4)
        return sol.spike_times[0, 0], sol.final_state.v[0], sol.num_spikes[0]

    t_star = tau * np.log(2.0 - w)
    np.testing.assert_allclose(float(run(20.0, w)[0]), t_star, rtol=1e-14)
    t_end = _first_length_with_the_spike(
        lambda t: int(run(t, w)[2]) == 1, float(run(20.0, w)[0])
    )
    assert float(run(t_end, w)[0]) == t_end  # the crossing at the end itself
    args = (jnp.asarray(t_end), jnp.asarray(w))
    d_time = jax.grad(lambda t, w: run(t, w)[0], (0, 1))(*args)
    d_v = jax.grad(lambda t, w: run(t, w)[1], (0, 1))(*args)
    dt_dw = -tau / (2.0 - w)
    np.testing.assert_allclose([float(g) for g in d_time], [0.0, dt_dw], atol=1e-12)
    np.testing.assert_allclose(
        [float(g) for g in d_v], [2 / tau, -2 / tau * dt_dw], rtol=1e-10
    )


def test_crossing_exactly_at_an_interval_boundary_gradient():
    """A recurrent layer on held currents (the global-order engine): current w
    (v_inf = w tau = 2) for L, then w / 2 (v_inf = 1, the threshold) for 5 ms.
    The first crossing, t* = tau ln 2, falls exactly on the boundary L. From the
    side where it stays in the first interval (L later): dt*/dL = 0,
    dt*/dw = tau^2 (1/(w tau) - 1/(w tau - 1)); the reset state then flows under
    the first current to L, then under the second, v_end = v_inf2 + (v(L) -
    v_inf2) e^(-5/tau), whose derivatives at the tie are e^(-1/2) 2/tau (in L) and
    5 tau/10 (1 - e^(-1/2)) + e^(-1/2) (2/tau) (-dt*/dw) (in w)."""
    tau, w = 10.0, 0.2
    layer = _layer(
        1, 1, sj.ODELIFDynamics(tau_mem=tau), [[w]], recurrent=True, delay=0.5
    )
    layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))
    x = jnp.array([[1.0], [0.5]])

    @jax.jit
    def run(length, w):
        weighted = eqx.tree_at(lambda m: m.weight, layer, jnp.reshape(w, (1, 1)))
        sol = weighted.simulate(x, jnp.stack([length, jnp.asarray(5.0)]), max_spikes=4)
        return sol.spike_times[0, 0], sol.final_state.v[0]

    t_star = tau * np.log(2.0)
    length = _first_length_with_the_spike(
        lambda t: float(run(t, w)[0]) <= t, float(run(20.0, w)[0])
    )
    np.testing.assert_allclose(length, t_star, rtol=1e-14)
    assert float(run(length, w)[0]) == length  # the crossing at the boundary itself
    args = (jnp.asarray(length), jnp.asarray(w))
    d_time = jax.grad(lambda t, w: run(t, w)[0], (0, 1))(*args)
    d_v = jax.grad(lambda t, w: run(t, w)[1], (0, 1))(*args)
    dt_dw = tau**2 * (1 / (w * tau) - 1 / (w * tau - 1))
    decay = np.exp(-5.0 / tau)
    np.testing.assert_allclose([float(g) for g in d_time], [0.0, dt_dw], atol=1e-12)
    np.testing.assert_allclose(
        [float(g) for g in d_v],
        [decay * 2 / tau, tau / 2 * (1 - decay) + decay * 2 / tau * -dt_dw],
        rtol=1e-10,
    )


@pytest.mark.parametrize("recurrent", [True, False], ids=["global", "replayed"])
def test_cuba_crossing_exactly_at_an_input_gradient(recurrent):
    """A CubaLIF (an input jumps its synaptic current) whose flow reaches threshold
    exactly at the time of its second input. The spike takes its crossing's
    derivative (as if just before the input: none in the input's time or weight),
    and the state after it is that of firing under the current before the jump,
    then the jump: derivatives against one-sided differences from that side (the
    input later; h = 1e-6: truncation ~h times the curvature, 1e-5 relative, and
    rounding ~eps |f| / h, 1e-8 absolute)."""
    kwargs = dict(recurrent=True, delay=0.5) if recurrent else {}
    layer = _layer(2, 1, sj.CubaLIFDynamics(10.0, 5.0), [[0.6, 0.5]], **kwargs)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))

    @jax.jit
    def run(p):
        t_in, w0, w1 = p
        weighted = eqx.tree_at(lambda m: m.weight, layer, jnp.stack([w0, w1])[None])
        train = sj.SpikeTrain(jnp.stack([jnp.zeros(()), t_in]), jnp.array([0, 1]))
        sol = weighted.simulate(train, t_end=t_in + 3.0, max_spikes=16)
        return sol.spike_times[0, 0], sol.final_state.v[0], sol.final_state.i_syn[0]

    t_star = float(run(jnp.array([20.0, 0.6, 0.0]))[0])
    ties = [
        t
        for t in t_star + np.arange(-20, 21) * np.spacing(t_star)
        if float(run(jnp.array([t, 0.6, 0.5]))[0]) == t
    ]
    assert ties, "no input time on the crossing"
    p = jnp.array([ties[0], 0.6, 0.5])
    h = 1e-6
    for j in range(3):
        grad = np.asarray(jax.grad(lambda p: run(p)[j])(p))
        later = [(float(run(p + h * e)[j]) - float(run(p)[j])) / h for e in np.eye(3)]
        np.testing.assert_allclose(grad, later, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("recurrent", [True, False], ids=["global", "replayed"])
def test_inhibitory_input_exactly_at_a_crossing(recurrent):
    """A LIF (v_rest = 2, threshold 1) whose flow reaches threshold at the time of
    an inhibitory input (w = -0.3 onto v), for input times a few ulp around the
    crossing. The jumps at an instant come before the firing: at a tie the input
    takes the neuron below threshold and it does not fire (as with the input just
    before); else it fires at its crossing and the input follows. Either way the
    final state is one of the two closed forms, with its derivatives in the input's
    time and weight (a neuron that fired and lost the input, v_end = 0.19, is
    neither)."""
    kwargs = dict(recurrent=True, delay=0.5) if recurrent else {}
    dyn = sj.ODELIFDynamics(tau_mem=10.0, v_rest=2.0)
    layer = _layer(2, 1, dyn, [[0.1, -0.3]], **kwargs)
    if recurrent:
        layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, jnp.zeros((1, 1)))
    t_star = 10.0 * np.log(1.9)  # v(t) = 2 - 1.9 exp(-t / 10) reaches 1
    t_end = t_star + 1.0

    @jax.jit
    def run(p):
        t_in, w1 = p
        weighted = eqx.tree_at(lambda m: m.weight, layer, jnp.stack([0.1, w1])[None])
        train = sj.SpikeTrain(jnp.stack([jnp.zeros(()), t_in]), jnp.array([0, 1]))
        sol = weighted.simulate(train, t_end=t_end, max_spikes=4)
        return sol.final_state.v[0], sol.num_spikes[0]

    grad = jax.jit(jax.grad(lambda p: run(p)[0]))
    decay = np.exp(-(t_end - t_star) / 10)  # to t_end, from t_in (within ulps)
    # (v_end, d v_end / d(t_in, w)). Input first: 1 - 0.3, no spike. Spike at the
    # crossing, reset to 0, then the input: -0.3. (d/dt_in: the flow there before
    # the jump minus after it, carried to t_end.)
    before = (2 - 1.3 * decay, [decay * (0.1 - 0.13), decay])
    after = (2 - 2.3 * decay, [decay * (0.2 - 0.23), decay])
    seen = set()
    for t in t_star + np.arange(-8, 9) * np.spacing(t_star):
        p = jnp.array([t, -0.3])
        v, n = (float(a) for a in run(p))
        want = before if n == 0 else after
        assert n in (0, 1)
        np.testing.assert_allclose(v, want[0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.asarray(grad(p)), want[1], rtol=1e-12)
        seen.add(n)
    assert seen == {0, 1}, "the input times do not span the crossing"
