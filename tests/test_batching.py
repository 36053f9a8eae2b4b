"""Batching: `jax.vmap` over a layer's simulation equals a Python loop over the batch.

The integration loop has its own vmap rule (`run_folded` in `_fold.py`) with two
branches, each pinned here through the public API:

- a batched `interval`: the integrator itself is vmapped, each run keeping its own
  interval (`test_batched_interval_equals_loop`);
- anything else batched (inputs, parameters, initial state): the batch is folded into
  the neuron axis and integrated as one population of `B * n` neurons, a batched
  scalar parameter becoming one value per neuron of its run (the other tests); on
  the closed-form walk, a large batch a tile of runs at a time
  (`test_tiled_batch_equals_loop`).

Tolerances. Neurons are independent, and a lane does the same arithmetic whether its
neighbours belong to its own run or to another: the closed-form walk takes one event
step per spike per neuron, the adaptive solver controls each neuron's step size
separately, and every loop (steps, crossing search) leaves a finished lane untouched
while the others go on. So integers (counts, spike totals, step statistics, the
result, where the spike buffer is padded) must agree exactly. Floats need not be
bitwise equal: XLA compiles the batched computation in other shapes (fusion, vector
width, the batched input matmul). Measured on this CPU (AVX-512): bitwise equal in
every case except the vmapped integrator with a batched parameter on the adaptive
path (up to 8e-14, AdEx voltages in mV); compiled for SSE4.2 instead
(`XLA_FLAGS=--xla_cpu_max_isa=SSE4_2`), most cases with batched inputs differ, by at
most 1.5e-12 (AdEx voltages). The floats are compared to 1e-10, relative and
absolute, as in `test_properties.py`: far below any physical difference, far above
reordered rounding. The one case where batch composition changes the arithmetic
itself is `test_fold_shares_the_closed_form_span`.

The LIF cases on the closed-form solver are also checked against the independent
reference (`lif_reference.py`), so that batch and loop cannot agree on a wrong answer.
"""

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj
from snode_jax import _fold

from .helpers import assert_padded_times_close, reference_for

N_INPUTS, N_NEURONS, N_INTERVALS, BATCH = 3, 4, 3, 3
MAX_SPIKES = 32  # the busiest run here fires 26 spikes
TOL = 1e-10  # batch against loop (see above)
# Against the closed-form reference, as in `test_lif_exact.py`.
TIME_ATOL = 1e-9  # ms
V_ATOL = 1e-9


# -- models ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """A small layer and how to batch it.

    `scalar`: a scalar parameter of the layer and one value per run; `per_neuron`: a
    parameter drawn per run and neuron, uniformly in `[low, high)`; `state`: a batch
    of random initial states; `intervals`: one interval (ms) per run.
    """

    name: str
    make_layer: Callable[[], sj.SpikingODELayer]
    input_range: tuple[float, float]
    interval: float
    intervals: tuple[float, ...]
    scalar: tuple[str, tuple[float, ...]]
    per_neuron: tuple[str, float, float]
    state: Callable[[np.random.Generator], object]

    @functools.cached_property
    def layer(self) -> sj.SpikingODELayer:
        # Built once and shared; the first test to ask may be tracing (under jit,
        # `jnp.asarray` makes tracers), so build with concrete values.
        with jax.ensure_compile_time_eval():
            return self.make_layer()

    def inputs(self, rng, batch=None):
        shape = (N_INTERVALS, N_INPUTS)
        if batch is not None:
            shape = (batch, *shape)
        return jnp.asarray(rng.uniform(*self.input_range, shape))

    @property
    def closed_form(self) -> bool:
        return isinstance(self.layer.solver, sj.Exact)


def _with_weight(layer, low, high):
    """Weights in `[low, high)`, neuron 0's twenty times weaker (it stays silent)."""
    w = np.random.default_rng(11).uniform(low, high, (N_NEURONS, N_INPUTS))
    w[0] /= 20
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(w))


def _lif_layer(solver=None):
    # v_reset per neuron and the rest scalar: both fold paths of a parameter (an
    # unbatched per-neuron array is broadcast over the runs, a scalar stays scalar).
    dynamics = sj.ODELIFDynamics(
        tau_mem=10.0,
        v_rest=0.0,
        v_threshold=1.0,
        v_reset=jnp.asarray([-0.5, -0.2, 0.0, 0.3]),
        C_mem=1.0,
    )
    kwargs = {} if solver is None else dict(solver=solver)
    layer = sj.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        dynamics,
        dtype=jnp.float64,
        key=jax.random.key(0),
        **kwargs,
    )
    return _with_weight(layer, 0.1, 1.0)


