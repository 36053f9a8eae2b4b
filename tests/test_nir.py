"""NIR interchange (`snode_jax.nir`) and the integrate-and-fire model it brought in.

Ground truths: the IF neuron's closed form (a straight line between spikes); the
NIR equations integrated event by event in NIR's own units (seconds) by the
independent NumPy reference `tests/network_reference.py`, with each Dirac input
spike turned into the jump it causes (written out below from NIR's equations);
and a `.nir` file written by another library (spyx, `tests/fixtures/`).
"""

import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

nir = pytest.importorskip("nir")
from snode_jax.nir import from_nir, to_nir  # noqa: E402

from .network_reference import simulate_network  # noqa: E402

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "spyx_cubalif_lif.nir"
EPS = np.finfo(np.float64).eps


# -- the IF neuron against its closed form --------------------------------------------


def if_reference(currents, interval, C, v_th, v_reset):
    """Spike times of IF neurons under piecewise-constant currents `(T, n)`: within
    an interval the voltage is `v + t I / C`, so the next spike is `(v_th - v) C / I`
    ms away (for `I > 0`) and the following ones every `(v_th - v_reset) C / I`."""
    T, n = currents.shape
    times = [[] for _ in range(n)]
    v_end = np.zeros(n)
    for j in range(n):
        v = v_reset[j]
        for k in range(T):
            slope = currents[k, j] / C[j]
            t = 0.0
            while slope > 0 and t + (v_th[j] - v) / slope <= interval:
                t += (v_th[j] - v) / slope
                times[j].append(k * interval + t)
                v = v_reset[j]
            v = v + (interval - t) * slope
        v_end[j] = v
    return times, v_end


def test_if_dense_inputs_closed_form(getkey):
    n = 4
    C = np.array([1.0, 2.0, 0.5, 1.5])
    v_th = np.array([1.0, 0.7, 1.2, 1.0])
    v_reset = np.array([0.0, -0.3, 0.1, 0.2])
    dyn = sj.IFDynamics(v_threshold=v_th, v_reset=v_reset, C_mem=C)
    layer = sj.SpikingODELayer(2, n, dyn, key=getkey())
    weight = np.array([[1.0, 0.5], [0.8, -0.2], [-1.0, 0.3], [0.25, 0.25]])
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight))
    x = np.array([[1.0, 2.0], [0.5, 0.0], [2.0, 1.0]])
    # 3.7 ms: no spike falls on an interval end (a tie the two could round apart).
    sol = layer.simulate(x, interval=3.7, max_spikes=32)
    times, v_end = if_reference(x @ weight.T, 3.7, C, v_th, v_reset)
    for j in range(n):
        got = np.asarray(sol.spike_times[j])
        assert np.sum(np.isfinite(got)) == len(times[j])
        # Located by bracketed Newton on the exact (linear) flow: to a few ulp of
        # the simulated span.
        np.testing.assert_allclose(got[: len(times[j])], times[j], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sol.final_state.v, v_end, rtol=0, atol=1e-12)
    assert sum(len(t) for t in times) >= 10  # the test exercises many resets


def test_if_first_spike_time_and_gradient(getkey):
    """t = (v_th - v0) C / I, and its derivative in C is (v_th - v0) / I."""
    dyn = sj.IFDynamics(v_threshold=1.5, v_reset=0.25, C_mem=2.0)
    layer = sj.SpikingODELayer(1, 1, dyn, key=getkey())
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[0.8]]))

    def first(layer):
        return layer.simulate(jnp.ones((1, 1)), interval=5.0, max_spikes=4).spike_times[
            0, 0
        ]

    t, grads = eqx.filter_value_and_grad(first)(layer)
    np.testing.assert_allclose(t, (1.5 - 0.25) * 2.0 / 0.8, rtol=1e-13)
    np.testing.assert_allclose(grads.dynamics.C_mem, (1.5 - 0.25) / 0.8, rtol=1e-9)
    # d t / d v_reset (the start) = -C / I; d t / d w = -t / w.
    np.testing.assert_allclose(grads.dynamics.v_reset, -2.0 / 0.8, rtol=1e-9)
    np.testing.assert_allclose(grads.weight[0, 0], -t / 0.8, rtol=1e-9)


