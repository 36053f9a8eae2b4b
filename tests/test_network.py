"""Spike-train layers and networks against the independent event-driven reference
(`network_reference.py`, NumPy float64), plus gradients against finite differences,
batching, jit, and the error paths of the spike-train API.

Every case is small (a few neurons, a few spikes each) and every configuration is
compiled once: the runs go through the module-level `eqx.filter_jit` functions below,
whose compiled versions are shared by all tests with the same structure, and the
reference solutions are module-scoped fixtures.

Input spike times lie on a 0.25 ms grid, so different sources often fire at exactly
the same time, and recurrent deliveries (delay 0.5 ms) of delta-synapse neurons, which
only fire at input times, land exactly on later input times: the instant rule (all
jumps due at an instant are added together before anyone fires) is exercised
throughout, not only in the dedicated cases.
"""

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .helpers import decimal_partials
from .network_reference import simulate_layer, simulate_network

T_END = 50.0
MAX_SPIKES = 16
N_INPUTS = 5
PAD = 48  # padded length of every input spike train
TIME_ATOL = 1e-9  # ms, against the reference
GRAD_RTOL = 1e-6  # against central finite differences
# Event budget of every recurrent run here (a static argument: one value, so one
# compilation per structure); ample for these cases.
BUDGET = 10_000
F64 = jnp.float64


# -- compiled entry points (one compilation per structure) ---------------------------


@eqx.filter_jit
def run(model, inp, t_end, max_spikes, throw=True, max_events=None):
    if max_events is None:
        return model.simulate(inp, t_end=t_end, max_spikes=max_spikes, throw=throw)
    return model.simulate(
        inp, t_end=t_end, max_spikes=max_spikes, max_events=max_events, throw=throw
    )


@eqx.filter_jit
def run_batch(model, batch, t_end, max_spikes):
    return jax.vmap(
        lambda inp: model.simulate(inp, t_end=t_end, max_spikes=max_spikes)
    )(batch)


def spike_loss(times):
    """A smooth function of the recorded spike times (padding contributes 0)."""
    finite = jnp.isfinite(times)
    return jnp.sum(jnp.where(finite, jnp.exp(-jnp.where(finite, times, 0.0) / 10.0), 0))


def np_spike_loss(times):
    times = np.asarray(times)
    return float(np.sum(np.exp(-times[np.isfinite(times)] / 10.0)))


@eqx.filter_jit
@eqx.filter_value_and_grad
def network_loss_and_grad(net, inp):
    sol = net.simulate(inp, t_end=T_END, max_spikes=MAX_SPIKES)
    return spike_loss(sol.layers[-1].spike_times)


# -- building blocks -----------------------------------------------------------------


def grid_inputs(seed, n_spikes, n_inputs=N_INPUTS, t_end=T_END, grid=0.25):
    """Random input spikes on a `grid` ms lattice in [0.25, t_end - 1], unsorted."""
    rng = np.random.default_rng(seed)
    times = grid * rng.integers(1, int((t_end - 1) / grid), n_spikes)
    sources = rng.integers(0, n_inputs, n_spikes)
    return times.astype(np.float64), sources.astype(np.int64)


def spike_train(times, sources, pad=PAD, pad_source=0):
    times = np.asarray(times, np.float64)
    sources = np.asarray(sources, np.int64)
    assert len(times) <= pad
    t = np.full(pad, np.inf)
    s = np.full(pad, pad_source, np.int64)
    t[: len(times)] = times
    s[: len(sources)] = sources
    return sj.SpikeTrain(times=jnp.asarray(t), sources=jnp.asarray(s))


def make_layer(n_inputs, n_neurons, dynamics, W, *, W_rec=None, delay=None, seed=0):
    key = jax.random.key(seed)
    kwargs = {}
    if W_rec is not None:
        kwargs = dict(recurrent=True, delay=delay)
    layer = sj.SpikingODELayer(
        n_inputs, n_neurons, dynamics, dtype=F64, key=key, **kwargs
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(W, F64))
    if W_rec is not None:
        layer = eqx.tree_at(
            lambda m: m.recurrent_weight, layer, jnp.asarray(W_rec, F64)
        )
    return layer


_PARAMS = ("v_rest", "v_threshold", "v_reset", "C_mem")


def dynamics_for(spec):
    params = {k: spec[k] for k in _PARAMS if k in spec}
    if spec["model"] == "cuba":
        return sj.CubaLIFDynamics(
            tau_mem=spec["tau_mem"], tau_syn=spec["tau_syn"], **params
        )
    return sj.ODELIFDynamics(tau_mem=spec["tau_mem"], **params)


def reference_kwargs(spec):
    keys = ("model", "tau_mem", "tau_syn", "W_rec", "delay", *_PARAMS)
    return {k: spec[k] for k in keys if k in spec and spec[k] is not None}


def assert_matches_reference(sol, ref, what=""):
    """Counts equal and spike times within TIME_ATOL of the reference."""
    counts = ref.counts
    assert counts.max() <= MAX_SPIKES, f"{what}: enlarge MAX_SPIKES"
    num = np.asarray(sol.num_spikes)
    np.testing.assert_array_equal(num, counts, err_msg=f"{what}: spike counts")
    times = np.asarray(sol.spike_times)
    assert times.shape == (len(counts), MAX_SPIKES)
    expected = ref.padded(MAX_SPIKES)
    np.testing.assert_array_equal(
        np.isfinite(times), np.isfinite(expected), err_msg=f"{what}: padding"
    )
    finite = np.isfinite(expected)
    np.testing.assert_allclose(
        times[finite], expected[finite], rtol=0, atol=TIME_ATOL, err_msg=what
    )


def assert_busy(ref, min_per_neuron=1, what=""):
    """The case is informative: every neuron fires (at least `min_per_neuron`)."""
    counts = ref.counts
    assert counts.min() >= min_per_neuron, f"{what}: reference counts {counts}"
    assert counts.max() <= MAX_SPIKES, f"{what}: reference counts {counts}"


# -- single layers -------------------------------------------------------------------

N_LAYER = 6