def _lif_states(rng):
    # Below the smallest threshold drawn per neuron (0.8).
    return sj.LIFState(jnp.asarray(rng.uniform(-0.5, 0.75, (BATCH, N_NEURONS))))


def _adex_layer():
    layer = sj.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        sj.AdExDynamics(),
        dtype=jnp.float64,
        key=jax.random.key(0),
    )
    return _with_weight(layer, 0.2, 1.0)


def _adex_states(rng):
    v = rng.uniform(-72.0, -58.0, (BATCH, N_NEURONS))  # mV, below threshold
    w = rng.uniform(0.0, 60.0, (BATCH, N_NEURONS))  # pA
    return sj.AdExState(jnp.asarray(v), jnp.asarray(w))


_LIF = dict(
    # Currents up to 1.25 (neuron 0: 0.1 at most, silent), so v_inf up to ~12 times
    # the threshold at tau_mem = 10 ms: up to about one spike per ms.
    input_range=(0.0, 1.0),
    interval=2.0,
    intervals=(0.5, 2.0, 7.0),
    scalar=("tau_mem", (5.0, 12.0, 30.0)),
    per_neuron=("v_threshold", 0.8, 1.6),
    state=_lif_states,
)
MODELS = {
    "lif_exact": Model("lif_exact", _lif_layer, **_LIF),
    # The LIF forced onto the adaptive Runge-Kutta path.
    "lif_dopri5": Model(
        "lif_dopri5", functools.partial(_lif_layer, sj.Dopri5()), **_LIF
    ),
    # AdEx (adaptive path, Dopri5 by default): currents up to ~1400 pA (neuron 0:
    # ~40 pA, silent), 1-4 spikes per driven neuron and run.
    "adex": Model(
        "adex",
        _adex_layer,
        input_range=(300.0, 900.0),
        interval=10.0,
        intervals=(4.0, 10.0, 15.0),
        scalar=("C", (200.0, 281.0, 400.0)),
        per_neuron=("V_T", -53.0, -48.0),
        state=_adex_states,
    ),
}


def _replace(layer, name, value):
    return eqx.tree_at(lambda m: getattr(m.dynamics, name), layer, value)


def _simulate(model, x, interval, *, scalar=None, per_neuron=None, state=None):
    """`model`'s layer, with the given parameter values, simulated on `x`."""
    layer = model.layer
    if scalar is not None:
        layer = _replace(layer, model.scalar[0], scalar)
    if per_neuron is not None:
        layer = _replace(layer, model.per_neuron[0], per_neuron)
    return layer.simulate(x, interval, MAX_SPIKES, state=state, throw=False)


# -- comparisons -------------------------------------------------------------------


def _run_i(batched, i):
    return jax.tree.map(lambda a: a[i], batched)


def _assert_solutions_agree(actual, expected, *, stats=True):
    """Integers (counts, spike totals, step statistics, result) and the `+inf`
    padding of the spike times exactly; floats to `TOL`."""
    np.testing.assert_array_equal(
        np.asarray(actual.counts), np.asarray(expected.counts)
    )
    assert actual.result == expected.result, (actual.result, expected.result)
    if not stats:  # compared exactly below otherwise
        actual = dataclasses.replace(actual, stats=None)
        expected = dataclasses.replace(expected, stats=None)
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten_with_path(expected)
    assert a_def == e_def, (a_def, e_def)
    for (path, a), (_, e) in zip(a_leaves, e_leaves):
        name = jax.tree_util.keystr(path)
        a, e = np.asarray(a), np.asarray(e)
        assert (a.shape, a.dtype) == (e.shape, e.dtype), (name, a.shape, e.shape)
        if not np.issubdtype(e.dtype, np.floating):
            np.testing.assert_array_equal(a, e, err_msg=name)
            continue
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(e), err_msg=name)
        np.testing.assert_array_equal(a[~np.isfinite(e)], e[~np.isfinite(e)], name)
        np.testing.assert_allclose(a, e, rtol=TOL, atol=TOL, err_msg=name)