def test_if_spike_train_and_recurrence(getkey):
    """Event-driven: each input spike adds its weight to `v`; with a dense drive
    and a delayed recurrent inhibition the spike times follow the straight lines
    between events (checked against a hand-derived sequence)."""
    dyn = sj.IFDynamics(v_threshold=1.0, v_reset=0.0, C_mem=1.0)
    layer = sj.SpikingODELayer(1, 2, dyn, key=getkey())
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[0.4], [0.6]]))
    train = sj.SpikeTrain(jnp.array([1.0, 2.0, 3.0, 4.5]), jnp.array([0, 0, 0, 0]))
    sol = layer.simulate(train, t_end=6.0, max_spikes=4)
    # Neuron 0: 0.4, 0.8, 1.2 >= 1 at t = 3 -> spike, reset; 0.4 at 4.5.
    # Neuron 1: 0.6, 1.2 at t = 2 -> spike; 0.6 at 3; 1.2 at 4.5 -> spike.
    np.testing.assert_array_equal(sol.spike_times[0, :2], [3.0, np.inf])
    np.testing.assert_array_equal(sol.spike_times[1, :3], [2.0, 4.5, np.inf])
    np.testing.assert_allclose(sol.final_state.v, [0.4, 0.0], atol=1e-15)

    # One neuron driven by a constant current 1 (slope 1 per ms), inhibiting
    # itself by 0.5 after a delay of 0.25 ms: spikes at 1; the inhibition lands at
    # 1.25 (v = 0.25 - 0.5 = -0.25), so the next spike is at 1.25 + 1.25 = 2.5,
    # then every 1.5 ms: 4.0, 5.5.
    rec = sj.SpikingODELayer(1, 1, dyn, recurrent=True, delay=0.25, key=getkey())
    rec = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        rec,
        (jnp.array([[1.0]]), jnp.array([[-0.5]])),
    )
    sol = rec.simulate(jnp.ones((1, 1)), interval=6.0, max_spikes=8)
    np.testing.assert_allclose(
        sol.spike_times[0, :5], [1.0, 2.5, 4.0, 5.5, np.inf], rtol=0, atol=1e-12
    )


def test_if_rejects_bad_parameters():
    with pytest.raises(ValueError, match="C_mem"):
        sj.IFDynamics(C_mem=0.0)
    with pytest.raises(ValueError, match="v_reset"):
        sj.IFDynamics(v_threshold=1.0, v_reset=1.0)


# -- round trips ---------------------------------------------------------------------


def _network(seed):
    """CubaLIF (recurrent, inhibitory, 0.5 ms delay) -> LIF -> IF (recurrent, no
    delay) -> CubaLIF readout, with parameters shared and per neuron."""
    rng = np.random.default_rng(seed)
    u = lambda shape, lo, hi: jnp.asarray(rng.uniform(lo, hi, shape))
    key = jax.random.key(seed)
    cuba = sj.CubaLIFDynamics(
        tau_mem=jnp.array([10.0, 14.0, 18.0, 22.0, 26.0]),
        tau_syn=4.0,
        v_rest=0.05,
        v_threshold=jnp.array([0.9, 1.0, 1.1, 1.0, 0.95]),
        v_reset=-0.2,
        C_mem=0.7,
    )
    l1 = sj.SpikingODELayer(3, 5, cuba, recurrent=True, delay=0.5, key=key)
    l1 = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        l1,
        (u((5, 3), 0.0, 0.3), u((5, 5), -0.3, 0.03)),
    )
    lif = sj.ODELIFDynamics(tau_mem=15.0, v_rest=0.1, v_reset=0.0, C_mem=2.0)
    l2 = sj.SpikingODELayer(5, 4, lif, key=key)
    l2 = eqx.tree_at(lambda m: m.weight, l2, u((4, 5), 0.0, 0.8))
    iff = sj.IFDynamics(v_threshold=jnp.array([1.0, 0.8, 1.2]), C_mem=3.0)
    l3 = sj.SpikingODELayer(4, 3, iff, recurrent=True, key=key)
    l3 = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        l3,
        (u((3, 4), 0.0, 0.6), u((3, 3), -0.3, 0.03)),
    )
    readout_dyn = sj.CubaLIFDynamics(tau_mem=20.0, tau_syn=5.0)
    readout = sj.LeakyReadout(3, 2, readout_dyn, key=key)
    readout = eqx.tree_at(lambda m: m.weight, readout, u((2, 3), -1.0, 1.0))
    return sj.SpikingODENetwork([l1, l2, l3, readout])


def _random_train(seed, n_inputs, n_spikes, t_max):
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, t_max, n_spikes))
    return sj.SpikeTrain(times, rng.integers(0, n_inputs, n_spikes))


@pytest.fixture(scope="module")
def network():
    return _network(1)


def _assert_same_module(a, b, rtol):
    assert jax.tree.structure(a) == jax.tree.structure(b)  # types, statics, delays
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.shape(x) == np.shape(y)
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=rtol, atol=0)


def test_module_nir_module_round_trip(network, tmp_path):
    graph = to_nir(network)
    assert [type(graph.nodes[k]).__name__ for k in graph.nodes] == [
        "Input", "Linear", "CubaLIF", "Linear", "Delay", "Linear", "LIF",
        "Linear", "IF", "Linear", "Linear", "CubaLI", "Output",
    ]  # fmt: skip
    np.testing.assert_allclose(graph.nodes["delay_0"].delay, 0.5e-3, rtol=1e-15)
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    back = from_nir(path)
    assert isinstance(back, sj.SpikingODENetwork)
    # Each parameter passes through a product and a quotient each way (`tau/s*s`,
    # `s tau / (tau / C)`, `(r / tau) (tau / r) w`): a few ulp.
    _assert_same_module(network, back, rtol=4 * EPS)
    assert back.layers[0].delay == 0.5 and back.layers[2].delay == 0.0

    train = _random_train(0, 3, 40, 45.0)
    a = network.simulate(train, t_end=50.0, max_spikes=24)
    b = back.simulate(train, t_end=50.0, max_spikes=24)
    counts = [int(np.sum(np.isfinite(s.spike_times))) for s in a.layers[:3]]
    assert min(counts) >= 3, counts  # every spiking layer is active
    for sa, sb in zip(a.layers[:3], b.layers[:3]):
        np.testing.assert_array_equal(
            np.isfinite(sa.spike_times), np.isfinite(sb.spike_times)
        )
        # Parameters a few ulp apart move crossing times by a few ulp of t_end
        # times the crossings' condition (slopes of order 0.1 per ms here).
        np.testing.assert_allclose(sb.spike_times, sa.spike_times, rtol=0, atol=1e-11)
    np.testing.assert_allclose(
        b.output.max_voltage, a.output.max_voltage, rtol=1e-12, atol=1e-14
    )