LAYER_CASES = {
    # name: (spec, weight mean, weight std, input seed, number of input spikes)
    "lif": (dict(model="lif", tau_mem=20.0), 0.15, 0.08, 1, 40),
    "cuba_4to1": (dict(model="cuba", tau_mem=20.0, tau_syn=5.0), 0.05, 0.02, 2, 40),
    "cuba_equal": (dict(model="cuba", tau_mem=10.0, tau_syn=10.0), 0.036, 0.015, 3, 40),
    "cuba_2to1": (dict(model="cuba", tau_mem=10.0, tau_syn=5.0), 0.045, 0.02, 4, 40),
    "cuba_1to3": (dict(model="cuba", tau_mem=5.0, tau_syn=15.0), 0.035, 0.01, 5, 40),
    "cuba_params": (
        dict(
            model="cuba",
            tau_mem=20.0,
            tau_syn=5.0,
            v_rest=-0.2,
            v_threshold=0.8,
            v_reset=-0.5,
            C_mem=2.0,
        ),
        0.1,
        0.04,
        6,
        40,
    ),
    "lif_params": (
        dict(model="lif", tau_mem=10.0, v_rest=0.1, v_threshold=1.2, v_reset=-0.3),
        0.25,
        0.1,
        7,
        40,
    ),
}


def layer_case(name):
    spec, mean, std, seed, n_spikes = LAYER_CASES[name]
    rng = np.random.default_rng(100 + seed)
    W = rng.normal(mean, std, (N_LAYER, N_INPUTS))
    times, sources = grid_inputs(seed, n_spikes)
    return spec, W, times, sources


@pytest.fixture(scope="module", params=sorted(LAYER_CASES))
def layer_run(request):
    spec, W, times, sources = layer_case(request.param)
    ref = simulate_layer(W, times, sources, T_END, **reference_kwargs(spec))
    layer = make_layer(N_INPUTS, N_LAYER, dynamics_for(spec), W)
    sol = run(layer, spike_train(times, sources), T_END, MAX_SPIKES)
    return request.param, ref, sol


def test_layer_matches_reference(layer_run):
    name, ref, sol = layer_run
    assert_busy(ref, what=name)
    assert_matches_reference(sol, ref, name)
    assert sol.result == sj.RESULTS.successful


def test_spike_train_of_a_failed_run_raises_unless_asked_not_to():
    """A run with a full spike buffer (`throw=False`) holds 3 of its 47 spikes: its
    train, the input of a next layer, raises by default, naming the failure; with
    `throw=False` it holds the 3 recorded spikes (a next layer's run on it would
    report success)."""
    layer = sj.SpikingODELayer(1, 1, sj.ODELIFDynamics(), key=jax.random.key(0))
    layer = eqx.tree_at(lambda la: la.weight, layer, jnp.full((1, 1), 0.5))
    sol = layer.simulate(np.ones((1, 1)), interval=100.0, max_spikes=3, throw=False)
    assert sol.result == sj.RESULTS.spike_buffer_full
    assert int(sol.num_spikes[0]) == 47
    with pytest.raises(
        eqx.EquinoxRuntimeError, match=r"spike_train\(\) of a failed run: More spikes"
    ):
        sol.spike_train()
    train = sol.spike_train(throw=False)
    np.testing.assert_array_equal(
        np.sort(np.asarray(train.times)), np.asarray(sol.spike_times[0])
    )
    assert np.isfinite(np.asarray(train.times)).sum() == 3
    assert np.isfinite(np.asarray(sol.spike_train(throw=np.False_).times)).sum() == 3
    with pytest.raises(TypeError, match=r"`throw` must be True or False, got 'no'"):
        sol.spike_train(throw="no")  # type: ignore[arg-type]


def test_spike_train_of_a_solution_lists_its_spikes(layer_run):
    # Every recorded spike once, with its neuron as source (in any order).
    name, ref, sol = layer_run
    train = sol.spike_train()
    times = np.asarray(train.times)
    sources = np.asarray(train.sources)
    finite = np.isfinite(times)
    assert finite.sum() == ref.counts.sum(), name
    for j, expected in enumerate(ref.spike_times):
        got = np.sort(times[finite & (sources == j)])
        assert len(got) == len(expected), f"{name}: neuron {j}"
        np.testing.assert_allclose(got, expected, rtol=0, atol=TIME_ATOL)


# -- instant rule, jumps and edge cases (delta synapse) ------------------------------


def special_lif_case():
    """Six ODELIF neurons, each checking one rule:

    0: two sources at exactly t = 2 with 0.6 each: only their sum crosses -> fires at 2;
    1: +1.2 and -0.5 at the same instant: no spike (the sum, 0.7, is below threshold);
    2: the same with the sources swapped in the input order;
    3: 0.4 + 0.4 at the same instant: no spike (control);
    4: one large weight (3.0) fires at exactly that input time (no clipping);
    5: a weight of exactly the threshold fires at exactly that input time, and again
       at an input at exactly t_end (which is processed).
    """
    W = np.zeros((N_LAYER, N_INPUTS))
    W[0, 0] = W[0, 1] = 0.6
    W[1, 0], W[1, 1] = 1.2, -0.5
    W[2, 0], W[2, 1] = -0.5, 1.2
    W[3, 0] = W[3, 1] = 0.4
    W[4, 2] = 3.0
    W[5, 3] = 1.0
    times = np.array([2.0, 7.3, 2.0, 11.125, 30.0, 30.0, 31.5, T_END])
    sources = np.array([1, 2, 0, 3, 1, 0, 4, 3])
    return W, times, sources


def test_instant_rule_delta_synapse():
    W, times, sources = special_lif_case()
    ref = simulate_layer(W, times, sources, T_END, model="lif", tau_mem=20.0)
    expected = [[2.0, 30.0], [], [], [], [7.3], [11.125, T_END]]
    assert [list(ts) for ts in ref.spike_times] == expected
    layer = make_layer(N_INPUTS, N_LAYER, sj.ODELIFDynamics(tau_mem=20.0), W)
    sol = run(layer, spike_train(times, sources, pad_source=7), T_END, MAX_SPIKES)
    assert_matches_reference(sol, ref, "instant rule")
    # Jumps fire at exactly the input time.
    got = np.asarray(sol.spike_times)
    assert got[0, 0] == 2.0 and got[0, 1] == 30.0
    assert got[4, 0] == 7.3 and got[5, 0] == 11.125 and got[5, 1] == T_END