def _assert_batch_equals_loop(batched, loop, *, stats=True):
    for i, expected in enumerate(loop):
        assert expected.result == sj.RESULTS.successful, expected.result
        _assert_solutions_agree(_run_i(batched, i), expected, stats=stats)
    # The runs differ from each other, so a batch rule that mixed them up (or ran one
    # of them for all) would show.
    times = [np.asarray(sol.spike_times) for sol in loop]
    assert not any(np.allclose(times[0], t) for t in times[1:])
    assert np.asarray(batched.num_spikes).sum() >= 2 * BATCH


def _check_reference(sol, layer, x, interval, v0=None):
    ref = reference_for(layer, x, interval, v0)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    assert_padded_times_close(sol.spike_times, ref.padded_times(MAX_SPIKES), TIME_ATOL)
    np.testing.assert_allclose(sol.final_state.v, ref.final_v, rtol=0, atol=V_ATOL)
    np.testing.assert_allclose(
        sol.interval_states.v, ref.interval_v, rtol=0, atol=V_ATOL
    )


def _cases(*cases):
    """Parameter sets; those on the adaptive path (5-10 s each, mostly compiling)
    are marked slow."""
    slow = pytest.mark.slow
    return [pytest.param(*c, marks=() if c[0] == "lif_exact" else slow) for c in cases]


def _batch_and_loop(fn, batched_args, transform=jax.vmap):
    """`transform(fn)` on the batch, and `fn` on each run in a Python loop."""
    batched = transform(fn)(batched_args)
    loop = [fn(_run_i(batched_args, i)) for i in range(BATCH)]
    return batched, loop


# -- the vmapped integrator: a batched interval -----------------------------------

# What is batched besides the interval: nothing (the inputs, parameters and state are
# shared by the runs), the inputs, or the inputs, a scalar parameter and the state.
INTERVAL_CASES = _cases(
    ("lif_exact", "interval"),
    ("lif_exact", "interval+inputs"),
    ("lif_exact", "interval+inputs+scalar+state"),
    ("adex", "interval+inputs+scalar+state"),
)


@pytest.mark.parametrize("model, batched", INTERVAL_CASES)
def test_batched_interval_equals_loop(model, batched):
    model = MODELS[model]
    rng = np.random.default_rng(0)
    args = dict(interval=jnp.asarray(model.intervals))
    if "inputs" in batched:
        args["x"] = model.inputs(rng, BATCH)
    if "scalar" in batched:
        args["scalar"] = jnp.asarray(model.scalar[1])
        args["state"] = model.state(rng)
    x_shared = model.inputs(rng)

    def run(a):
        a = dict(a)
        return _simulate(model, a.pop("x", x_shared), **a)

    sols, loop = _batch_and_loop(run, args)
    _assert_batch_equals_loop(sols, loop)
    np.testing.assert_array_equal(np.asarray(sols.interval), model.intervals)
    if model.closed_form:
        for i in range(BATCH):
            a = _run_i(args, i)
            layer = model.layer
            if "scalar" in a:
                layer = _replace(layer, model.scalar[0], a["scalar"])
            v0 = a["state"].v if "state" in a else None
            x = a.get("x", x_shared)
            _check_reference(_run_i(sols, i), layer, x, a["interval"], v0)


# -- the fold: inputs, parameters and states batched --------------------------------


def _jit_of_vmap(fn):
    return eqx.filter_jit(jax.vmap(fn))


TRANSFORMS = {
    "vmap": jax.vmap,
    "filter_vmap": eqx.filter_vmap,
    "jit_of_vmap": _jit_of_vmap,
}
INPUT_CASES = _cases(
    ("lif_exact", "vmap"),
    ("lif_exact", "filter_vmap"),
    ("lif_exact", "jit_of_vmap"),
    ("lif_dopri5", "vmap"),
    ("adex", "vmap"),
)


@pytest.mark.parametrize("model, transform", INPUT_CASES)
def test_batched_inputs_equal_loop(model, transform):
    # The layer is shared: only the inputs (and so the currents) carry the batch.
    model = MODELS[model]
    xb = model.inputs(np.random.default_rng(1), BATCH)

    def run(x):
        return _simulate(model, x, model.interval)

    sols, loop = _batch_and_loop(run, xb, TRANSFORMS[transform])
    _assert_batch_equals_loop(sols, loop)
    if model.closed_form:
        for i in range(BATCH):
            _check_reference(_run_i(sols, i), model.layer, xb[i], model.interval)
    if transform == "vmap":
        # `forward` (no spike buffer) folds too.
        counts = jax.vmap(lambda x: model.layer.forward(x, model.interval))(xb)
        for i in range(BATCH):
            np.testing.assert_array_equal(
                np.asarray(counts[i]), np.asarray(loop[i].counts)
            )