def _hand_graph(rng, w_in=None):
    n_in, n1, n2, n3 = 3, 4, 3, 2
    u = lambda lo, hi, n: rng.uniform(lo, hi, n)
    nodes = {
        "in": nir.Input(input_type={"input": np.array([n_in])}),
        "w1": nir.Affine(weight=u(0.0, 0.014, (n1, n_in)), bias=np.zeros(n1)),
        "cuba": nir.CubaLIF(
            tau_syn=u(3e-3, 6e-3, n1),
            tau_mem=u(10e-3, 30e-3, n1),
            r=u(0.5, 2.0, n1),
            v_leak=u(-0.1, 0.1, n1),
            v_threshold=u(0.8, 1.2, n1),
            v_reset=u(-0.3, -0.1, n1),
            w_in=np.ones(n1) if w_in is None else w_in,
        ),
        "wrec": nir.Linear(weight=u(-0.004, 0.002, (n1, n1))),
        "d": nir.Delay(delay=np.full(n1, 1e-3)),
        "w2": nir.Linear(weight=u(0.0, 0.003, (n2, n1))),
        "lif": nir.LIF(
            tau=u(10e-3, 20e-3, n2),
            r=u(0.5, 2.0, n2),
            v_leak=np.zeros(n2),
            v_threshold=np.full(n2, 0.6),
            v_reset=u(-0.2, 0.0, n2),
        ),
        "w3": nir.Linear(weight=u(-1.0, 1.0, (n3, n2))),
        "li": nir.LI(tau=u(10e-3, 20e-3, n3), r=u(0.5, 2.0, n3), v_leak=np.zeros(n3)),
        "out": nir.Output(output_type={"output": np.array([n3])}),
    }
    edges = [
        ("in", "w1"), ("w1", "cuba"), ("cuba", "wrec"), ("wrec", "d"), ("d", "cuba"),
        ("cuba", "w2"), ("w2", "lif"), ("lif", "w3"), ("w3", "li"), ("li", "out"),
    ]  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={})


_FIELDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "I": ("r",),
    "Linear": ("weight",),
    "Affine": ("weight",),
    "Delay": ("delay",),
}


def _chain_nodes(graph):
    """The nodes in depth-first order from the Input (a recurrent loop right after
    its population), without Input and Output."""
    succ: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if not isinstance(graph.nodes[name], (nir.Input, nir.Output)):
            order.append(graph.nodes[name])
        for nxt in succ.get(name, []):
            visit(nxt)

    visit(next(k for k, v in graph.nodes.items() if isinstance(v, nir.Input)))
    return order


def test_nir_module_nir_round_trip(tmp_path):
    graph = _hand_graph(np.random.default_rng(1))
    nir.write(tmp_path / "g.nir", graph)
    module = from_nir(tmp_path / "g.nir")
    assert isinstance(module, sj.SpikingODENetwork)
    assert [type(m).__name__ for m in module.layers] == [
        "SpikingODELayer", "SpikingODELayer", "LeakyReadout",
    ]  # fmt: skip
    assert module.layers[0].delay == pytest.approx(1.0, rel=1e-15)
    again = to_nir(module)
    a, b = _chain_nodes(graph), _chain_nodes(again)
    assert [type(x).__name__ for x in a] == [
        "Affine", "CubaLIF", "Linear", "Delay", "Linear", "LIF", "Linear", "LI",
    ]  # fmt: skip
    assert [type(x).__name__ for x in b] == [
        "Linear", "CubaLIF", "Linear", "Delay", "Linear", "LIF", "Linear", "LI",
    ]  # fmt: skip
    for x, y in zip(a, b):
        for field in _FIELDS[type(x).__name__]:
            np.testing.assert_allclose(
                getattr(y, field),
                getattr(x, field),
                rtol=4 * EPS,
                atol=0,
                err_msg=field,
            )