def test_instant_rule_exponential_synapse():
    # Simultaneous excitation and inhibition of i_syn cancel exactly: no spike, and
    # the same neuron as with no input at that instant.
    W = np.zeros((N_LAYER, N_INPUTS))
    W[0, 0], W[0, 1] = 0.5, -0.5  # cancel at t = 2: never fires
    W[1, 0] = 0.5  # fires after t = 2 (control)
    W[2, 2] = W[2, 3] = 0.2  # together (t = 4) they cross, each alone does not
    W[3, 2] = 0.2
    W[4, 3] = 0.2
    W[5, 4] = 1.0  # a large jump of the current: fires after, not at, the input
    times = np.array([2.0, 2.0, 4.0, 4.0, 9.0])
    sources = np.array([0, 1, 2, 3, 4])
    dyn = sj.CubaLIFDynamics(tau_mem=20.0, tau_syn=5.0)
    ref = simulate_layer(
        W, times, sources, T_END, model="cuba", tau_mem=20.0, tau_syn=5.0
    )
    counts = ref.counts
    assert counts[0] == 0 and counts[1] >= 1 and counts[2] >= 1
    assert counts[3] == 0 and counts[4] == 0 and counts[5] >= 1
    assert ref.spike_times[5][0] > 9.0
    layer = make_layer(N_INPUTS, N_LAYER, dyn, W)
    sol = run(layer, spike_train(times, sources), T_END, MAX_SPIKES)
    assert_matches_reference(sol, ref, "cuba instant rule")


# -- feed-forward networks -----------------------------------------------------------

NETWORK_CASES = {
    # Also the gradient case: exponential synapses in both layers, so that the
    # second layer's spike times depend smoothly on every parameter, and a recurrent
    # first layer (delay 0.5 ms), so that one compiled gradient covers the
    # feed-forward and the recurrent weights.
    "two_layers": [
        dict(
            n=6,
            model="cuba",
            tau_mem=20.0,
            tau_syn=5.0,
            mean=0.06,
            std=0.02,
            rec_std=0.02,
            delay=0.5,
        ),
        dict(n=3, model="cuba", tau_mem=10.0, tau_syn=4.0, mean=0.08, std=0.03),
    ],
    "three_layers": [
        dict(n=8, model="cuba", tau_mem=10.0, tau_syn=10.0, mean=0.05, std=0.02),
        dict(n=6, model="lif", tau_mem=20.0, mean=0.15, std=0.06),
        dict(n=3, model="lif", tau_mem=20.0, mean=0.3, std=0.1),
    ],
}


def network_case(name, seed=7):
    rng = np.random.default_rng(seed)
    specs, n_in = [], N_INPUTS
    for layer in NETWORK_CASES[name]:
        W = rng.normal(layer["mean"], layer["std"], (layer["n"], n_in))
        W_rec = None
        if "rec_std" in layer:
            W_rec = rng.normal(0.0, layer["rec_std"], (layer["n"], layer["n"]))
        specs.append({**layer, "W": W, "W_rec": W_rec, "n_inputs": n_in})
        n_in = layer["n"]
    times, sources = grid_inputs(seed, 30)
    return specs, times, sources


def build_network(specs):
    layers = [
        make_layer(
            s["n_inputs"],
            s["n"],
            dynamics_for(s),
            s["W"],
            W_rec=s["W_rec"],
            delay=s.get("delay"),
            seed=k,
        )
        for k, s in enumerate(specs)
    ]
    return sj.SpikingODENetwork(layers)


def network_reference(specs, times, sources):
    layers = [dict(W=s["W"], **reference_kwargs(s)) for s in specs]
    return simulate_network(layers, times, sources, T_END)


@functools.cache
def simulated_network(name):
    specs, times, sources = network_case(name)
    refs = network_reference(specs, times, sources)
    net = build_network(specs)
    inp = spike_train(times, sources)
    return name, refs, net, inp, run(net, inp, T_END, MAX_SPIKES)


@pytest.fixture(scope="module", params=sorted(NETWORK_CASES))
def network_run(request):
    return simulated_network(request.param)


def test_network_matches_reference(network_run):
    name, refs, net, _, nsol = network_run
    assert len(net.layers) == len(refs) == len(nsol.layers)
    for k, (ref, sol) in enumerate(zip(refs, nsol.layers)):
        assert_busy(ref, what=f"{name} layer {k}")
        assert_matches_reference(sol, ref, f"{name} layer {k}")


# -- recurrence ----------------------------------------------------------------------

RECURRENT_CASES = {
    # name: (spec, input weight mean, std, recurrent std)
    "lif_delay0": (dict(model="lif", tau_mem=20.0, delay=0.0), 0.15, 0.08, 0.3),
    "lif_delay0.5": (dict(model="lif", tau_mem=20.0, delay=0.5), 0.15, 0.08, 0.3),
}


def recurrent_case(name, seed=11):
    spec, mean, std, rec_std = RECURRENT_CASES[name]
    rng = np.random.default_rng(seed)
    W = rng.normal(mean, std, (N_LAYER, N_INPUTS))
    W_rec = rng.normal(0.0, rec_std, (N_LAYER, N_LAYER))
    times, sources = grid_inputs(seed, 30)
    return {**spec, "W_rec": W_rec}, W, times, sources


@pytest.fixture(scope="module", params=sorted(RECURRENT_CASES))
def recurrent_run(request):
    spec, W, times, sources = recurrent_case(request.param)
    ref = simulate_layer(W, times, sources, T_END, **reference_kwargs(spec))
    plain = simulate_layer(
        W, times, sources, T_END, **reference_kwargs({**spec, "W_rec": None})
    )
    layer = make_layer(
        N_INPUTS,
        N_LAYER,
        dynamics_for(spec),
        W,
        W_rec=spec["W_rec"],
        delay=spec["delay"],
    )
    sol = run(layer, spike_train(times, sources), T_END, MAX_SPIKES, max_events=BUDGET)
    return request.param, ref, plain, layer, sol


def test_recurrent_layer_matches_reference(recurrent_run):
    name, ref, plain, layer, sol = recurrent_run
    assert_busy(ref, what=name)
    # The recurrence matters in this case.
    assert any(
        len(a) != len(b) or not np.array_equal(a, b)
        for a, b in zip(ref.spike_times, plain.spike_times)
    ), name
    assert layer.recurrent_weight.shape == (N_LAYER, N_LAYER)
    assert_matches_reference(sol, ref, name)