# How the batch of scalar parameters is built: by vmapping a function of the scalar
# (with the inputs shared by the runs or batched too), or as an ensemble of layers
# (a layer whose parameter holds one value per run, split off with `eqx.partition`
# and vmapped with `eqx.filter_vmap`).
SCALAR_CASES = _cases(
    ("lif_exact", "closure"),
    ("lif_exact", "closure+inputs"),
    ("lif_exact", "ensemble"),
    ("lif_dopri5", "closure+inputs"),
    ("adex", "closure+inputs"),
)


@pytest.mark.parametrize("model, build", SCALAR_CASES)
def test_batched_scalar_parameter_equals_loop(model, build):
    # Inside the rule the parameter has shape (B,): one value per run, to be spread
    # over that run's neurons.
    model = MODELS[model]
    name, values = model.scalar
    values = jnp.asarray(values)
    rng = np.random.default_rng(2)
    xb = model.inputs(rng, BATCH)
    x_shared = model.inputs(rng)
    if build == "ensemble":
        layers = _replace(model.layer, name, values)
        spec = jax.tree.map(lambda _: False, model.layer)
        spec = _replace(spec, name, True)
        batched_part, shared_part = eqx.partition(layers, spec)

        def run(part):
            layer = eqx.combine(part, shared_part)
            return layer.simulate(x_shared, model.interval, MAX_SPIKES, throw=False)

        sols, loop = _batch_and_loop(run, batched_part, eqx.filter_vmap)
        xs = [x_shared] * BATCH
    else:
        with_inputs = build == "closure+inputs"
        args = (values, xb if with_inputs else None)

        def run(a):
            x = x_shared if a[1] is None else a[1]
            return _simulate(model, x, model.interval, scalar=a[0])

        sols, loop = _batch_and_loop(run, args)
        xs = list(xb) if with_inputs else [x_shared] * BATCH
    _assert_batch_equals_loop(sols, loop)
    assert np.asarray(getattr(model.layer.dynamics, name)).shape == ()
    if model.closed_form:
        for i in range(BATCH):
            layer = _replace(model.layer, name, values[i])
            _check_reference(_run_i(sols, i), layer, xs[i], model.interval)


@pytest.mark.parametrize("model", _cases(("lif_exact",), ("adex",)))
def test_batched_per_neuron_parameter_and_state_equal_loop(model):
    # A parameter of shape (B, n) and initial states of shape (B, n), with batched
    # inputs.
    model = MODELS[model]
    name, low, high = model.per_neuron
    rng = np.random.default_rng(3)
    args = dict(
        x=model.inputs(rng, BATCH),
        per_neuron=jnp.asarray(rng.uniform(low, high, (BATCH, N_NEURONS))),
        state=model.state(rng),
    )

    def run(a):
        return _simulate(
            model,
            a["x"],
            model.interval,
            per_neuron=a["per_neuron"],
            state=a["state"],
        )

    sols, loop = _batch_and_loop(run, args)
    _assert_batch_equals_loop(sols, loop)
    if model.closed_form:
        for i in range(BATCH):
            a = _run_i(args, i)
            layer = _replace(model.layer, name, a["per_neuron"])
            _check_reference(
                _run_i(sols, i), layer, a["x"], model.interval, a["state"].v
            )