def test_w_in_folds_into_the_weight():
    """`w_in` scales the input current of each neuron: importing folds it into the
    weight rows, and the re-exported graph (with `w_in = 1`) carries the product."""
    rng = np.random.default_rng(2)
    w_in = np.array([0.5, 2.0, 1.5, 0.25])
    graph = _hand_graph(rng, w_in=w_in)
    module = from_nir(graph)
    again = to_nir(module)
    np.testing.assert_array_equal(again.nodes["cubalif_0"].w_in, np.ones(4))
    want = w_in[:, None] * graph.nodes["w1"].weight
    np.testing.assert_allclose(again.nodes["linear_0"].weight, want, rtol=4 * EPS)
    want_rec = w_in[:, None] * graph.nodes["wrec"].weight
    np.testing.assert_allclose(
        again.nodes["recurrent_0"].weight, want_rec, rtol=4 * EPS
    )


def _reference_from_nir_equations(graph_nodes, train, t_end_ms):
    """Simulate the NIR equations in NIR time (seconds) with the NumPy reference.

    A spike is a Dirac delta of unit area, so integrating each node's equation
    across one gives the jump it causes:
    - LIF, `tau dv/dt = (v_leak - v) + r W delta`: `v` jumps by `r W / tau`;
    - CubaLIF, `tau_syn dI/dt = -I + w_in W delta`: `I` jumps by `w_in W / tau_syn`,
      and `dv/dt = (v_leak - v)/tau_mem + I (r / tau_mem)`, i.e. the reference's
      `C_mem = tau_mem / r`.
    """
    specs = []
    for w, rec, delay, pop in graph_nodes:
        # In float64 (a file may hold float32; its values are then exact).
        f64 = lambda name: np.asarray(getattr(pop, name), np.float64)
        if isinstance(pop, nir.LIF):
            scale = f64("r") / f64("tau")
            spec = dict(model="lif", tau_mem=f64("tau"))
        else:
            scale = f64("w_in") / f64("tau_syn")
            spec = dict(
                model="cuba",
                tau_mem=f64("tau_mem"),
                tau_syn=f64("tau_syn"),
                C_mem=f64("tau_mem") / f64("r"),
            )
        spec.update(
            W=scale[:, None] * np.asarray(w.weight, np.float64),
            v_rest=f64("v_leak"),
            v_threshold=f64("v_threshold"),
            v_reset=f64("v_reset"),
        )
        if rec is not None:
            spec.update(
                W_rec=scale[:, None] * np.asarray(rec.weight, np.float64),
                delay=float(delay.delay[0]),
            )
        specs.append(spec)
    times = np.asarray(train.times) / 1000.0
    return simulate_network(specs, times, np.asarray(train.sources), t_end_ms / 1000.0)


def test_import_matches_nir_equations():
    """Spike times of an imported graph (recurrent CubaLIF with a delay, then LIF)
    against the NIR equations integrated in seconds by the NumPy reference."""
    graph = _hand_graph(np.random.default_rng(3))
    net = from_nir(graph)
    spiking = sj.SpikingODENetwork(net.layers[:2])
    train = _random_train(4, 3, 40, 40.0)
    sol = spiking.simulate(train, t_end=50.0, max_spikes=24)
    n = graph.nodes
    ref = _reference_from_nir_equations(
        [(n["w1"], n["wrec"], n["d"], n["cuba"]), (n["w2"], None, None, n["lif"])],
        train,
        50.0,
    )
    total = 0
    for got, want in zip(sol.layers, ref):
        want_ms = want.padded(24) * 1000.0
        np.testing.assert_array_equal(
            np.isfinite(got.spike_times), np.isfinite(want_ms)
        )
        # The reference locates crossings to ~1e-14 relative (of seconds); both
        # are float64: agreement to 1e-9 ms over a 50 ms run.
        np.testing.assert_allclose(got.spike_times, want_ms, rtol=0, atol=1e-9)
        total += int(want.counts.sum())
    assert total >= 8


# -- a file written by another library -----------------------------------------------

# The values tests/fixtures/make_spyx_fixture.py gave spyx (exported at dt = 1 ms).
SPYX_DT = 1e-3
SPYX_W1 = np.array(
    [
        [0.010, 0.004, 0.000],
        [0.001, 0.0045, 0.003],
        [0.007, -0.004, 0.011],
        [0.005, 0.005, 0.005],
    ]
)
SPYX_ALPHA = np.array([0.8, 0.75, 0.85, 0.8])
SPYX_BETA1 = np.array([0.95, 0.9, 0.96, 0.94])
SPYX_W2 = np.array([[0.004, 0.002, 0.003, 0.005], [0.010, -0.004, 0.010, 0.008]])
SPYX_BETA2 = np.array([0.93, 0.97])
SPYX_THRESHOLDS = (1.0, 0.5)