def test_recurrent_zero_delay_chain_fires_at_one_instant():
    # 0 -> 1 -> 2 with zero delay: all three fire at the input time; 3 gets only
    # half the threshold from 2; 4 -> 5 is not triggered. With a delay, a delivery
    # due at exactly t_end is processed, one due after it is not.
    W = np.zeros((N_LAYER, N_INPUTS))
    W[0, 0] = 1.5
    W_rec = np.zeros((N_LAYER, N_LAYER))
    W_rec[1, 0] = W_rec[2, 1] = 1.0
    W_rec[3, 2] = 0.5
    W_rec[5, 4] = 2.0
    t_last = T_END - 0.5
    times, sources = np.array([3.25, t_last]), np.array([0, 0])
    for delay, expected in [
        (0.0, [[3.25, t_last], [3.25, t_last], [3.25, t_last], [], [], []]),
        (0.5, [[3.25, t_last], [3.75, T_END], [4.25], [], [], []]),
    ]:
        ref = simulate_layer(
            W, times, sources, T_END, model="lif", W_rec=W_rec, delay=delay
        )
        assert [list(ts) for ts in ref.spike_times] == expected
        layer = make_layer(
            N_INPUTS,
            N_LAYER,
            sj.ODELIFDynamics(tau_mem=20.0),
            W,
            W_rec=W_rec,
            delay=delay,
        )
        sol = run(
            layer, spike_train(times, sources), T_END, MAX_SPIKES, max_events=BUDGET
        )
        assert_matches_reference(sol, ref, f"chain delay {delay}")


# -- gradients -----------------------------------------------------------------------


def _counts(sol):
    if hasattr(sol, "layers"):
        return [np.asarray(s.num_spikes) for s in sol.layers]
    return [np.asarray(sol.num_spikes)]


def _last_times(sol):
    return sol.layers[-1].spike_times if hasattr(sol, "layers") else sol.spike_times


def check_fd(model, inp, grads, leaves, rng, n_entries, **run_kwargs):
    """Central differences of the compiled forward at a few entries of each leaf
    (chosen among those with a non-negligible derivative).

    The spike counts of every layer must be unchanged between the evaluations, and
    the differences with steps h and h/2 must agree: a disagreement means a kink of
    the loss within h (two events changing order, which the counts do not show), so
    the point is unsuitable, not the gradient wrong."""
    base = run(model, inp, T_END, MAX_SPIKES, **run_kwargs)
    base_counts = _counts(base)

    def central(where, mi, h, name):
        losses = []
        for sign in (1.0, -1.0):
            # `.at[].add` keeps the leaf's dtype and weak type: no recompilation.
            m = eqx.tree_at(where, model, where(model).at[mi].add(sign * h))
            sol = run(m, inp, T_END, MAX_SPIKES, **run_kwargs)
            for c0, c in zip(base_counts, _counts(sol)):
                np.testing.assert_array_equal(
                    c, c0, err_msg=f"{name}{mi}: spike counts changed under +-h"
                )
            losses.append(np_spike_loss(_last_times(sol)))
        return (losses[0] - losses[1]) / (2 * h)

    checked = 0
    for name, where in leaves:
        value = np.asarray(where(model), np.float64)
        grad = np.asarray(where(grads), np.float64)
        assert grad.shape == value.shape, name
        assert np.all(np.isfinite(grad)), name
        flat = np.abs(grad).reshape(-1)
        assert flat.max() > 0, f"{name}: zero gradient"
        candidates = np.flatnonzero(flat > 1e-3 * flat.max())
        picks = rng.choice(candidates, min(n_entries, len(candidates)), replace=False)
        for idx in picks:
            mi = np.unravel_index(idx, value.shape) if value.shape else ()
            h = 1e-6 * max(1.0, abs(float(value[mi])))
            fd = central(where, mi, h, name)
            fd_half = central(where, mi, h / 2, name)
            assert abs(fd - fd_half) <= 0.5 * GRAD_RTOL * abs(fd_half) + 1e-12, (
                f"{name}{mi}: finite differences {fd!r} (h) and {fd_half!r} (h/2) "
                "disagree: a kink within h; pick another case"
            )
            g = float(grad[mi])
            assert abs(g - fd_half) <= GRAD_RTOL * abs(fd_half) + 1e-12, (
                f"{name}{mi}: grad {g!r} vs finite difference {fd_half!r}"
            )
            checked += 1
    return checked


def test_gradients_through_two_layers_and_recurrence():
    _, refs, net, inp, _ = simulated_network("two_layers")
    loss, grads = network_loss_and_grad(net, inp)
    expected = np_spike_loss(refs[-1].padded(MAX_SPIKES))
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    leaves = [
        ("W1", lambda n: n.layers[0].weight),
        ("W_rec1", lambda n: n.layers[0].recurrent_weight),
        ("W2", lambda n: n.layers[1].weight),
        ("tau_mem1", lambda n: n.layers[0].dynamics.tau_mem),
        ("tau_syn1", lambda n: n.layers[0].dynamics.tau_syn),
        ("tau_mem2", lambda n: n.layers[1].dynamics.tau_mem),
        ("tau_syn2", lambda n: n.layers[1].dynamics.tau_syn),
    ]
    rng = np.random.default_rng(0)
    assert check_fd(net, inp, grads, leaves, rng, n_entries=2) >= 10


# -- batching and jit ----------------------------------------------------------------


def test_vmap_equals_loop():
    spec, W, _, _ = layer_case("cuba_4to1")
    layer = make_layer(N_INPUTS, N_LAYER, dynamics_for(spec), W)
    trains = [
        spike_train(*grid_inputs(seed, n)) for seed, n in [(31, 40), (32, 25), (33, 10)]
    ]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *trains)
    bsol = run_batch(layer, batch, T_END, MAX_SPIKES)
    assert bsol.spike_times.shape == (3, N_LAYER, MAX_SPIKES)
    assert np.all(np.asarray(bsol.result == sj.RESULTS.successful))
    for b, train in enumerate(trains):
        sol = run(layer, train, T_END, MAX_SPIKES)
        np.testing.assert_array_equal(
            np.asarray(bsol.num_spikes[b]), np.asarray(sol.num_spikes)
        )
        np.testing.assert_allclose(
            np.asarray(bsol.spike_times[b]),
            np.asarray(sol.spike_times),
            rtol=0,
            atol=1e-12,
        )
        assert sol.result == sj.RESULTS.successful
        # ... and each run against the reference, so both cannot agree on a wrong answer.
        times = np.asarray(train.times)
        ref = simulate_layer(
            W, times, np.asarray(train.sources), T_END, **reference_kwargs(spec)
        )
        assert ref.counts.sum() > 0
        assert_matches_reference(sol, ref, f"batch element {b}")