def test_fold_shares_the_closed_form_span():
    """Batch composition changes the arithmetic of the closed-form LIF.

    It walks an interval in equal pieces no longer than `30 * min(tau_mem)`
    (`max_event_span`); folded, the minimum is taken over the whole batch (also
    where it is run tile by tile: `test_tiles_walk_the_batch_pieces`), so a run
    may be walked in more pieces than when run alone (here: a 5 ms interval and
    tau_mem 0.15 ms in run 0, so every run takes two pieces; alone, runs 1 and 2
    take one). Each extra piece rounds the decay factor and the state once more:
    spike times and voltages differ by a few ulps (measured: at most 1e-14 ms on
    times up to 15 ms, 7e-15 on voltages), within `TOL`, while the step statistics
    count the pieces (3 more steps per neuron here: one per interval) and are not
    compared.
    """
    model = MODELS["lif_exact"]
    taus = jnp.asarray([0.15, 8.0, 20.0])
    interval = 5.0
    xb = model.inputs(np.random.default_rng(4), BATCH)

    def run(a):
        return _simulate(model, a[1], interval, scalar=a[0])

    sols, loop = _batch_and_loop(run, (taus, xb))
    _assert_batch_equals_loop(sols, loop, stats=False)
    for i in range(BATCH):
        layer = _replace(model.layer, "tau_mem", taus[i])
        _check_reference(_run_i(sols, i), layer, xb[i], interval)
    assert np.asarray(sols.num_spikes)[0].max() == 0  # tau 0.15 ms: v_inf too low


# -- a folded batch run tile by tile -----------------------------------------------


@pytest.fixture
def tiles(monkeypatch):
    """The tile size (`per_tile`) of every tiled run traced while the test runs."""
    calls = []
    run_tiles = _fold._run_tiles

    def spy(*args):
        calls.append(args[-1])
        return run_tiles(*args)

    monkeypatch.setattr(_fold, "_run_tiles", spy)
    return calls


# Tiles of 8 float64 lanes (2 runs of 4 neurons; the last tile overlaps the one
# before) and of 4 lanes (one run per tile). (The adaptive loop is not tiled.)
TILE_CASES = [("lif_exact", 64, 2), ("lif_exact", 32, 1)]


@pytest.mark.parametrize("model, tile_bytes, per_tile", TILE_CASES)
def test_tiled_batch_equals_loop(model, tile_bytes, per_tile, tiles, monkeypatch):
    # On the closed-form walk, a folded batch whose arrays of one value per neuron
    # exceed `TILE_BYTES` (`RECORD_TILE_BYTES` recording spike times) runs a tile
    # of runs at a time. Here the tiles are shrunk so that three runs of four
    # neurons take two or three tiles; each run must still equal its loop run (and
    # the reference), with batched inputs, per-neuron parameters and states.
    monkeypatch.setattr(_fold, "TILE_BYTES", tile_bytes)
    monkeypatch.setattr(_fold, "RECORD_TILE_BYTES", tile_bytes)
    model = MODELS[model]
    name, low, high = model.per_neuron
    rng = np.random.default_rng(5)
    # Four or five intervals (not three): a shape traced only here, with these
    # tiles (compiled functions are cached by shape).
    x = jnp.asarray(rng.uniform(*model.input_range, (BATCH, 3 + per_tile, N_INPUTS)))
    args = dict(
        x=x,
        per_neuron=jnp.asarray(rng.uniform(low, high, (BATCH, N_NEURONS))),
        state=model.state(rng),
    )

    def run(a):
        return _simulate(
            model, a["x"], model.interval, per_neuron=a["per_neuron"], state=a["state"]
        )

    sols, loop = _batch_and_loop(run, args)
    assert tiles and set(tiles) == {per_tile}, tiles
    _assert_batch_equals_loop(sols, loop)
    counts = jax.vmap(
        lambda a: _replace(model.layer, name, a["per_neuron"]).forward(
            a["x"], model.interval, state=a["state"]
        )
    )(args)
    np.testing.assert_array_equal(np.asarray(counts), np.asarray(sols.counts))
    for i in range(BATCH):
        a = _run_i(args, i)
        layer = _replace(model.layer, name, a["per_neuron"])
        _check_reference(_run_i(sols, i), layer, a["x"], model.interval, a["state"].v)