def test_import_spyx_file_parameters():
    net = from_nir(FIXTURE)
    assert isinstance(net, sj.SpikingODENetwork)
    l1, l2 = net.layers
    assert isinstance(l1.dynamics, sj.CubaLIFDynamics)
    assert isinstance(l2.dynamics, sj.ODELIFDynamics)
    assert (l1.n_inputs, l1.n_neurons, l2.n_neurons) == (3, 4, 2)
    assert l1.recurrent_weight is None and l2.recurrent_weight is None
    # spyx: tau = dt / (1 - beta) s, r = beta, v_leak = 0, v_reset = 0, w_in = 1;
    # float32 in the file, so float32 precision (the quotient amplifies the
    # rounding of 1 - beta by 1 / (1 - beta) <= 25).
    f32 = 25 * np.finfo(np.float32).eps
    tau_syn = 1000 * SPYX_DT / (1 - SPYX_ALPHA)  # ms
    tau_mem1 = 1000 * SPYX_DT / (1 - SPYX_BETA1)
    tau_mem2 = 1000 * SPYX_DT / (1 - SPYX_BETA2)
    d1, d2 = l1.dynamics, l2.dynamics
    np.testing.assert_allclose(d1.tau_syn, tau_syn, rtol=f32)
    np.testing.assert_allclose(d1.tau_mem, tau_mem1, rtol=f32)
    np.testing.assert_allclose(d1.C_mem, tau_mem1 / SPYX_BETA1, rtol=f32)
    np.testing.assert_allclose(d1.v_threshold, SPYX_THRESHOLDS[0])
    np.testing.assert_allclose(d1.v_rest, 0.0)
    np.testing.assert_allclose(d1.v_reset, 0.0)
    # CubaLIF: a spike adds (w_in / tau_syn) W to the synaptic current.
    w1 = SPYX_W1 / (tau_syn[:, None] / 1000)
    np.testing.assert_allclose(l1.weight, w1, rtol=f32)
    np.testing.assert_allclose(d2.tau_mem, tau_mem2, rtol=f32)
    np.testing.assert_allclose(d2.C_mem, tau_mem2 / SPYX_BETA2, rtol=f32)
    np.testing.assert_allclose(d2.v_threshold, SPYX_THRESHOLDS[1])
    # LIF: a spike adds (r / tau) W to v.
    w2 = SPYX_BETA2[:, None] / (tau_mem2[:, None] / 1000) * SPYX_W2
    np.testing.assert_allclose(l2.weight, w2, rtol=f32)


def test_import_spyx_file_spike_times():
    net = from_nir(FIXTURE)
    graph = nir.read(FIXTURE)
    train = _random_train(0, 3, 30, 50.0)
    sol = net.simulate(train, t_end=60.0, max_spikes=16)
    g = graph.nodes
    ref = _reference_from_nir_equations(
        [
            (g["layer_0"], None, None, g["layer_1"]),
            (g["layer_2"], None, None, g["layer_3"]),
        ],
        train,
        60.0,
    )
    for got, want in zip(sol.layers, ref):
        want_ms = want.padded(16) * 1000.0
        np.testing.assert_array_equal(
            np.isfinite(got.spike_times), np.isfinite(want_ms)
        )
        np.testing.assert_allclose(got.spike_times, want_ms, rtol=0, atol=1e-9)
    assert ref[0].counts.sum() >= 10 and ref[1].counts.sum() >= 4


# -- nested graphs, identity weights, scalars ------------------------------------------


def test_nested_recurrent_subgraph_is_inlined():
    """Some libraries (spyx, snnTorch) write a recurrent layer as a subgraph
    `input -> w_rec <-> lif -> output`; it imports as the flat loop would."""
    rng = np.random.default_rng(5)
    flat = _hand_graph(rng)
    n = flat.nodes
    sub = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([4])}),
            "lif": n["cuba"],
            "w_rec": n["wrec"],
            "output": nir.Output(output_type={"output": np.array([4])}),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
        metadata={},
    )
    nested = nir.NIRGraph(
        nodes={"in": n["in"], "w1": n["w1"], "rnn": sub, "w2": n["w2"], "lif": n["lif"],
               "out": nir.Output(output_type={"output": np.array([3])})},
        edges=[("in", "w1"), ("w1", "rnn"), ("rnn", "w2"), ("w2", "lif"), ("lif", "out")],
        metadata={},
    )  # fmt: skip
    net = from_nir(nested)
    assert net.layers[0].recurrent_weight is not None and net.layers[0].delay == 0.0
    scale = n["cuba"].w_in / n["cuba"].tau_syn
    np.testing.assert_allclose(
        net.layers[0].recurrent_weight, scale[:, None] * n["wrec"].weight, rtol=4 * EPS
    )


def test_identity_weight_and_scalar_parameters():
    """A population fed straight from the Input gets the identity weight; per-neuron
    arrays with one value become scalars, others stay per neuron."""
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([3])}),
            "if": nir.IF(
                r=np.full(3, 2.0),
                v_threshold=np.array([1.0, 2.0, 3.0]),
                v_reset=np.zeros(3),
            ),
            "out": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("in", "if"), ("if", "out")],
        metadata={},
    )
    layer = from_nir(graph, time_scale=1.0)
    assert isinstance(layer, sj.SpikingODELayer)
    assert isinstance(layer.dynamics, sj.IFDynamics)
    np.testing.assert_array_equal(layer.weight, 2.0 * np.eye(3))  # w = r W
    assert layer.dynamics.C_mem.shape == () and float(layer.dynamics.C_mem) == 0.5
    np.testing.assert_array_equal(layer.dynamics.v_threshold, [1.0, 2.0, 3.0])
    # Scalar parameters only: the population has as many neurons as inputs.
    graph.nodes["if"] = nir.IF(
        r=np.array(2.0), v_threshold=np.array(1.0), v_reset=np.array(0.0)
    )
    layer = from_nir(graph, time_scale=1.0)
    assert isinstance(layer, sj.SpikingODELayer) and layer.n_neurons == 3
    np.testing.assert_array_equal(layer.weight, 2.0 * np.eye(3))
    # A population of no neurons is refused by name.
    graph.nodes["if"] = nir.IF(r=np.ones(0), v_threshold=np.ones(0), v_reset=np.ones(0))
    with pytest.raises(ValueError, match=r"'if' \(IF\) has no neurons"):
        from_nir(graph)