def test_jit_equals_eager():
    W, times, sources = special_lif_case()
    layer = make_layer(N_INPUTS, N_LAYER, sj.ODELIFDynamics(tau_mem=20.0), W)
    inp = spike_train(times, sources)
    eager = layer.simulate(inp, t_end=T_END, max_spikes=MAX_SPIKES)
    jitted = run(layer, inp, T_END, MAX_SPIKES)
    assert np.asarray(jitted.num_spikes).sum() > 0
    np.testing.assert_array_equal(
        np.asarray(eager.num_spikes), np.asarray(jitted.num_spikes)
    )
    np.testing.assert_allclose(
        np.asarray(eager.spike_times),
        np.asarray(jitted.spike_times),
        rtol=0,
        atol=1e-12,
    )
    assert eager.result == jitted.result


# -- buffers, budgets and argument checks --------------------------------------------


def _message(item):
    """The start of a RESULTS message, as a regex."""
    return re.escape(sj.RESULTS[item][:40])


def test_spike_buffer_full():
    spec, W, times, sources = layer_case("lif")
    layer = make_layer(N_INPUTS, N_LAYER, dynamics_for(spec), W)
    inp = spike_train(times, sources)
    ref = simulate_layer(W, times, sources, T_END, **reference_kwargs(spec))
    assert ref.counts.max() >= 3
    with pytest.raises(Exception, match=_message(sj.RESULTS.spike_buffer_full)):
        run(layer, inp, T_END, 2, True)
    sol = run(layer, inp, T_END, 2, False)
    assert sol.result == sj.RESULTS.spike_buffer_full
    # What was recorded is right: each neuron's first spikes.
    times_got = np.asarray(sol.spike_times)
    assert times_got.shape == (N_LAYER, 2)
    for j, ts in enumerate(times_got):
        got = ts[np.isfinite(ts)]
        np.testing.assert_allclose(got, ref.spike_times[j][: len(got)], atol=TIME_ATOL)


def runaway_layer():
    """A zero-delay excitatory loop (0 <-> 1, each lifting the other to threshold)
    that never ends once neuron 0 fires."""
    W = np.zeros((N_LAYER, N_INPUTS))
    W[0, 0] = 1.5
    W_rec = np.zeros((N_LAYER, N_LAYER))
    W_rec[0, 1] = W_rec[1, 0] = 1.0
    return make_layer(
        N_INPUTS, N_LAYER, sj.ODELIFDynamics(tau_mem=20.0), W, W_rec=W_rec, delay=0.0
    )


def test_event_budget():
    message = _message(sj.RESULTS.max_events_reached)
    # The runaway loop exhausts the budget (before it fills the spike buffer: each
    # pass of the loop is one spike per neuron of the loop).
    inp = spike_train([3.0], [0])
    with pytest.raises(Exception, match=message):
        run(runaway_layer(), inp, T_END, MAX_SPIKES, True, 3)
    sol = run(runaway_layer(), inp, T_END, MAX_SPIKES, False, 3)
    assert sol.result == sj.RESULTS.max_events_reached
    # A busy but finite run (same structure, no recurrent weight): a tiny budget
    # fails, the usual one is enough.
    spec, W, times, sources = layer_case("lif")
    busy = make_layer(
        N_INPUTS,
        N_LAYER,
        dynamics_for(spec),
        W,
        W_rec=np.zeros((N_LAYER, N_LAYER)),
        delay=0.0,
    )
    inp = spike_train(times, sources)
    with pytest.raises(Exception, match=message):
        run(busy, inp, T_END, MAX_SPIKES, True, 3)
    sol = run(busy, inp, T_END, MAX_SPIKES, False, 3)
    assert sol.result == sj.RESULTS.max_events_reached
    # Called as the recurrent cases above call it (same structure, same arguments):
    # their compiled run serves.
    ok = run(busy, inp, T_END, MAX_SPIKES, max_events=BUDGET)
    assert ok.result == sj.RESULTS.successful
    ref = simulate_layer(W, times, sources, T_END, **reference_kwargs(spec))
    assert_matches_reference(ok, ref, "usual budget")


@pytest.mark.parametrize(
    "times, sources, name",
    [
        ([1.0, np.nan], [0, 1], "times"),
        ([1.0, -0.5], [0, 1], "times"),
        ([1.0, T_END + 1.0], [0, 1], "times|t_end"),
        ([1.0, 2.0], [0, N_INPUTS], "sources"),
        ([1.0, 2.0], [-1, 0], "sources"),
    ],
)
def test_bad_inputs_raise(times, sources, name):
    layer = make_layer(
        N_INPUTS, N_LAYER, sj.ODELIFDynamics(), np.ones((N_LAYER, N_INPUTS))
    )
    with pytest.raises(ValueError, match=name):
        inp = sj.SpikeTrain(times=jnp.asarray(times, F64), sources=jnp.asarray(sources))
        layer.simulate(inp, t_end=T_END, max_spikes=MAX_SPIKES)


def test_padding_sources_are_ignored():
    # +inf entries are padding: their sources may be anything, even out of range.
    layer = make_layer(
        N_INPUTS, N_LAYER, sj.ODELIFDynamics(), np.ones((N_LAYER, N_INPUTS))
    )
    t = np.full(PAD, np.inf)
    s = np.full(PAD, -3)
    t[[0, 5]] = [2.0, 1.0]
    s[[0, 5]] = [1, 0]
    s[[1, 2]] = [99, N_INPUTS]
    inp = sj.SpikeTrain(times=jnp.asarray(t), sources=jnp.asarray(s))
    sol = run(layer, inp, T_END, MAX_SPIKES)
    np.testing.assert_array_equal(np.asarray(sol.num_spikes), np.full(N_LAYER, 2))
    np.testing.assert_array_equal(
        np.asarray(sol.spike_times)[:, :2], [[1.0, 2.0]] * N_LAYER
    )