def test_tiles_walk_the_batch_pieces(tiles, monkeypatch):
    # The closed-form span is the batch's, not the tile's: as in
    # `test_fold_shares_the_closed_form_span`, every run takes two pieces per
    # interval (run 0's tau_mem of 0.15 ms), although runs 1 and 2 each have a tile
    # of their own (alone, they would take one piece and one step fewer).
    monkeypatch.setattr(_fold, "RECORD_TILE_BYTES", 32)  # 4 float64 lanes: one run
    model = MODELS["lif_exact"]
    taus = jnp.asarray([0.15, 8.0, 20.0])
    interval = 5.0
    n_intervals = 2  # a shape traced only here
    xb = jnp.asarray(
        np.random.default_rng(6).uniform(0.0, 1.0, (BATCH, n_intervals, N_INPUTS))
    )

    def run(a):
        return _simulate(model, a[1], interval, scalar=a[0])

    sols, loop = _batch_and_loop(run, (taus, xb))
    assert tiles == [1], tiles
    # Without a spike record (`forward`), the tile is `TILE_BYTES` (64 KiB): the
    # batch is not tiled (no further call of `_run_tiles`).
    counts = jax.vmap(
        lambda a: _replace(model.layer, "tau_mem", a[0]).forward(a[1], interval)
    )((taus, xb))
    assert tiles == [1], tiles
    np.testing.assert_array_equal(np.asarray(counts), np.asarray(sols.counts))
    _assert_batch_equals_loop(sols, loop, stats=False)
    steps = np.asarray(sols.stats["num_steps"])
    for i in range(BATCH):
        alone = np.asarray(loop[i].stats["num_steps"])
        np.testing.assert_array_equal(steps[i], alone + (n_intervals if i else 0))
        layer = _replace(model.layer, "tau_mem", taus[i])
        _check_reference(_run_i(sols, i), layer, xb[i], interval)


@pytest.mark.parametrize("max_spikes", [None, 4])
@pytest.mark.parametrize("model", ["lif_exact", "adex"])
def test_batch_of_no_intervals(model, max_spikes, monkeypatch):
    # `integrate` accepts a schedule of no intervals, and so does a vmapped batch
    # of them: each run ends where it started, without spikes, and its gradient
    # is zero. (The folded scan's body is traced although it never runs; it wrote
    # a (B, 1, n) slice into the (B, 0, n) counts.) The closed-form walk runs one
    # run per tile here.
    monkeypatch.setattr(_fold, "TILE_BYTES", 32)
    monkeypatch.setattr(_fold, "RECORD_TILE_BYTES", 32)
    model = MODELS[model]
    layer = model.layer
    states = model.state(np.random.default_rng(7))
    x = jnp.zeros((BATCH, 0, N_INPUTS))

    def run(weight, x, state):
        return sj.integrate(
            layer.dynamics,
            layer.solver,
            weight,
            x,
            model.interval,
            state,
            stepsize_controller=layer.stepsize_controller,
            root_finder=layer.root_finder,
            max_spikes=max_spikes,
        )

    sols = jax.vmap(run, in_axes=(None, 0, 0))(layer.weight, x, states)
    assert sols.counts.shape == (BATCH, 0, N_NEURONS)
    width = 0 if max_spikes is None else max_spikes
    assert sols.spike_times.shape == (BATCH, N_NEURONS, width)
    assert np.all(np.isinf(np.asarray(sols.spike_times)))
    np.testing.assert_array_equal(np.asarray(sols.num_spikes), 0)
    assert np.all(np.asarray(sols.result == sj.RESULTS.successful))
    for got, start in zip(jax.tree.leaves(sols.final_state), jax.tree.leaves(states)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(start))

    def loss(weight):
        sol = jax.vmap(run, in_axes=(None, 0, 0))(weight, x, states)
        return jnp.sum(sol.final_state.v)

    grad = jax.grad(loss)(layer.weight)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)

    def final_voltage(state):
        sol = jax.vmap(run, in_axes=(None, 0, 0))(layer.weight, x, state)
        return jnp.sum(sol.final_state.v)

    # The state passes through: d(sum of final v) / d(start state) is 1 for v.
    grads = jax.grad(final_voltage)(states)
    np.testing.assert_array_equal(np.asarray(grads.v), 1.0)
    for leaf in jax.tree.leaves(grads)[1:]:
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_folded_spike_totals_are_exact_where_counts_round():
    """A folded batch writes its counts over the currents, in their float dtype;
    each neuron's spike total (`num_spikes`, without a spike record) is summed
    exactly in the scan. In float16 a count of 4095 per interval rounds to 4096,
    and the total must still be the unfolded run's (the sum of the exact counts),
    not the sum of the rounded ones."""
    dtype = jnp.float16
    layer = sj.SpikingODELayer(
        1, 1, sj.ODELIFDynamics(tau_mem=10.0), dtype=dtype, key=jax.random.key(0)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.ones((1, 1), dtype))
    x = jnp.full((2, 3, 1), 2100.0, dtype)

    def run(xb):
        return sj.integrate(
            layer.dynamics,
            layer.solver,
            layer.weight,
            xb,
            jnp.asarray(1.0, dtype),
            layer.init_state(),
            stepsize_controller=layer.stepsize_controller,
            max_spikes=None,
            keep_interval_states=False,
            throw=False,
        )

    folded = jax.vmap(run)(x)
    alone = run(x[0])
    assert np.asarray(folded.counts).max() == 4096  # rounded in float16
    rounded_total = int(np.asarray(alone.counts, np.int64).sum())
    assert int(alone.num_spikes[0]) != rounded_total  # the exact total differs
    np.testing.assert_array_equal(np.asarray(folded.num_spikes[0]), alone.num_spikes)
    np.testing.assert_array_equal(np.asarray(folded.num_spikes[1]), alone.num_spikes)