# -- errors --------------------------------------------------------------------------


def _chain(*nodes, edges=None):
    names = [f"n{i}" for i in range(len(nodes))]
    d = dict(zip(names, nodes))
    if edges is None:
        edges = list(zip(names[:-1], names[1:]))
    return nir.NIRGraph(nodes=d, edges=edges, metadata={}, type_check=False)


def _io(n_in, n_out):
    return (
        nir.Input(input_type={"input": np.array([n_in])}),
        nir.Output(output_type={"output": np.array([n_out])}),
    )


def _lif(n):
    return nir.LIF(
        tau=np.full(n, 0.02),
        r=np.ones(n),
        v_leak=np.zeros(n),
        v_threshold=np.ones(n),
        v_reset=np.zeros(n),
    )


def test_unsupported_nodes_are_named():
    inp, out = _io(4, 4)
    graph = _chain(inp, nir.Flatten(input_type={"input": np.array([4])}), _lif(4), out)
    with pytest.raises(ValueError, match=r"'n1' is a Flatten.*Supported nodes: Input"):
        from_nir(graph)
    graph = _chain(
        inp, nir.Linear(weight=np.eye(4)), nir.Threshold(threshold=np.ones(4)), out
    )
    with pytest.raises(ValueError, match=r"'n2' is a Threshold.*without a membrane"):
        from_nir(graph)
    conv = nir.Conv1d(
        input_shape=4, weight=np.ones((1, 1, 2)), stride=1, padding=0, dilation=1,
        groups=1, bias=np.zeros(1),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"'n1' is a Conv1d"):
        from_nir(_chain(inp, conv, _lif(4), out))
    graph = _chain(inp, nir.Delay(delay=np.ones(4)), _lif(4), out)
    with pytest.raises(ValueError, match=r"'n1' is a Delay.*only inside a recurrent"):
        from_nir(graph)


def test_unsupported_parameters_and_shapes():
    inp, out = _io(2, 3)
    with pytest.raises(ValueError, match=r"'n1' \(Affine\) has a non-zero `bias`"):
        from_nir(
            _chain(
                inp, nir.Affine(weight=np.ones((3, 2)), bias=np.ones(3)), _lif(3), out
            )
        )
    bad = bad_r = _lif(3)
    bad.r = np.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"'n2' \(LIF\): `r` must be finite and > 0"):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), bad, out))
    bad = _lif(3)
    bad.v_reset = np.full(3, 2.0)
    with pytest.raises(ValueError, match=r"'n2' \(LIF\).*`v_reset` must be <"):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), bad, out))
    with pytest.raises(ValueError, match=r"'n1' \(Linear\): `weight` must have shape"):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 5))), _lif(3), out))
    w = np.ones((3, 2))
    w[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"'n1' \(Linear\): `weight` must be finite"):
        from_nir(_chain(inp, nir.Linear(weight=w), _lif(3), out))
    # The node is named once.
    with pytest.raises(ValueError, match=r"^NIR node 'n2' \(LIF\): `r`") as e:
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), bad_r, out))
    assert str(e.value).count("NIR node") == 1
    with pytest.raises(ValueError, match="time_scale"):
        from_nir(
            _chain(inp, nir.Linear(weight=np.ones((3, 2))), _lif(3), out), time_scale=0
        )
    # Complex parameters are refused, not cut to their real part.
    bad = _lif(3)
    bad.tau = np.full(3, 0.02 + 0.01j)
    with pytest.raises(TypeError, match=r"must be real, got complex"):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), bad, out))
    # A weight beyond float32's range is refused, not imported as inf.
    big = np.ones((3, 2))
    big[0, 1] = 1e300
    with pytest.raises(ValueError, match=r"'n1': the weight .* beyond the range"):
        from_nir(_chain(inp, nir.Linear(weight=big), _lif(3), out), dtype=jnp.float32)