def test_network_with_single_spike_output_layer():
    """`after_max_spikes` per spiking layer: a time-to-first-spike output layer whose
    neurons fire once gives the first spike times (and their gradient) of the
    unlimited network, with fewer events; a wrong-length tuple is refused."""
    key = jax.random.key(11)
    k1, k2 = jax.random.split(key)
    dyn = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=4.0)
    hidden = sj.SpikingODELayer(3, 12, dyn, dtype=jnp.float64, key=k1)
    hidden = eqx.tree_at(
        lambda m: m.weight, hidden, 0.3 + 0.12 * jax.random.normal(k1, (12, 3))
    )
    out = sj.SpikingODELayer(12, 2, dyn, dtype=jnp.float64, key=k2)
    out = eqx.tree_at(
        lambda m: m.weight, out, 0.1 + 0.03 * jax.random.normal(k2, (2, 12))
    )
    net = sj.SpikingODENetwork([hidden, out])
    train = sj.SpikeTrain(jnp.array([1.0, 4.0, 6.0]), jnp.array([0, 1, 2]))

    def first(net, **kwargs):
        sol = net.simulate(train, t_end=40.0, **kwargs)
        t = sj.first_spike_times(sol.output)
        return jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0)), sol

    (_, wide), g_wide = eqx.filter_value_and_grad(first, has_aux=True)(
        net, max_spikes=64
    )
    (_, once), g_once = eqx.filter_value_and_grad(first, has_aux=True)(
        net, max_spikes=(64, 1), after_max_spikes=("fail", "silence")
    )
    assert int(jnp.min(wide.output.num_spikes)) >= 3  # the outputs fire on
    np.testing.assert_array_equal(
        np.asarray(once.output.spike_times[:, 0]),
        np.asarray(wide.output.spike_times[:, 0]),
    )
    np.testing.assert_array_equal(np.asarray(once.output.num_spikes), [1, 1])
    assert int(once.output.stats["num_events"]) < int(wide.output.stats["num_events"])
    for a, b in zip(jax.tree.leaves(g_once), jax.tree.leaves(g_wide)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0)
    assert float(jnp.max(jnp.abs(g_once.layers[0].weight))) > 0
    with pytest.raises(ValueError, match="after_max_spikes.*one per spiking layer"):
        net.simulate(train, t_end=40.0, after_max_spikes=("fail",))


def test_another_t_end_reuses_the_compiled_run():
    """`t_end` reaches the compiled event run as an array: a run over another
    duration reuses it and still stops at its own end (spike counts against the
    reference over each duration; the synaptic current makes spikes come after
    the last input)."""
    from snode_jax._layer import _integrate_events_jit

    dyn = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=5.0)
    layer = sj.SpikingODELayer(2, 3, dyn, key=jax.random.key(3))
    weight = jnp.array([[1.0, 0.0], [0.6, 0.6], [0.0, 0.5]])
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    train = sj.SpikeTrain(jnp.array([0.5, 1.0, 2.0]), jnp.array([0, 1, 0]))
    _integrate_events_jit._cached.clear_cache()
    totals = []
    for t_end in (3.0, 12.0):
        sol = layer.simulate(train, t_end=t_end, max_spikes=8)
        ref = simulate_layer(
            np.asarray(weight),
            np.asarray(train.times),
            np.asarray(train.sources),
            t_end,
            model="cuba",
            tau_mem=10.0,
            tau_syn=5.0,
            C_mem=dyn.C_mem,
        )
        np.testing.assert_array_equal(np.asarray(sol.num_spikes), ref.counts)
        totals.append(int(ref.counts.sum()))
    assert _integrate_events_jit._cached._cache_size() == 1
    assert totals[1] > totals[0]


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
def test_large_population_crossings_searched_in_subsets(recurrent):
    """120 CubaLIF neurons driven by the same few input spikes, most of them
    crossing threshold between the same two events: more than one subset of the
    crossing search (at least 32 neurons each), on both engines; every spike time
    against the reference."""
    n = 120
    rng = np.random.default_rng(7)
    W = rng.uniform(0.3, 0.8, (n, 2))
    spec = dict(model="cuba", tau_mem=10.0, tau_syn=5.0)
    # Weak inhibition: no runaway loop, every spike still delivered.
    W_rec = -rng.uniform(0.0, 0.01, (n, n)) if recurrent else None
    times, sources = [1.0, 2.0, 20.0], [0, 1, 0]
    kwargs = dict(W_rec=W_rec, delay=1.0) if recurrent else {}
    ref = simulate_layer(W, times, sources, T_END, **spec, **kwargs)
    dyn = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=5.0)
    layer = make_layer(2, n, dyn, W, **kwargs)
    sol = run(layer, spike_train(times, sources), T_END, MAX_SPIKES)
    # Most neurons fire their first spike between the second input and the third.
    first = np.array([t[0] for t in ref.spike_times if len(t)])
    assert np.sum((first > 2.0) & (first < 20.0)) > 64
    assert_matches_reference(sol, ref, f"recurrent={recurrent}")
    assert sol.result == sj.RESULTS.successful


def test_first_spike_times_needs_recorded_spikes():
    layer = make_layer(
        N_INPUTS, N_LAYER, sj.ODELIFDynamics(), np.ones((N_LAYER, N_INPUTS))
    )
    sol = layer.simulate(np.ones((3, N_INPUTS)), 1.0, max_spikes=0, throw=False)
    with pytest.raises(ValueError, match=r"run with max_spikes >= 1"):
        sj.first_spike_times(sol)
    # Not a layer's Solution: named, not an AttributeError.
    for other in (sol.spike_times, (sol,)):
        with pytest.raises(TypeError, match="`first_spike_times` takes the Solution"):
            sj.first_spike_times(other)  # type: ignore[arg-type]
    # A failed run's `+inf` may be a neuron the run stopped before it fired: that
    # raises unless asked not to (it returned the times as a success).
    failed = layer.simulate(np.ones((3, N_INPUTS)), 1.0, max_spikes=1, throw=False)
    assert failed.result == sj.RESULTS.spike_buffer_full
    with pytest.raises(eqx.EquinoxRuntimeError, match="first_spike_times.. of a fail"):
        jax.block_until_ready(sj.first_spike_times(failed))
    first = sj.first_spike_times(failed, throw=False)
    np.testing.assert_array_equal(first, failed.spike_times[:, 0])
    assert np.all(np.isfinite(first))
    with pytest.raises(TypeError, match="`throw` must be True or False, got None"):
        sj.first_spike_times(failed, throw=None)  # type: ignore[arg-type]