# -- the batch's currents: computed in time-major order, or batch-major -------------

# (n_inputs, n_neurons): fewer inputs than neurons (under `vmap` over the inputs,
# the batch's currents are computed from the inputs transposed to time-major order,
# and the counts go into zeros), as many and more (computed batch-major, and the
# counts written over them).
CURRENT_SHAPES = [(3, 5), (5, 5), (8, 5)]


@pytest.mark.parametrize("n_inputs, n_neurons", CURRENT_SHAPES)
@pytest.mark.parametrize("weight_batched", [False, True])
def test_batch_currents_in_either_order(n_inputs, n_neurons, weight_batched):
    # With the weight batched too, the currents are computed batch-major whatever
    # the shapes; with fewer inputs than neurons the counts still go into zeros.
    rng = np.random.default_rng(7)
    layer = sj.SpikingODELayer(
        n_inputs,
        n_neurons,
        sj.ODELIFDynamics(tau_mem=10.0),
        dtype=jnp.float64,
        key=jax.random.key(1),
    )
    w = rng.uniform(0.1, 1.0, (BATCH, n_neurons, n_inputs)) * 6 / n_inputs
    weights = jnp.asarray(w if weight_batched else w[0])
    x = jnp.asarray(rng.uniform(0.0, 1.0, (BATCH, 4, n_inputs)))
    interval = 2.0

    def with_weight(weight):
        return eqx.tree_at(lambda m: m.weight, layer, weight)

    def run(weight, xb):
        lay = with_weight(weight)
        sol = lay.simulate(xb, interval, MAX_SPIKES, throw=False)
        return sol, lay.forward(xb, interval, throw=False)

    def loss(weight, xb):
        sol, _ = run(weight, xb)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.sum(t) + jnp.sum(sol.final_state.v**2) + jnp.sum(sol.counts)

    in_axes = (0 if weight_batched else None, 0)
    weight_i = lambda i: weights[i] if weight_batched else weights
    sols, counts = jax.vmap(run, in_axes)(weights, x)
    loop = [run(weight_i(i), x[i]) for i in range(BATCH)]
    _assert_batch_equals_loop(sols, [sol for sol, _ in loop])
    for i, (_, c) in enumerate(loop):
        np.testing.assert_array_equal(np.asarray(counts[i]), np.asarray(c))
        _check_reference(_run_i(sols, i), with_weight(weight_i(i)), x[i], interval)
    # The gradient of the batch's loss with respect to the weight (each run's own,
    # or the sum over the runs of the shared one), as the loop's.
    grads = jax.grad(lambda w, x: jnp.sum(jax.vmap(loss, in_axes)(w, x)))(weights, x)
    looped = [jax.grad(loss)(weight_i(i), x[i]) for i in range(BATCH)]
    expected = jnp.stack(looped) if weight_batched else sum(looped)
    np.testing.assert_allclose(grads, expected, rtol=TOL, atol=TOL)
    assert float(jnp.max(jnp.abs(expected))) > 0