def test_unsupported_graph_shapes():
    inp, out = _io(2, 3)
    # A skip connection: the Input also feeds the second weight.
    nodes = (
        inp,
        nir.Linear(weight=np.ones((3, 2))),
        _lif(3),
        nir.Linear(weight=np.ones((3, 3))),
        _lif(3),
        out,
    )
    edges = [
        ("n0", "n1"),
        ("n1", "n2"),
        ("n2", "n3"),
        ("n3", "n4"),
        ("n4", "n5"),
        ("n0", "n3"),
    ]
    with pytest.raises(ValueError, match=r"'n0' \(Input\) sends to \['n1', 'n3'\]"):
        from_nir(_chain(*nodes, edges=edges))
    # A recurrent loop with unequal delays.
    nodes = (
        inp,
        nir.Linear(weight=np.ones((3, 2))),
        _lif(3),
        nir.Linear(weight=np.eye(3)),
        nir.Delay(delay=np.array([1.0, 2.0, 1.0])),
        out,
    )
    edges = [
        ("n0", "n1"),
        ("n1", "n2"),
        ("n2", "n3"),
        ("n3", "n4"),
        ("n4", "n2"),
        ("n2", "n5"),
    ]
    with pytest.raises(
        ValueError, match=r"'n4' \(Delay\): a recurrent delay must be one value"
    ):
        from_nir(_chain(*nodes, edges=edges))
    # A NaN delay is named as such (not as unequal values); a delay of shape (1,)
    # is one value for all neurons.
    delay = nodes[4]
    delay.delay = np.full(3, np.nan)
    with pytest.raises(ValueError, match=r"'n4' \(Delay\): `delay` must be finite"):
        from_nir(_chain(*nodes, edges=edges))
    delay.delay = np.array([1e-3])
    layer = from_nir(_chain(*nodes, edges=edges))
    assert isinstance(layer, sj.SpikingODELayer) and layer.delay == pytest.approx(1.0)
    # A readout that is not last.
    li = nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3))
    nodes = (
        inp,
        nir.Linear(weight=np.ones((3, 2))),
        li,
        nir.Linear(weight=np.eye(3)),
        _lif(3),
        out,
    )
    with pytest.raises(ValueError, match=r"'n2' \(LI\) does not spike"):
        from_nir(_chain(*nodes))
    with pytest.raises(TypeError, match="nir.NIRGraph or a path"):
        from_nir(_lif(3))  # pyright: ignore[reportArgumentType]
    # Loops the importer does not take are named as loops (they were refused as
    # "branches or skip connections"): through a Delay alone, through two weights.
    for loop in (
        [nir.Delay(delay=np.array([1e-3]))],
        [nir.Linear(weight=np.eye(3)), nir.Linear(weight=np.eye(3))],
    ):
        nodes = (inp, nir.Linear(weight=np.ones((3, 2))), _lif(3), *loop, out)
        names = [f"n{3 + i}" for i in range(len(loop))]
        edges = [("n0", "n1"), ("n1", "n2"), ("n2", names[0])]
        edges += list(zip(names[:-1], names[1:])) + [(names[-1], "n2")]
        edges += [("n2", f"n{3 + len(loop)}")]
        with pytest.raises(
            ValueError,
            match=rf"'n2' \(LIF\) has a recurrent loop through {re.escape(str(names))}",
        ):
            from_nir(_chain(*nodes, edges=edges))
    # The Output node's size is that of the last population (a graph built
    # without NIR's type check imported 3 neurons as 5 outputs).
    inp, out5 = _io(2, 5)
    with pytest.raises(
        ValueError, match=r"Output node 'n3' has shape \(5,\); the last"
    ):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), _lif(3), out5))
    # A 2-D Input is named with its shape as integers.
    inp2 = nir.Input(input_type={"input": np.array([1, 2])})
    with pytest.raises(ValueError, match=r"has shape \(1, 2\); snode_jax layers take"):
        from_nir(_chain(inp2, nir.Linear(weight=np.ones((3, 2))), _lif(3), out))


def _nested(sub_nodes, sub_edges, outer_extra=()):
    """`in -> w -> rnn (a nested graph) -> out`, with more outer nodes."""
    sub = nir.NIRGraph(nodes=sub_nodes, edges=sub_edges, metadata={}, type_check=False)
    inp, out = _io(2, 3)
    nodes = {"in": inp, "w": nir.Linear(weight=np.ones((3, 2))), "rnn": sub}
    nodes.update({"out": out, **dict(outer_extra)})
    edges = [("in", "w"), ("w", "rnn"), ("rnn", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=False)


def test_malformed_graph_parts_are_named():
    sub_io = {
        "input": nir.Input(input_type={"input": np.array([3])}),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }
    chain = [("input", "lif"), ("lif", "output")]
    # An outer node named as an inlined one (`graph.node`) would take its place
    # (which one depended on the nodes' order): refused, in either order.
    slow = _lif(3)
    slow.tau = np.full(3, 0.5)
    stray = {"rnn.lif": slow}
    for extra_first in (False, True):
        graph = _nested({**sub_io, "lif": _lif(3)}, chain, stray)
        if extra_first:
            graph.nodes = {**stray, **{k: v for k, v in graph.nodes.items()}}
        with pytest.raises(
            ValueError, match=r"would both be named 'rnn.lif' once nested graphs"
        ):
            from_nir(graph)
    # A clash within a nested graph names the graph it is in (the message named
    # `a.lif` alone, which the import would have called `rnn.a.lif`).
    inner = nir.NIRGraph(
        nodes={**sub_io, "lif": _lif(3)}, edges=chain, metadata={}, type_check=False
    )
    graph = _nested(
        {**sub_io, "a": inner, "a.lif": _lif(3)},
        [("input", "a"), ("a", "a.lif"), ("a.lif", "output")],
    )
    with pytest.raises(
        ValueError,
        match=r"In the nested graph 'rnn' \(its nodes become `rnn.node`\): .*"
        r"would both be named 'a.lif'",
    ):
        from_nir(graph)
    # A nested graph that passes its input straight through.
    with pytest.raises(ValueError, match=r"'rnn' is a nested NIRGraph whose Input"):
        from_nir(_nested(sub_io, [("input", "output")]))
    # Input and Output sizes: whole numbers >= 1 (2.7 was cut to 2; -2 failed in
    # NumPy).
    for size in (2.7, -2, 0):
        inp = nir.Input(input_type={"input": np.array([size])})
        _, out = _io(2, 3)
        with pytest.raises(
            ValueError, match=rf"Input node 'n0' has size {size}; it must be a whole"
        ):
            from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), _lif(3), out))
    inp, out = _io(2, 3)
    # An Affine's bias: one per output (a zero bias of 5 entries passed for 3).
    affine = nir.Affine(weight=np.ones((3, 2)), bias=np.zeros(5))
    with pytest.raises(ValueError, match=r"`bias` must have shape \(\) or \(3,\)"):
        from_nir(_chain(inp, affine, _lif(3), out))
    affine.bias = None
    with pytest.raises(ValueError, match=r"'n1' \(Affine\) has no `bias` \(None\)"):
        from_nir(_chain(inp, affine, _lif(3), out))
    # A parameter that is None is named as such (it read as NaN).
    lif = _lif(3)
    lif.v_reset = None
    with pytest.raises(ValueError, match=r"'n2' \(LIF\): `v_reset` is None"):
        from_nir(_chain(inp, nir.Linear(weight=np.ones((3, 2))), lif, out))