def test_a_failure_in_a_network_names_its_layer():
    """A run that fails inside a network says which layer failed (and its spike
    budget, which may differ per layer), eager and under `jit`; the layer run
    alone says it without the prefix."""
    key = jax.random.key(0)
    first = eqx.tree_at(
        lambda m: m.weight, sj.SpikingODELayer(2, 3, key=key), jnp.full((3, 2), 3.0)
    )
    second = eqx.tree_at(
        lambda m: m.weight, sj.SpikingODELayer(3, 2, key=key), jnp.full((2, 3), 3.0)
    )
    net = sj.SpikingODENetwork([first, second, sj.LeakyReadout(2, 1, key=key)])
    train = sj.SpikeTrain(jnp.arange(1.0, 20.0), jnp.zeros(19, jnp.int32))
    full = r"More spikes occurred than fit in the spike buffer"
    jitted = lambda budgets: eqx.filter_jit(
        lambda t: net.simulate(t, t_end=30.0, max_spikes=budgets).output.max_voltage
    )
    for budgets, i in (((64, 2), 1), ((2, 64), 0)):
        where = rf"In `layers\[{i}\]` of the network \(max_spikes=2\): {full}"
        with pytest.raises(eqx.EquinoxRuntimeError, match=where):
            net.simulate(train, t_end=30.0, max_spikes=budgets)
        with pytest.raises(eqx.EquinoxRuntimeError, match=where):
            jax.block_until_ready(jitted(budgets)(train))
    # With `throw=False`, the layers after the failed one say that their input
    # came from it (they reported success on the truncated train).
    nsols = []
    for budgets, i in (((64, 2), 1), ((2, 64), 0)):
        nsol = net.simulate(train, t_end=30.0, max_spikes=budgets, throw=False)
        results = [sol.result for sol in nsol.layers]
        assert results[i] == sj.RESULTS.spike_buffer_full
        assert all(r == sj.RESULTS.successful for r in results[:i])
        assert all(r == sj.RESULTS.input_from_failed_layer for r in results[i + 1 :])
        assert nsol.result == sj.RESULTS.spike_buffer_full
        nsols.append(nsol)
    # Batched (as `jax.vmap` returns it), per element; with a success among them
    # (`RESULTS.where` refused the batched predicate).
    ok = net.simulate(train, t_end=30.0, max_spikes=64)
    stacked = [
        jax.tree.map(lambda *a: jnp.stack(a), *(n.layers[k].result for n in runs))
        for runs in [(*nsols, ok)]
        for k in range(3)
    ]
    batched = eqx.tree_at(lambda n: [s.result for s in n.layers], ok, stacked)
    np.testing.assert_array_equal(
        np.asarray(batched.result == sj.RESULTS.spike_buffer_full), [True, True, False]
    )
    assert bool(np.asarray(batched.result == sj.RESULTS.successful)[2])
    with pytest.raises(eqx.EquinoxRuntimeError, match="An earlier layer of the"):
        nsol.layers[1].spike_train()
    # With every budget large enough, the run succeeds.
    assert (
        net.simulate(train, t_end=30.0, max_spikes=64).result == sj.RESULTS.successful
    )
    # A model's named condition, and the readout's outcome.
    bad = eqx.tree_at(lambda m: m.layers[1].dynamics.tau_mem, net, jnp.asarray(-1.0))
    with pytest.raises(
        eqx.EquinoxRuntimeError,
        match=r"In `layers\[1\]` of the network \(max_spikes=64\): Invalid parameters "
        r"or initial state of ODELIFDynamics found at run time: need tau_mem > 0",
    ):
        bad.simulate(train, t_end=30.0)
    nan = eqx.tree_at(lambda m: m.layers[2].weight, net, jnp.full((1, 2), jnp.nan))
    with pytest.raises(
        eqx.EquinoxRuntimeError,
        match=r"In `layers\[2\]` of the network \(the readout\): The inputs, the "
        "parameters",
    ):
        jax.block_until_ready(nan.simulate(train, t_end=30.0).output.max_voltage)
    with pytest.raises(eqx.EquinoxRuntimeError, match=rf"EquinoxRuntimeError: {full}"):
        first.simulate(train, t_end=30.0, max_spikes=2)


def test_network_argument_errors():
    key = jax.random.key(0)
    net = sj.SpikingODENetwork(
        [sj.SpikingODELayer(2, 3, key=key), sj.SpikingODELayer(3, 1, key=key)]
    )
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    for bad in (True, "ab", np.array([[4, 2]])):
        with pytest.raises(TypeError, match=r"`max_spikes` must be an int or one int"):
            net.simulate(train, t_end=5.0, max_spikes=bad)
    # A 0-d integer array is an int (a JAX one too, as a layer takes it); an
    # array of one per layer is a sequence.
    for good in (np.array(4), jnp.array(4), np.array([4, 2]), jnp.array([4, 2])):
        sol = net.simulate(train, t_end=5.0, max_spikes=good)
        assert sol.layers[0].spike_times.shape == (3, 4)
    with pytest.raises(TypeError, match=r"`inputs` .* must be a SpikeTrain"):
        net.simulate(np.ones((3, 2)), t_end=5.0)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype"):
        sj.LeakyReadout(3, 2, dtype=jnp.int32, key=key)
    # A float32 layer's spike at its `t_end` (rounded up) was past a float64 next
    # layer's, which refused it as an invalid input spike.
    for last in (
        sj.SpikingODELayer(3, 1, dtype=jnp.float64, key=key),
        sj.LeakyReadout(3, 1, dtype=jnp.float64, key=key),
    ):
        f32 = sj.SpikingODELayer(2, 3, dtype=jnp.float32, key=key)
        with pytest.raises(
            ValueError, match=r"share one dtype .* `layers\[1\]` float64"
        ):
            sj.SpikingODENetwork([f32, last])


def test_readout_max_time_gradient():
    """The time of a readout's peak between inputs moves with the parameters, the
    weights and the input times: against central differences (the peak stays
    between the same inputs)."""

    def peak_time(tau_syn, w, t2):
        ro = sj.LeakyReadout(
            2,
            1,
            sj.CubaLIFDynamics(tau_mem=20.0, tau_syn=tau_syn),
            key=jax.random.key(0),
        )
        ro = eqx.tree_at(lambda r: r.weight, ro, jnp.array([[1.0, w]]))
        train = sj.SpikeTrain(jnp.array([1.0, t2]), jnp.array([0, 1]))
        return ro.simulate(train, t_end=40.0).max_time[0]

    x = (5.0, 0.5, 4.0)
    assert 4.0 < float(peak_time(*x)) < 40.0  # between the inputs' and t_end
    grad = jax.grad(peak_time, (0, 1, 2))(*x)
    eps = 1e-5
    for i in range(3):
        up = list(x)
        down = list(x)
        up[i] += eps
        down[i] -= eps
        fd = (float(peak_time(*up)) - float(peak_time(*down))) / (2 * eps)
        assert abs(fd) > 0.1
        np.testing.assert_allclose(grad[i], fd, rtol=1e-7)