@pytest.mark.parametrize(
    "model, buffer", [("lif_exact", None), ("lif_exact", 0), ("adex", None)]
)
def test_nested_vmap_derivatives_equal_loop(model, buffer):
    # `forward` (`buffer` None), or `simulate` with an empty spike buffer, under
    # two `vmap`s (a grid of batches, as in a sweep over batches): the derivatives
    # in both modes, with respect to the shared weight and to the inputs, are
    # those of the runs one by one (forward mode on the closed-form path, which
    # has it). (The run's custom derivative had its spike times, empty, unbatched
    # under the outer `vmap` and its rule's batched: forward and reverse mode
    # raised a `TypeError`.)
    model = MODELS[model]
    layer = model.layer
    rng = np.random.default_rng(11)
    x = jnp.stack([model.inputs(rng, 2) for _ in range(2)])  # (2, 2, T, inputs)
    interval = model.interval

    def loss(weight, xb):
        lay = eqx.tree_at(lambda m: m.weight, layer, weight)
        if buffer is None:
            counts = lay.forward(xb, interval, throw=False)
            return jnp.sum(counts * jnp.arange(1, counts.shape[0] + 1)[:, None])
        sol = lay.simulate(xb, interval, buffer, throw=False)
        return jnp.sum(sol.counts) + jnp.sum(sol.final_state.v**2)

    nested = jax.vmap(jax.vmap(loss, (None, 0)), (None, 0))

    def total(weight, x):
        return jnp.sum(nested(weight, x))

    pairs = [(i, j) for i in range(2) for j in range(2)]
    # (Compiled once and called per run, rather than traced again per run.)
    one = jax.jit(jax.grad(loss, (0, 1)))
    loop = [one(layer.weight, x[i, j]) for i, j in pairs]
    g_weight, g_x = jax.jit(jax.grad(total, (0, 1)))(layer.weight, x)
    close = functools.partial(np.testing.assert_allclose, rtol=TOL, atol=TOL)
    close(g_weight, sum(g for g, _ in loop))
    close(g_x, jnp.stack([g for _, g in loop]).reshape(x.shape))
    assert float(jnp.max(jnp.abs(g_weight))) > 0
    if not model.closed_form:  # the adaptive path's rule is reverse mode only
        return
    dw = jnp.asarray(rng.standard_normal(layer.weight.shape))
    _, t_nested = jax.jit(lambda w, dw: jax.jvp(lambda w: nested(w, x), (w,), (dw,)))(
        layer.weight, dw
    )
    one_jvp = jax.jit(lambda w, dw, xb: jax.jvp(lambda w: loss(w, xb), (w,), (dw,))[1])
    t_loop = [one_jvp(layer.weight, dw, x[i, j]) for i, j in pairs]
    close(t_nested, jnp.stack(t_loop).reshape(2, 2))


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)])
def test_run_currents_are_the_product_with_its_derivatives(in_axes):
    # `run_currents` under `vmap` (time-major over the inputs alone, with fewer
    # inputs than neurons) against `input_currents`: the same values, and the same
    # derivatives in forward and reverse mode and of second order (a rule of its
    # own, for the batching rule could not be transposed).
    from snode_jax._misc import input_currents, run_currents

    rng = np.random.default_rng(3)
    shapes = ((BATCH, 6, 3), (BATCH, 5, 3))  # inputs (B, T, k), weight (B, n, k)
    x, w, dx, dw = (
        jnp.asarray(rng.standard_normal(s if a == 0 else s[1:]))
        for s, a in zip(shapes * 2, in_axes * 2)
    )
    ours = jax.vmap(run_currents, in_axes)
    product = jax.vmap(input_currents, in_axes)
    np.testing.assert_array_equal(np.asarray(ours(x, w)), np.asarray(product(x, w)))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-13, atol=1e-13)
    (_, t_ours), (_, t_product) = (
        jax.jvp(f, (x, w), (dx, dw)) for f in (ours, product)
    )
    close(t_ours, t_product)
    ct = jnp.asarray(rng.standard_normal(ours(x, w).shape))
    for a, b in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(product, x, w)[1](ct)):
        close(a, b)
    # One argument differentiated (the other's tangent a symbolic zero).
    close(
        jax.grad(lambda w: jnp.sum(ours(x, w) ** 3))(w),
        jax.grad(lambda w: jnp.sum(product(x, w) ** 3))(w),
    )
    close(
        jax.grad(lambda x: jnp.sum(ours(x, w) ** 3))(x),
        jax.grad(lambda x: jnp.sum(product(x, w) ** 3))(x),
    )
    hess = [
        jax.hessian(lambda x, w: jnp.sum(f(x, w) ** 3), (0, 1))(x, w)
        for f in (ours, product)
    ]
    for a, b in zip(jax.tree.leaves(hess[0]), jax.tree.leaves(hess[1])):
        close(a, b)