def test_rounding_to_the_dtype_is_named():
    """Values that pass the model's checks in float64 but not once rounded to a
    narrower `dtype` say so."""
    inp, out = _io(2, 3)
    lif = _lif(3)
    lif.v_threshold, lif.v_reset = np.full(3, 1 + 1e-9), np.ones(3)
    graph = _chain(inp, nir.Linear(weight=np.ones((3, 2))), lif, out)
    with pytest.raises(ValueError, match=r"as rounded to float32; the graph's values"):
        from_nir(graph, dtype=jnp.float32)
    layer = from_nir(graph, dtype=jnp.float64)
    assert layer.dynamics.v_threshold > layer.dynamics.v_reset
    # A genuine error gets no such hint.
    lif.v_reset = np.full(3, 2.0)
    with pytest.raises(ValueError, match=r"`v_reset` must be <") as e:
        from_nir(graph, dtype=jnp.float32)
    assert "rounded" not in str(e.value)


def test_export_refuses_models_without_a_nir_node(getkey):
    adex = sj.SpikingODELayer(2, 3, sj.AdExDynamics(), key=getkey())
    with pytest.raises(ValueError, match="AdExDynamics has no NIR node"):
        to_nir(adex)
    refractory = sj.SpikingODELayer(2, 3, sj.ODELIFDynamics(t_ref=1.0), key=getkey())
    with pytest.raises(ValueError, match="no refractory period"):
        to_nir(refractory)
    with pytest.raises(
        TypeError, match="SpikingODELayer, LeakyReadout or SpikingODENetwork"
    ):
        to_nir(sj.ODELIFDynamics())  # pyright: ignore[reportArgumentType]
    # An IF readout starts at its v_reset; NIR's I cannot carry it.
    readout = sj.LeakyReadout(3, 2, sj.IFDynamics(v_reset=-0.5), key=getkey())
    with pytest.raises(ValueError, match=r"IFDynamics readout starts at its `v_reset`"):
        to_nir(readout)


def test_integrator_readout_round_trip():
    """`I` (dv/dt = r I): each spike adds `r W` to `v`, so with non-negative
    weights the maximum voltage is the sum of the jumps; it exports back as `I`."""
    r, weight = np.array([2.0, 0.5]), np.array([[0.1, 0.3], [0.2, 0.05]])
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([2])}),
            "w": nir.Linear(weight=weight),
            "i": nir.I(r=r),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "w"), ("w", "i"), ("i", "out")],
        metadata={},
    )
    readout = from_nir(graph, dtype=jnp.float32)
    assert isinstance(readout, sj.LeakyReadout)
    assert isinstance(readout.dynamics, sj.IFDynamics)
    assert readout.weight.dtype == jnp.float32
    train = sj.SpikeTrain(jnp.array([1.0, 2.0, 2.0, 7.0]), jnp.array([0, 1, 0, 1]))
    sol = readout.simulate(train, t_end=10.0)
    want = r * (weight @ np.array([2.0, 2.0]))
    np.testing.assert_allclose(sol.max_voltage, want, rtol=1e-6)
    np.testing.assert_allclose(sol.max_time, [7.0, 7.0])
    again = to_nir(readout)
    np.testing.assert_allclose(again.nodes["i_0"].r, r, rtol=1e-15)
    np.testing.assert_allclose(again.nodes["linear_0"].weight, weight, rtol=1e-6)