def test_readout_max_time_gradient_at_equal_time_constants():
    """One input spike at `t_in` into a CubaLIF readout at rest peaks at `t_in +
    tm ts log(tm / ts) / (tm - ts)`, symmetric in the two time constants; at `tm ==
    ts = tau` that is `t_in + tau`, and each time constant moves it by 1/2 (the
    closed form's derivative, the limit of the neighbouring points')."""

    def peak_time(tm, ts):
        ro = sj.LeakyReadout(
            1, 1, sj.CubaLIFDynamics(tau_mem=tm, tau_syn=ts), key=jax.random.key(0)
        )
        ro = eqx.tree_at(lambda r: r.weight, ro, jnp.ones((1, 1)))
        train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
        return ro.simulate(train, t_end=40.0).max_time[0]

    def closed_form_grad(tm, ts):
        # d/dtm and d/dts of tm ts log(tm / ts) / (tm - ts), for tm != ts.
        q = tm - ts
        log = np.log(tm / ts)
        d_tm = (ts * log + ts) / q - tm * ts * log / q**2
        d_ts = (tm * log - tm) / q + tm * ts * log / q**2
        return d_tm, d_ts

    assert float(peak_time(10.0, 10.0)) == pytest.approx(11.0, rel=1e-15)
    np.testing.assert_allclose(
        jax.grad(peak_time, (0, 1))(10.0, 10.0), [0.5, 0.5], rtol=1e-12
    )
    # Beside equality, the closed form; 1e-6 away from it, 1/2 to the first order
    # of the gap (about 3e-7 here); 1e-14 away, 1/2 (the closed form's derivative
    # cancels there: it gave 0.494 and 0.506).
    np.testing.assert_allclose(
        jax.grad(peak_time, (0, 1))(10.0, 12.0), closed_form_grad(10.0, 12.0), rtol=1e-9
    )
    np.testing.assert_allclose(
        jax.grad(peak_time, (0, 1))(10.0, 10.00001), [0.5, 0.5], rtol=2e-6
    )
    np.testing.assert_allclose(
        jax.grad(peak_time, (0, 1))(10.0, 10.0 * (1 + 1e-14)), [0.5, 0.5], rtol=1e-10
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("rel", [1e-4, 1e-3, 1e-2, -3e-3])
def test_readout_max_time_gradient_near_equal_time_constants(dtype, rel):
    """Where the time constants differ by 1e-4 to 1e-2 relative, the peak time's
    derivatives against high-precision differences of its closed form. (With the
    series only below 1e-4, the closed form's derivative cancelled just above it:
    7e-4 relative error in float32, 1.6e-12 in float64.)"""
    tm = np.asarray(20.0, dtype)
    ts = np.asarray(20.0 * (1 + rel), dtype)

    def peak_time(tm, ts):
        ro = sj.LeakyReadout(
            1, 1, sj.CubaLIFDynamics(tau_mem=tm, tau_syn=ts), dtype=dtype,
            key=jax.random.key(0),
        )  # fmt: skip
        ro = eqx.tree_at(lambda r: r.weight, ro, jnp.ones((1, 1), dtype))
        train = sj.SpikeTrain(jnp.array([0.0], dtype), jnp.array([0]))
        return ro.simulate(train, t_end=200.0).max_time[0]

    got = jax.grad(peak_time, (0, 1))(jnp.asarray(tm), jnp.asarray(ts))
    peak = lambda tm, ts: tm * ts * (tm / ts).ln() / (tm - ts)  # (decimal)
    expected = decimal_partials(peak, float(tm), float(ts))
    # Either form is within about eps^(5/6) where they meet (the series' cutoff).
    rtol = 4 * float(jnp.finfo(dtype).eps) ** (5 / 6)  # 6.8e-6; 3.6e-13
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol)


@pytest.mark.parametrize(
    "dtype, gap, tm, ts",
    [
        (jnp.float32, 200.0, 20.0, 5.0),
        (jnp.float32, 400.0, 20.0, 5.0),
        (jnp.float32, 5000.0, 20.0, 5.0),
        (jnp.float32, 5000.0, 5.0, 20.0),
        (jnp.float64, 1300.0, 20.0, 5.0),
        (jnp.float64, 3000.0, 20.0, 5.0),
        (jnp.float64, 1e5, 20.0, 5.0),
        (jnp.float64, 1e5, 5.0, 20.0),
    ],
)
def test_readout_max_time_gradient_after_the_current_has_decayed(dtype, gap, tm, ts):
    """A second input (weight 0) long after the first starts a segment whose
    synaptic current has all but decayed: there the peak-time series near equal
    time constants, although not the value taken, overflowed in its powers of the
    ratio `u0 / d` (from 200 ms in float32, 1300 ms in float64), and the ratio's
    own derivative overflowed (from about 400 ms and 3000 ms); each made the
    gradient of max_time NaN. The peak after the first input, at `1 + tm ts
    log(tm / ts) / (tm - ts)`, against its closed-form derivative. Further on (from
    about 1000 ms in float32 and 10000 ms in float64), the membrane kernel's form
    for the other sign of `1/tau_syn - 1/tau_mem`, not taken, overflowed; both
    signs here."""

    def peak_time(tm, ts):
        ro = sj.LeakyReadout(
            2, 1, sj.CubaLIFDynamics(tau_mem=tm, tau_syn=ts), dtype=dtype,
            key=jax.random.key(0),
        )  # fmt: skip
        ro = eqx.tree_at(lambda r: r.weight, ro, jnp.array([[1.0, 0.0]], dtype))
        train = sj.SpikeTrain(jnp.array([1.0, gap], dtype), jnp.array([0, 1]))
        return ro.simulate(train, t_end=gap + 50.0).max_time[0]

    q, log = tm - ts, np.log(tm / ts)
    expected = [
        (ts * log + ts) / q - tm * ts * log / q**2,
        (tm * log - tm) / q + tm * ts * log / q**2,
    ]
    t0 = peak_time(jnp.asarray(tm, dtype), jnp.asarray(ts, dtype))
    assert float(t0) == pytest.approx(1 + tm * ts * log / q, rel=1e-6)
    grad = jax.grad(peak_time, (0, 1))(jnp.asarray(tm, dtype), jnp.asarray(ts, dtype))
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=rtol)
