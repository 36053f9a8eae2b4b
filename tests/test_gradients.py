"""Gradients of simulations: exact gradients of spike times and voltages, and
surrogate gradients of spike counts.

The exact gradients are checked against an independent reference written here (the
closed-form LIF solution in `jax.numpy`, spike by spike, with the spike structure of
a plain NumPy forward pass held fixed, differentiated by JAX) and against central
finite differences of the library's own forward values.

Compilation dominates the run time, so the library's gradient is one jitted function
(`library_grads`) shared by most tests: losses differ only in their coefficients.
"""

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

jax.config.update("jax_enable_x64", True)  # also done by conftest.py

PARAMS = ("tau_mem", "v_rest", "v_threshold", "v_reset", "C_mem")
OUTPUTS = ("times", "final", "states", "counts")
EXACT_OUTPUTS = ("times", "final", "states")  # differentiated without a surrogate

RTOL_REFERENCE = 1e-9  # library vs autodiff of the closed-form reference
RTOL_FD = 1e-6  # library vs central finite differences
FD_STEP = 1e-6  # relative step of the finite differences
MIN_MARGIN = 1e-3  # every threshold decision at least this far from the threshold
INTERVAL = 10.0
MAX_SPIKES = 40

SURROGATES = {
    "arctan": sj.ArctanSurrogate(),  # the default (slope 2)
    "sigmoid": sj.SigmoidSurrogate(slope=5.0),
    "fast_sigmoid": sj.FastSigmoidSurrogate(slope=10.0),
}


# -- the independent reference -------------------------------------------------------


def numpy_forward(weight, inputs, interval, params, v0=None):
    """Plain NumPy LIF forward pass, spike by spike.

    Returns `(counts, min_margin)`: the spikes of every (interval, neuron) and the
    smallest distance of any threshold decision from the threshold (the end voltage
    below it, and, after a spike, the voltage the neuron would have reached without
    the last reset above it). The spike structure is stable under perturbations that
    move voltages by much less than `min_margin`.
    """
    weight, inputs = np.asarray(weight, np.float64), np.asarray(inputs, np.float64)
    n, n_intervals = weight.shape[0], inputs.shape[0]
    p = {k: np.broadcast_to(np.asarray(params[k], np.float64), (n,)) for k in PARAMS}
    currents = inputs @ weight.T
    v = p["v_rest"].copy() if v0 is None else np.array(v0, np.float64)
    counts = np.zeros((n_intervals, n), np.int64)
    min_margin = np.inf
    for k in range(n_intervals):
        for i in range(n):
            tau, v_rest, theta, v_reset, c_mem = (p[q][i] for q in PARAMS)
            v_inf = v_rest + currents[k, i] * tau / c_mem
            t, vi, segment = 0.0, v[i], None
            while v_inf > theta:
                t_cross = t + tau * math.log((v_inf - vi) / (v_inf - theta))
                if t_cross > interval:
                    break
                segment = (t, vi)
                t, vi = t_cross, v_reset
                counts[k, i] += 1
            v_end = v_inf + (vi - v_inf) * math.exp(-(interval - t) / tau)
            min_margin = min(min_margin, theta - v_end)
            if segment is not None:
                t_seg, v_seg = segment
                v_free = v_inf + (v_seg - v_inf) * math.exp(-(interval - t_seg) / tau)
                min_margin = min(min_margin, v_free - theta)
            v[i] = v_end
    return counts, min_margin


def surrogate_derivative(surrogate):
    """The docstring formula of `surrogate`, written out independently."""
    a = surrogate.slope
    if isinstance(surrogate, sj.ArctanSurrogate):
        return lambda x: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
    if isinstance(surrogate, sj.SigmoidSurrogate):

        def sigmoid_bump(x):
            s = 1 / (1 + jnp.exp(-a * x))
            return a * s * (1 - s)

        return sigmoid_bump
    assert isinstance(surrogate, sj.FastSigmoidSurrogate)
    return lambda x: 1 / (1 + a * jnp.abs(x)) ** 2


def _zero_with_derivative(x, derivative):
    """Zero in value, `derivative(x) * dx` in derivative."""
    return jax.lax.stop_gradient(derivative(x)) * (x - jax.lax.stop_gradient(x))


def reference_outputs(weight, params, inputs, interval, counts, max_spikes, v0=None):
    """The closed-form LIF solution with `counts` spikes in every (interval, neuron),
    in `jax.numpy`, one spike at a time, differentiable in everything.

    Each crossing is at `t + tau log((v_inf - v) / (v_inf - v_threshold))` from the
    previous event `(t, v)`, which becomes `(crossing, v_reset)`; the interval ends at
    `v_inf + (v - v_inf) exp(-(T - t) / tau)`.

    Returns a dict: `times` (n, max_spikes) zero padded, `final` (n,), `states`
    (T, n) interval-end voltages, and `counts`: for every surrogate name in
    `SURROGATES`, the (T, n) counts carrying that surrogate's gradient at both
    threshold decisions of every (interval, neuron).
    """
    n, n_intervals = weight.shape[0], inputs.shape[0]
    currents = jnp.asarray(inputs) @ weight.T
    derivatives = {name: surrogate_derivative(s) for name, s in SURROGATES.items()}

    def par(name, i):
        p = params[name]
        return p if jnp.ndim(p) == 0 else p[i]

    v = [par("v_rest", i) if v0 is None else v0[i] for i in range(n)]
    times = [[] for _ in range(n)]
    states = []
    soft_counts = {name: [] for name in derivatives}
    for k in range(n_intervals):
        row_v = []
        row_c = {name: [] for name in derivatives}
        for i in range(n):
            tau, v_rest, theta, v_reset, c_mem = (par(q, i) for q in PARAMS)
            v_inf = v_rest + currents[k, i] * tau / c_mem
            t, vi = 0.0, v[i]
            t_seg = v_seg = None  # start of the segment that ends in the last spike
            for _ in range(int(counts[k, i])):
                t_cross = t + tau * jnp.log((v_inf - vi) / (v_inf - theta))
                times[i].append(k * interval + t_cross)
                t_seg, v_seg = t, vi
                t, vi = t_cross, v_reset
            v_end = v_inf + (vi - v_inf) * jnp.exp(-(interval - t) / tau)
            for name, derivative in derivatives.items():
                count = float(counts[k, i])
                count = count + _zero_with_derivative(v_end - theta, derivative)
                if counts[k, i] >= 1:
                    decay = jnp.exp(-(interval - t_seg) / tau)
                    v_free = v_inf + (v_seg - v_inf) * decay
                    count = count + _zero_with_derivative(v_free - theta, derivative)
                row_c[name].append(count)
            v[i] = v_end
            row_v.append(v_end)
        states.append(jnp.stack(row_v))
        for name in derivatives:
            soft_counts[name].append(jnp.stack(row_c[name]))
    zero = jnp.zeros((), currents.dtype)
    padded = []
    for row in times:
        assert len(row) <= max_spikes
        padded.append(jnp.stack(row + [zero] * (max_spikes - len(row))))
    return dict(
        times=jnp.stack(padded),
        final=jnp.stack(v),
        states=jnp.stack(states),
        counts={name: jnp.stack(c) for name, c in soft_counts.items()},
    )


def reference_cotangent(coefs, surrogate_name):
    """Cotangent for `reference_outputs` of the loss `weighted_loss(coefs)`, with the
    counts' surrogate `surrogate_name`."""
    counts = {name: jnp.zeros_like(coefs["counts"]) for name in SURROGATES}
    counts[surrogate_name] = coefs["counts"]
    return dict(
        times=coefs["times"],
        final=coefs["final"],
        states=coefs["states"],
        counts=counts,
    )


def reference_loss(outputs, coefs, surrogate_name="arctan"):
    loss = sum(jnp.sum(coefs[k] * outputs[k]) for k in EXACT_OUTPUTS)
    return loss + jnp.sum(coefs["counts"] * outputs["counts"][surrogate_name])


# -- the library side ------------------------------------------------------------------


def library_outputs(layer, inputs, interval, max_spikes, state=None):
    sol = layer.simulate(inputs, interval, max_spikes=max_spikes, state=state)
    t = sol.spike_times
    return dict(
        times=jnp.where(jnp.isfinite(t), t, 0.0),  # the padding contributes nothing
        final=sol.final_state.v,
        states=sol.interval_states.v,
        counts=sol.counts,
    )


def integrate_chunked(layer, inputs, interval, state, max_spikes, chunk):
    """`layer.simulate`, through `sj.integrate` with a closed-form adjoint that takes
    `chunk` intervals at a time (`None`: its default)."""
    return sj.integrate(
        layer.dynamics,
        layer.solver,
        layer.weight,
        inputs,
        interval,
        state,
        stepsize_controller=layer.stepsize_controller,
        max_spikes=max_spikes,
        surrogate=layer.surrogate,
        adjoint=sj.ClosedFormAdjoint(chunk_intervals=chunk),
    )


def weighted_loss(outputs, coefs):
    return sum(jnp.sum(coefs[k] * outputs[k]) for k in OUTPUTS)


def param_grads(grads_layer):
    """`{name: gradient}` for the weight and every dynamics parameter."""
    out = {"weight": grads_layer.weight}
    for name in PARAMS:
        out[name] = getattr(grads_layer.dynamics, name)
    return out


def _grads_and_outputs(layer, inputs, coefs, interval, max_spikes):
    def loss(lyr):
        outputs = library_outputs(lyr, inputs, interval, max_spikes)
        return weighted_loss(outputs, coefs), outputs

    grads, outputs = eqx.filter_grad(loss, has_aux=True)(layer)
    return param_grads(grads), outputs


def _grads(layer, inputs, coefs, interval, max_spikes):
    return _grads_and_outputs(layer, inputs, coefs, interval, max_spikes)[0]


# `interval` and `max_spikes` are Python numbers: static, the same in most tests.
library_grads_and_outputs = eqx.filter_jit(_grads_and_outputs)


def library_grads(layer, inputs, coefs, interval, max_spikes):
    return library_grads_and_outputs(layer, inputs, coefs, interval, max_spikes)[0]


def rel_err(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def assert_grads_close(actual, expected, rtol, *, tiny=1e-4, label=""):
    """Norm-wise relative error per parameter, and elementwise where the expected
    entry is not tiny (`>= tiny` times the largest entry of that parameter).

    Returns the norm-wise errors."""
    errors = {}
    for name, exp in expected.items():
        act = np.asarray(actual[name], np.float64)
        exp = np.asarray(exp, np.float64)
        assert act.shape == exp.shape, (name, act.shape, exp.shape)
        assert np.all(np.isfinite(act)), f"{label}{name}: non-finite gradient {act}"
        assert np.linalg.norm(exp) > 0, f"{label}{name}: expected gradient is zero"
        errors[name] = rel_err(act, exp)
        big = np.abs(exp) >= tiny * np.max(np.abs(exp))
        elementwise = np.abs(act - exp)[big] / np.abs(exp)[big]
        assert errors[name] <= rtol, (
            f"{label}{name}: norm-wise relative error {errors[name]:.3e} > {rtol:.0e}"
            f"\nactual   {act}\nexpected {exp}"
        )
        assert np.all(elementwise <= rtol), (
            f"{label}{name}: elementwise relative error {elementwise.max():.3e} > "
            f"{rtol:.0e}\nactual   {act}\nexpected {exp}"
        )
    return errors


# -- configurations ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    weight: np.ndarray
    params: dict  # name -> float or (n,) float64 array
    inputs: np.ndarray

    @property
    def n_neurons(self):
        return self.weight.shape[0]

    def layer(self, surrogate=None, dtype=jnp.float64, solver=None):
        dynamics = sj.ODELIFDynamics(
            **{k: jnp.asarray(v, dtype) for k, v in self.params.items()}
        )
        layer = sj.SpikingODELayer(
            self.weight.shape[1],
            self.n_neurons,
            dynamics,
            key=jax.random.key(0),
            surrogate=surrogate,
            solver=solver,
            dtype=dtype,
        )
        weight = jnp.asarray(self.weight, dtype)
        return eqx.tree_at(lambda lyr: lyr.weight, layer, weight)

    def jnp_params(self):
        return {k: jnp.asarray(v, jnp.float64) for k, v in self.params.items()}

    def structure(self, inputs=None, v0=None):
        inputs = self.inputs if inputs is None else inputs
        return numpy_forward(self.weight, inputs, INTERVAL, self.params, v0)

    def coefs(self, seed, keys=OUTPUTS):
        """Random loss coefficients; zero for the outputs not in `keys`."""
        rng = np.random.default_rng(seed)
        n, t = self.n_neurons, self.inputs.shape[0]
        shapes = dict(times=(n, MAX_SPIKES), final=(n,), states=(t, n), counts=(t, n))
        return {
            k: jnp.asarray(rng.normal(size=s) if k in keys else np.zeros(s))
            for k, s in shapes.items()
        }


SCALAR_PARAMS = dict(tau_mem=20.0, v_rest=0.1, v_threshold=1.0, v_reset=-0.1, C_mem=1.5)
PER_NEURON_PARAMS = dict(
    tau_mem=np.array([15.0, 20.0, 25.0]),
    v_rest=np.array([0.0, 0.1, -0.05]),
    v_threshold=np.array([1.0, 1.2, 0.9]),
    v_reset=np.array([-0.1, 0.0, 0.2]),
    C_mem=np.array([1.0, 1.5, 0.8]),
)


def make_case(params) -> Case:
    # Neuron 0 fires several times in most intervals, neuron 1 zero to four times,
    # neuron 2 rarely; interval 2 has a weak input and (almost) no spikes.
    rng = np.random.default_rng(3)
    inputs = rng.uniform(0.0, 1.0, (5, 4))
    inputs[2] *= 0.1
    weight = rng.uniform(0.2, 1.0, (3, 4)) * np.array([[0.8], [0.3], [0.12]])
    return Case(weight, dict(params), inputs)


CASES = {"scalar": make_case(SCALAR_PARAMS), "per_neuron": make_case(PER_NEURON_PARAMS)}


@pytest.fixture(params=list(CASES))
def case_name(request):
    return request.param


@functools.cache
def reference_vjp(case_name):
    """`(outputs, vjp)` of `reference_outputs` w.r.t. `(weight, params)`, computed
    once per case and shared by the tests."""
    case = CASES[case_name]
    counts, _ = case.structure()

    def outputs(weight, params):
        return reference_outputs(
            weight, params, case.inputs, INTERVAL, counts, MAX_SPIKES
        )

    return jax.vjp(outputs, jnp.asarray(case.weight), case.jnp_params())


def reference_grads(case_name, coefs, surrogate_name="arctan"):
    _, vjp = reference_vjp(case_name)
    g_w, g_p = vjp(reference_cotangent(coefs, surrogate_name))
    return {"weight": g_w, **g_p}


def test_case_structure(case_name):
    """The configurations hold what the other tests rely on."""
    case = CASES[case_name]
    counts, margin = case.structure()
    assert margin > MIN_MARGIN
    assert counts[:, 0].max() >= 5  # several spikes per interval
    totals = counts.sum(axis=0)
    assert 1 <= totals.min() and totals.max() <= MAX_SPIKES - 5
    assert (counts == 0).any() and (counts == 1).any() and (counts >= 2).any()
    _, out = library_grads_and_outputs(
        case.layer(), jnp.asarray(case.inputs), case.coefs(0), INTERVAL, MAX_SPIKES
    )
    np.testing.assert_array_equal(out["counts"], counts)


# -- 1. library vs autodiff of the closed-form reference -------------------------------


def test_forward_matches_reference(case_name):
    case = CASES[case_name]
    ref, _ = reference_vjp(case_name)
    _, out = library_grads_and_outputs(
        case.layer(), jnp.asarray(case.inputs), case.coefs(0), INTERVAL, MAX_SPIKES
    )
    for key in EXACT_OUTPUTS:
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out["counts"], case.structure()[0])


LOSSES = {
    "times": ("times",),
    "final": ("final",),
    "states": ("states",),
    "exact": EXACT_OUTPUTS,
    "all": OUTPUTS,  # with the default (arctan) surrogate on the counts
}


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_grads_match_reference(case_name, loss_name):
    """Many spike times (several per interval), final and interval-end voltages,
    w.r.t. the weight and every (scalar or per-neuron) dynamics parameter."""
    case = CASES[case_name]
    coefs = case.coefs(seed=1, keys=LOSSES[loss_name])
    expected = reference_grads(case_name, coefs)
    actual = library_grads(
        case.layer(), jnp.asarray(case.inputs), coefs, INTERVAL, MAX_SPIKES
    )
    assert_grads_close(actual, expected, RTOL_REFERENCE)


@pytest.mark.parametrize("flat_index", [True, False], ids=["flat", "pairs"])
def test_spike_time_grads_with_either_index(monkeypatch, flat_index):
    """The spike times' tangents are gathered from their intervals (in reverse
    mode, their cotangents added back) through one index per entry of the
    flattened `(interval, neuron)` array, or through (interval, neuron) pairs
    where that array has 2**31 entries or more (`take_entries`); the slots past a
    neuron's count take no entry. Both give the reference's gradients, with
    padded slots in the buffer (its size is the reference's plus `extra`)."""
    from snode_jax import _records

    if not flat_index:
        monkeypatch.setattr(_records, "FLAT_INDEX_LIMIT", 0)
    case = CASES["scalar"]
    counts, _ = case.structure()
    assert counts.sum(axis=0).max() < MAX_SPIKES  # some slots are padding
    coefs = case.coefs(seed=1, keys=("times",))
    expected = reference_grads("scalar", coefs)
    extra = 1 if flat_index else 2  # (a different shape: a fresh trace)
    padded = dict(coefs, times=jnp.pad(coefs["times"], ((0, 0), (0, extra))))
    actual = library_grads(
        case.layer(), jnp.asarray(case.inputs), padded, INTERVAL, MAX_SPIKES + extra
    )
    assert_grads_close(actual, expected, RTOL_REFERENCE)


@pytest.mark.parametrize("surrogate_name", ["sigmoid", "fast_sigmoid"])
def test_count_grads_match_reference(surrogate_name):
    """Counts over several intervals: the surrogate at both decisions of every
    (interval, neuron), with the margins differentiated exactly through all earlier
    spikes and resets. (Arctan: `test_grads_match_reference[*-all]`.)"""
    case_name = "per_neuron"
    case = CASES[case_name]
    coefs = case.coefs(seed=2, keys=("counts",))
    expected = reference_grads(case_name, coefs, surrogate_name)
    layer = case.layer(SURROGATES[surrogate_name])
    actual = library_grads(layer, jnp.asarray(case.inputs), coefs, INTERVAL, MAX_SPIKES)
    assert_grads_close(actual, expected, RTOL_REFERENCE)


def test_grads_wrt_state_and_interval_match_reference():
    """Gradients also reach an explicit initial state and the interval length."""
    case = CASES["per_neuron"]
    v0 = np.array([0.6, -0.3, 0.4])
    counts, margin = case.structure(v0=v0)
    assert margin > MIN_MARGIN
    coefs = case.coefs(seed=3)

    def ref_loss(weight, params, v0, interval):
        out = reference_outputs(
            weight, params, case.inputs, interval, counts, MAX_SPIKES, v0=v0
        )
        return reference_loss(out, coefs)

    g = jax.grad(ref_loss, argnums=(0, 1, 2, 3))(
        jnp.asarray(case.weight),
        case.jnp_params(),
        jnp.asarray(v0),
        jnp.asarray(INTERVAL),
    )
    expected = {"weight": g[0], **g[1], "v0": g[2], "interval": g[3]}

    @jax.jit
    def lib_grads(layer, v0, interval):
        def loss(args):
            lyr, v0, interval = args
            state = eqx.tree_at(lambda s: s.v, lyr.init_state(), v0)
            out = library_outputs(lyr, case.inputs, interval, MAX_SPIKES, state)
            return weighted_loss(out, coefs)

        return jax.grad(loss)((layer, v0, interval))

    g_layer, g_v0, g_interval = lib_grads(
        case.layer(), jnp.asarray(v0), jnp.asarray(INTERVAL)
    )
    actual = {**param_grads(g_layer), "v0": g_v0, "interval": g_interval}
    assert_grads_close(actual, expected, RTOL_REFERENCE)


def test_default_chunks_divide_the_run_where_they_can():
    """By default the chunks are about 256 KiB per array (1 to 128 intervals); a
    size that divides the number of intervals, within a factor 2 of that, is
    taken (no padding); where none does (a prime count), the last chunk is padded
    by fewer intervals than there are chunks. A size given is kept (evened out)."""
    from snode_jax._tangents import _chunk_intervals

    # (intervals, neurons of the folded batch, bytes per value) -> intervals per
    # chunk
    expected = {
        (100, 64 * 256, 8): 2,  # target 2 (2^15 values in float64)
        (100, 64 * 256, 4): 4,  # target 4 (2^16 values in float32)
        (100, 32 * 256, 8): 4,
        (100, 16 * 256, 8): 10,  # target 8: 10 divides 100 (8 would pad to 104)
        (100, 16 * 256, 4): 20,  # target 16: 20 divides 100
        (100, 256 * 256, 8): 1,  # at least one interval
        (1600, 256, 8): 100,  # target 128: 100 and 160 divide, 100 is nearer
        (400, 256, 8): 100,
        (100, 256, 8): 100,  # one chunk
        (3, 64 * 256, 8): 3,  # target 2: 1 and 3 divide, the larger is taken
    }
    for (intervals, lanes, itemsize), size in expected.items():
        assert _chunk_intervals(intervals, lanes, None, itemsize) == size
        assert intervals % size == 0
    size = _chunk_intervals(97, 16 * 256, None, 8)  # prime: no divisor near 8
    chunks = -(-97 // size)
    assert size == 8 and chunks * size - 97 < chunks
    assert _chunk_intervals(100, 64 * 256, 8, 8) == 8  # given: kept


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_derivatives_match_reference(chunk):
    """The closed-form adjoint takes its derivatives a chunk of intervals at a time,
    the last chunk padded (5 intervals in chunks of 2 or 3, padded by 1; or of 1).
    Reverse mode (weight, every parameter, the initial state, the interval) and
    forward mode along a random direction, against autodiff of the reference."""
    case = CASES["per_neuron"]
    v0 = np.array([0.6, -0.3, 0.4])
    counts, margin = case.structure(v0=v0)
    assert margin > MIN_MARGIN
    assert counts.shape[0] == 5
    coefs = case.coefs(seed=5)

    def ref_loss(weight, params, v0, interval):
        out = reference_outputs(
            weight, params, case.inputs, interval, counts, MAX_SPIKES, v0=v0
        )
        return reference_loss(out, coefs)

    ref_args = (
        jnp.asarray(case.weight),
        case.jnp_params(),
        jnp.asarray(v0),
        jnp.asarray(INTERVAL),
    )
    g = jax.grad(ref_loss, argnums=(0, 1, 2, 3))(*ref_args)
    expected = {"weight": g[0], **g[1], "v0": g[2], "interval": g[3]}
    directions = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(6), jnp.shape(a), a.dtype),
        ref_args,
    )
    expected_jvp = jax.jvp(ref_loss, ref_args, directions)[1]

    def lib_loss(layer, v0, interval):
        state = eqx.tree_at(lambda s: s.v, layer.init_state(), v0)
        inputs = jnp.asarray(case.inputs)
        sol = integrate_chunked(layer, inputs, interval, state, MAX_SPIKES, chunk)
        t = sol.spike_times
        out = dict(
            times=jnp.where(jnp.isfinite(t), t, 0.0),
            final=sol.final_state.v,
            states=sol.interval_states.v,
            counts=sol.counts,
        )
        return weighted_loss(out, coefs)

    layer = case.layer()
    g_layer, g_v0, g_interval = jax.jit(jax.grad(lib_loss, argnums=(0, 1, 2)))(
        layer, jnp.asarray(v0), jnp.asarray(INTERVAL)
    )
    actual = {**param_grads(g_layer), "v0": g_v0, "interval": g_interval}
    assert_grads_close(actual, expected, RTOL_REFERENCE)

    # The same direction in the library's arguments.
    d_weight, d_params, d_v0, d_interval = directions
    d_layer = jax.tree.map(jnp.zeros_like, eqx.filter(layer, eqx.is_inexact_array))
    d_layer = eqx.tree_at(lambda lyr: lyr.weight, d_layer, d_weight)
    for name in PARAMS:
        d_layer = eqx.tree_at(
            lambda lyr, name=name: getattr(lyr.dynamics, name), d_layer, d_params[name]
        )
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    actual_jvp = jax.jit(
        lambda p, v0, interval, dp, dv0, di: jax.jvp(
            lambda p, v0, i: lib_loss(eqx.combine(p, static), v0, i),
            (p, v0, interval),
            (dp, dv0, di),
        )[1]
    )(params, jnp.asarray(v0), jnp.asarray(INTERVAL), d_layer, d_v0, d_interval)
    np.testing.assert_allclose(actual_jvp, expected_jvp, rtol=RTOL_REFERENCE)


def four_neurons(t_ref):
    """Four LIF neurons (time constants 10-25 ms) driven hard enough to fire a few
    times in three intervals of 1 ms: `(layer, inputs, state)`, the state inside
    the refractory period (0.2 ms left) when there is one."""
    n = 4
    dyn = sj.ODELIFDynamics(
        tau_mem=jnp.linspace(10.0, 25.0, n),
        v_rest=0.0,
        v_threshold=1.0,
        v_reset=0.1,
        C_mem=1.0,
        t_ref=t_ref,
    )
    layer = sj.SpikingODELayer(3, n, dyn, key=jax.random.key(0))
    layer = eqx.tree_at(lambda lay: lay.weight, layer, 3.0 * layer.weight)
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    state = layer.init_state()
    if t_ref is not None:  # inside the refractory period (perturbed both ways)
        state = eqx.tree_at(lambda s: s.refractory, state, jnp.full(n, 0.2))
    return layer, x, state


@pytest.mark.parametrize("lengths", [1.0, (1.0, 0.7, 1.3)], ids=["uniform", "lengths"])
def test_chunked_gradient_with_refractory_state_matches_finite_differences(lengths):
    """Chunks of two intervals over three (the last padded) with a two-leaf state
    (voltage and refractory time left), a neuron still refractory at the end, with
    one interval length or one per interval: the gradient of a loss of every state
    leaf at every interval end, and of the spike times, along random directions
    (the lengths' included) equals central differences of the forward run."""
    layer, x, state = four_neurons(t_ref=0.4)
    n = layer.n_neurons
    args = (layer, x, jnp.asarray(lengths), state)
    params, static = eqx.partition(args, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    weights = jax.random.uniform(jax.random.key(2), (6, 3, n), minval=0.5)

    def run(p):
        lay, x, interval, state = eqx.combine(unravel(p), static)
        return integrate_chunked(lay, x, interval, state, 8, chunk=2)

    def loss(p):
        sol = run(p)
        times = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        s = sol.interval_states
        return (
            jnp.sum(weights[0] * s.v)
            + jnp.sum(weights[1] * s.refractory)
            + jnp.sum(weights[2, 0] * sol.final_state.refractory)
            + jnp.sum(times)
        )

    sol = run(flat)
    assert int(jnp.sum(sol.counts)) >= 3
    assert float(jnp.max(sol.final_state.refractory)) > 0  # refractory at the end
    grad = jax.jit(jax.grad(loss))(flat)
    value = jax.jit(loss)
    step = 1e-6
    for seed in (3, 4):
        v = jax.random.normal(jax.random.key(seed), flat.shape)
        fd = (value(flat + step * v) - value(flat - step * v)) / (2 * step)
        np.testing.assert_allclose(grad @ v, fd, rtol=RTOL_FD)


def test_derivatives_of_a_run_of_no_intervals():
    """With no interval the final state is the initial one: its gradient passes
    straight through, the weight gets none (reverse and forward mode)."""
    layer = sj.SpikingODELayer(3, 4, sj.ODELIFDynamics(), key=jax.random.key(0))
    coefs = jnp.arange(1.0, 5.0)

    def loss(weight, v0):
        lyr = eqx.tree_at(lambda lay: lay.weight, layer, weight)
        state = eqx.tree_at(lambda s: s.v, lyr.init_state(), v0)
        sol = integrate_chunked(lyr, jnp.zeros((0, 3)), 1.0, state, 4, None)
        assert sol.spike_times.shape == (4, 4)
        return jnp.sum(coefs * sol.final_state.v)

    args = (layer.weight, jnp.full(4, 0.3))
    g_weight, g_v0 = jax.grad(loss, argnums=(0, 1))(*args)
    np.testing.assert_array_equal(g_weight, 0.0)
    np.testing.assert_array_equal(g_v0, coefs)
    directions = (jnp.ones_like(layer.weight), jnp.ones(4))
    assert float(jax.jvp(loss, args, directions)[1]) == float(jnp.sum(coefs))


def test_chunk_intervals_must_be_positive():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="`chunk_intervals` must be a positive"):
            sj.ClosedFormAdjoint(chunk_intervals=bad)
    with pytest.raises(TypeError, match="`chunk_intervals` must be a positive int"):
        sj.ClosedFormAdjoint(chunk_intervals=2.5)  # pyright: ignore[reportArgumentType]


# -- 2. library vs finite differences of its own forward values ------------------------


def _leaf_getters():
    getters = {"weight": lambda lyr: lyr.weight}
    for name in PARAMS:
        getters[name] = lambda lyr, name=name: getattr(lyr.dynamics, name)
    return getters


def test_grads_match_finite_differences(case_name):
    case = CASES[case_name]
    coefs = case.coefs(seed=4, keys=EXACT_OUTPUTS)
    np_coefs = {k: np.asarray(v) for k, v in coefs.items()}
    layer = case.layer()
    base_counts, _ = case.structure()

    inputs = jnp.asarray(case.inputs)

    def loss_and_counts(lyr):
        # The forward values of `simulate` (computed along with a gradient, to share
        # the compiled function), the loss in NumPy.
        _, out = library_grads_and_outputs(lyr, inputs, coefs, INTERVAL, MAX_SPIKES)
        loss = sum(np.sum(np_coefs[k] * np.asarray(out[k])) for k in EXACT_OUTPUTS)
        return loss, np.asarray(out["counts"])

    grads = library_grads(layer, inputs, coefs, INTERVAL, MAX_SPIKES)
    fd = {}
    for name, get in _leaf_getters().items():
        value = np.asarray(get(layer), np.float64)
        fd_grad = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            h = FD_STEP * (abs(value[idx]) if value[idx] != 0 else 1.0)
            evals = []
            for sign in (1.0, -1.0):
                perturbed = value.copy()
                perturbed[idx] += sign * h
                lyr = eqx.tree_at(get, layer, jnp.asarray(perturbed))
                loss, counts = loss_and_counts(lyr)
                # The spike structure must not change under the perturbation.
                np.testing.assert_array_equal(counts, base_counts, err_msg=name)
                evals.append(loss)
            fd_grad[idx] = (evals[0] - evals[1]) / (2 * h)
        fd[name] = fd_grad
    assert_grads_close(grads, fd, RTOL_FD, tiny=1e-3)


# -- 3. +inf padding -------------------------------------------------------------------


def test_padded_spike_times_give_finite_zero_gradients():
    case = CASES["scalar"]
    # Neuron 2 never fires (negative weights): all its slots are padding.
    weight = case.weight.copy()
    weight[2] = -np.abs(weight[2])
    case = dataclasses.replace(case, weight=weight)
    counts, margin = case.structure()
    assert margin > MIN_MARGIN and counts[:, 2].sum() == 0
    totals = counts.sum(axis=0)
    assert totals.max() < MAX_SPIKES  # every neuron has padded slots
    layer = case.layer()
    inputs = jnp.asarray(case.inputs)

    # The loss `jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0))` of the spike times t.
    ones = dict(case.coefs(seed=0, keys=()), times=jnp.ones((3, MAX_SPIKES)))
    grads, outputs = library_grads_and_outputs(
        layer, inputs, ones, INTERVAL, MAX_SPIKES
    )
    np.testing.assert_array_equal(outputs["counts"], counts)
    for name, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))), (name, g)
    np.testing.assert_array_equal(grads["weight"][2], 0.0)
    assert np.all(grads["weight"][:2] != 0.0)

    # Coefficients on the padded slots, however large, change nothing.
    coefs = case.coefs(seed=5, keys=("times",))
    big = np.where(np.arange(MAX_SPIKES) >= totals[:, None], 1e12, 0.0)
    coefs_big = dict(coefs, times=coefs["times"] + big)
    g1 = library_grads(layer, inputs, coefs, INTERVAL, MAX_SPIKES)
    g2 = library_grads(layer, inputs, coefs_big, INTERVAL, MAX_SPIKES)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)

    # And the gradient is the reference's, whose padded slots are constant zeros.
    def ref_loss(weight, params):
        out = reference_outputs(
            weight, params, case.inputs, INTERVAL, counts, MAX_SPIKES
        )
        return jnp.sum(out["times"])

    g_w, g_p = jax.grad(ref_loss, argnums=(0, 1))(
        jnp.asarray(case.weight), case.jnp_params()
    )
    expected = {"weight": g_w[:2], **g_p}
    grads["weight"] = grads["weight"][:2]
    assert_grads_close(grads, expected, RTOL_REFERENCE)


# -- 4. jit, vmap, float32 -----------------------------------------------------------


def test_forward_count_grads_without_jit():
    """`forward` (no spike buffer), differentiated without `jit`, gives the counts of
    `simulate` the same surrogate gradient (jitted in `library_grads`)."""
    case_name = "per_neuron"
    case = CASES[case_name]
    coefs = case.coefs(seed=6, keys=("counts",))
    layer = case.layer()

    def loss(lyr):
        return jnp.sum(coefs["counts"] * lyr.forward(case.inputs, INTERVAL))

    eager = param_grads(eqx.filter_grad(loss)(layer))
    jitted = library_grads(layer, jnp.asarray(case.inputs), coefs, INTERVAL, MAX_SPIKES)
    # The same formulas, rounded in another order (op by op, or fused and the
    # chunks' closed form recomputed): an element down to `tiny` = 1e-4 of the
    # largest, summed from tens of terms, is off by up to 1e4 x tens of eps of it.
    assert_grads_close(eager, jitted, 1e-11)
    assert_grads_close(eager, reference_grads(case_name, coefs), RTOL_REFERENCE)


def test_per_sample_grads_under_vmap():
    case = CASES["per_neuron"]
    coefs = case.coefs(seed=7)
    layer = case.layer()
    # Different spike structures per sample.
    batch = np.stack([case.inputs, 0.6 * case.inputs, case.inputs[::-1] * 1.2])
    structures = [case.structure(inputs) for inputs in batch]
    for _, margin in structures:
        assert margin > MIN_MARGIN
    assert not np.array_equal(structures[0][0], structures[1][0])
    assert not np.array_equal(structures[0][0], structures[2][0])

    per_sample_fn = eqx.filter_jit(
        eqx.filter_vmap(
            lambda x: _grads(layer, x, coefs, INTERVAL, MAX_SPIKES), in_axes=0
        )
    )
    per_sample = per_sample_fn(jnp.asarray(batch))
    for b, inputs in enumerate(batch):
        single = library_grads(layer, jnp.asarray(inputs), coefs, INTERVAL, MAX_SPIKES)
        sample = {name: g[b] for name, g in per_sample.items()}
        assert_grads_close(sample, single, 1e-12, label=f"sample {b}: ")


# A batch's gradient (`grad` of a loss summed over `jax.vmap`): the tangents of the
# batch are computed folded into the neuron axis (`_tangents.py`), except where a
# batched interval, or tangents of one run (`jax.jacfwd`), keep them vmapped.


def _batch_inputs(case):
    # Different spike structures per sample.
    return np.stack([case.inputs, 0.6 * case.inputs[::-1], 1.2 * case.inputs[::-1]])


def _reference_batch_grads(case, coefs, batch, params=None, intervals=None):
    """Per sample, the reference gradient of `weighted_loss` w.r.t. the weight and
    the parameters (`params[b]`, default the case's) over `intervals[b]` (default
    `INTERVAL`), each with its own spike structure."""
    grads = []
    for b, inputs in enumerate(batch):
        p = case.params if params is None else params[b]
        interval = INTERVAL if intervals is None else intervals[b]
        counts, margin = numpy_forward(case.weight, inputs, interval, p)
        assert margin > MIN_MARGIN

        def loss(weight, jparams):
            out = reference_outputs(
                weight, jparams, inputs, interval, counts, MAX_SPIKES
            )
            return reference_loss(out, coefs)

        jparams = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
        g_w, g_p = jax.grad(loss, argnums=(0, 1))(jnp.asarray(case.weight), jparams)
        grads.append({"weight": g_w, **g_p})
    return grads


@pytest.fixture
def tangent_shapes(monkeypatch):
    """The `(time, lanes)` shape of the currents of every closed-form tangent
    computation traced during the test."""
    from snode_jax import _tangent_primitive as _tangents

    seen = []
    real = _tangents.tangents_in_closed_form

    def spy(primals, tangents, options):
        seen.append(tuple(primals[1].shape))
        return real(primals, tangents, options)

    monkeypatch.setattr(_tangents, "tangents_in_closed_form", spy)
    return seen


def test_batch_grads_fold_the_batch(case_name, tangent_shapes):
    case = CASES[case_name]
    coefs = case.coefs(seed=11)
    batch = _batch_inputs(case)
    n_samples, n_intervals = batch.shape[:2]

    @eqx.filter_jit
    def batch_grads(layer, xb):
        def loss(lyr):
            out = jax.vmap(lambda x: library_outputs(lyr, x, INTERVAL, MAX_SPIKES))(xb)
            per_sample = jax.vmap(lambda o: weighted_loss(o, coefs))(out)
            return jnp.sum(per_sample)

        return param_grads(eqx.filter_grad(loss)(layer))

    actual = batch_grads(case.layer(), jnp.asarray(batch))
    folded = (n_intervals, n_samples * case.n_neurons)
    assert folded in tangent_shapes
    per_sample = _reference_batch_grads(case, coefs, batch)
    expected = jax.tree.map(lambda *g: sum(g), *per_sample)
    assert_grads_close(actual, expected, RTOL_REFERENCE)

    # Forward mode under `vmap`, with batched tangents: folded too.
    tangent_shapes.clear()
    directions = np.random.default_rng(12).normal(size=(n_samples,) + case.weight.shape)

    @eqx.filter_jit
    def batch_jvp(layer, xb, dw):
        def one(x, d):
            def loss(w):
                lyr = eqx.tree_at(lambda m: m.weight, layer, w)
                return weighted_loss(
                    library_outputs(lyr, x, INTERVAL, MAX_SPIKES), coefs
                )

            return jax.jvp(loss, (layer.weight,), (d,))[1]

        return jax.vmap(one)(xb, dw)

    jvps = batch_jvp(case.layer(), jnp.asarray(batch), jnp.asarray(directions))
    assert folded in tangent_shapes
    for b, g in enumerate(per_sample):
        expected_jvp = float(jnp.sum(g["weight"] * directions[b]))
        assert jvps[b] == pytest.approx(expected_jvp, rel=RTOL_REFERENCE)


def test_batch_grads_fold_a_batched_parameter(tangent_shapes):
    """A per-neuron parameter given per sample is folded with its tangent."""
    case = CASES["per_neuron"]
    coefs = case.coefs(seed=13)
    batch = _batch_inputs(case)
    taus = np.stack([case.params["tau_mem"] * s for s in (1.0, 0.8, 1.3)])

    @eqx.filter_jit
    def batch_grads(layer, xb, tb):
        def loss(lyr, tb):
            def one(x, tau):
                lyr_b = eqx.tree_at(lambda m: m.dynamics.tau_mem, lyr, tau)
                return weighted_loss(
                    library_outputs(lyr_b, x, INTERVAL, MAX_SPIKES), coefs
                )

            return jnp.sum(jax.vmap(one)(xb, tb))

        g_layer, g_tau = eqx.filter_grad(lambda args: loss(*args))((layer, tb))
        return param_grads(g_layer), g_tau

    actual, g_tau = batch_grads(case.layer(), jnp.asarray(batch), jnp.asarray(taus))
    assert (batch.shape[1], batch.shape[0] * case.n_neurons) in tangent_shapes
    params = [dict(case.params, tau_mem=tau) for tau in taus]
    per_sample = _reference_batch_grads(case, coefs, batch, params=params)
    expected = jax.tree.map(lambda *g: sum(g), *per_sample)
    # The layer's own tau_mem is replaced in every sample: no gradient reaches it.
    assert np.all(np.asarray(actual.pop("tau_mem")) == 0)
    expected.pop("tau_mem")
    assert_grads_close(actual, expected, RTOL_REFERENCE)
    for b, g in enumerate(per_sample):
        assert rel_err(g_tau[b], g["tau_mem"]) < RTOL_REFERENCE, b


def test_batch_grads_not_folded(tangent_shapes):
    """A batched interval keeps the tangents vmapped, and so does `jax.jacfwd` (a
    batch of tangents of one run); both still match the reference."""
    case = CASES["per_neuron"]
    coefs = case.coefs(seed=14)
    batch = _batch_inputs(case)
    n_samples, n_intervals = batch.shape[:2]
    intervals = np.array([9.0, 10.0, 11.5])

    @eqx.filter_jit
    def batch_grads(layer, xb, intervals):
        def loss(lyr):
            def one(x, interval):
                return weighted_loss(
                    library_outputs(lyr, x, interval, MAX_SPIKES), coefs
                )

            return jnp.sum(jax.vmap(one)(xb, intervals))

        return param_grads(eqx.filter_grad(loss)(layer))

    actual = batch_grads(case.layer(), jnp.asarray(batch), jnp.asarray(intervals))
    assert tangent_shapes
    assert (n_intervals, n_samples * case.n_neurons) not in tangent_shapes
    per_sample = _reference_batch_grads(case, coefs, batch, intervals=intervals)
    expected = jax.tree.map(lambda *g: sum(g), *per_sample)
    assert_grads_close(actual, expected, RTOL_REFERENCE)

    tangent_shapes.clear()

    @eqx.filter_jit
    def weight_jacobian(layer):
        def loss(w):
            lyr = eqx.tree_at(lambda m: m.weight, layer, w)
            return weighted_loss(
                library_outputs(lyr, case.inputs, INTERVAL, MAX_SPIKES), coefs
            )

        return jax.jacfwd(loss)(layer.weight)

    jac = weight_jacobian(case.layer())
    assert tangent_shapes
    directions = case.weight.size
    assert (n_intervals, directions * case.n_neurons) not in tangent_shapes
    expected_w = _reference_batch_grads(case, coefs, case.inputs[None])[0]["weight"]
    assert rel_err(jac, expected_w) < RTOL_REFERENCE


# float32: the forward values and the gradient are evaluated with relative rounding
# errors of eps32 / 2 per operation. With margins of order 1 (no catastrophic
# cancellation: every `v_inf - v_threshold` here is >= 0.1 and every log ratio is
# bounded away from 1), each term of a gradient (one output's sensitivity) is off
# by a modest multiple of eps32 per spike and reset it is chained through; with up
# to ~30 spikes per neuron that is at most a few hundred eps32 of the terms'
# magnitude. 1000 * eps32 ~ 1.2e-4 bounds the norm-wise error of each parameter's
# gradient with a safety factor (measured: <= ~30 eps32). Elementwise only for
# entries >= 10% of the largest of their parameter (measured: <= ~20 eps32): an
# entry much smaller than that is a sum of terms of both signs (random loss
# coefficients) that cancel, and carries their absolute error (up to ~700 eps32
# relative to itself, measured).
RTOL_FLOAT32 = 1000 * float(np.finfo(np.float32).eps)


def test_float32_grads_close_to_float64():
    # Values exactly representable in float32, so both runs solve the same problem.
    def f32(x):
        return np.asarray(x, np.float32).astype(np.float64)

    case = CASES["per_neuron"]
    case = dataclasses.replace(
        case,
        weight=f32(case.weight),
        inputs=f32(case.inputs),
        params={k: f32(v) for k, v in case.params.items()},
    )
    counts, margin = case.structure()
    assert margin > MIN_MARGIN
    coefs = case.coefs(seed=8)
    g64 = library_grads(
        case.layer(), jnp.asarray(case.inputs), coefs, INTERVAL, MAX_SPIKES
    )
    layer32 = case.layer(dtype=jnp.float32)
    coefs32 = {k: v.astype(jnp.float32) for k, v in coefs.items()}
    inputs32 = jnp.asarray(case.inputs, jnp.float32)
    g32, out32 = library_grads_and_outputs(
        layer32, inputs32, coefs32, INTERVAL, MAX_SPIKES
    )
    for name, g in g32.items():
        assert g.dtype == jnp.float32, name
    assert out32["times"].dtype == jnp.float32
    np.testing.assert_array_equal(out32["counts"], counts)
    assert_grads_close(g32, g64, RTOL_FLOAT32, tiny=0.1)


# -- 5. surrogate gradients by hand ----------------------------------------------------


@pytest.mark.parametrize("surrogate", list(SURROGATES.values()), ids=list(SURROGATES))
def test_surrogate_grads_by_hand(surrogate):
    """One interval, three independent neurons (per-neuron parameters), one input
    `x` (the other inputs are silent), each neuron starting at rest:

    - neuron 0 ends just below threshold without spiking;
    - neuron 1 spikes once: the last decision (the voltage without the reset, above
      threshold) contributes as well as the next one (the end voltage, below);
    - neuron 2 is driven below rest, far from threshold.

    d count / d p = sum over the decisions of derivative(margin) * d margin / d p.

    (The layer has the shapes of the `per_neuron` case, to share its compiled
    gradient: four more intervals follow, which the loss, the count of the first
    interval, does not see.)
    """
    T = INTERVAL
    x = 0.8
    tau = np.array([20.0, 20.0, 20.0])
    v_rest = np.array([0.1, 0.1, 0.1])
    theta = np.array([1.0, 1.0, 1.0])
    v_reset = np.array([-0.1, -0.1, -0.1])
    c_mem = np.array([1.5, 1.2, 1.5])
    decay = math.exp(-T / tau[0])
    a = x * tau / c_mem  # d v_inf / d w (first input)
    # Neuron 0: v_end = v_rest + w a (1 - decay) = theta - 0.05.
    # Neuron 1: v_inf = 3.  Neuron 2: v_inf = -1.
    w = np.array(
        [(theta[0] - 0.05 - v_rest[0]) / (a[0] * (1 - decay)), 2.9 / a[1], -1.1 / a[2]]
    )
    v_inf = v_rest + w * a
    weight = np.stack([w, [0.3, -0.4, 0.5], [0.2, 0.1, 0.0], [-0.3, 0.2, 0.4]], 1)

    bump = surrogate_derivative(surrogate)  # the docstring formula

    def d(margin):
        return float(bump(margin))

    expected = {name: np.zeros(3) for name in ("weight", *PARAMS)}
    # Quiet neurons 0 and 2: next_margin = v_end - theta with
    # v_end = v_inf + (v_rest - v_inf) decay = v_rest + (v_inf - v_rest)(1 - decay).
    for i in (0, 2):
        v_end = v_rest[i] + (v_inf[i] - v_rest[i]) * (1 - decay)
        dn = d(v_end - theta[i])
        expected["weight"][i] = dn * a[i] * (1 - decay)
        expected["v_threshold"][i] = -dn
        expected["v_rest"][i] = dn
        expected["C_mem"][i] = dn * (-w[i] * x * tau[i] / c_mem[i] ** 2) * (1 - decay)
        expected["tau_mem"][i] = dn * (
            (w[i] * x / c_mem[i]) * (1 - decay)
            - (v_inf[i] - v_rest[i]) * decay * T / tau[i] ** 2
        )
    v_end_quiet = v_rest + (v_inf - v_rest) * (1 - decay)
    assert -0.06 < v_end_quiet[0] - theta[0] < -0.04
    assert v_end_quiet[2] - theta[2] < -1.0

    # Neuron 1, one spike at t1 = tau log((v_inf - v0) / (v_inf - theta)), v0 = v_rest;
    # v_end = v_inf - (v_inf - v_reset) e_end, e_end = exp(-(T - t1) / tau);
    # v_free = v_inf - (v_inf - v0) exp(-T / tau) (no reset).
    i = 1
    u0, u_th, u_r = v_inf[i] - v_rest[i], v_inf[i] - theta[i], v_inf[i] - v_reset[i]
    t1 = tau[i] * math.log(u0 / u_th)
    assert 0 < t1 < T
    e_end = math.exp(-(T - t1) / tau[i])
    v_end = v_inf[i] - u_r * e_end
    v_free = v_inf[i] - u0 * decay
    last_margin, next_margin = v_free - theta[i], v_end - theta[i]
    assert last_margin > 0.1 and next_margin < -0.1
    dl, dn = d(last_margin), d(next_margin)
    # weight: dt1/dw = tau (a / u0 - a / u_th); v_free is linear in v_inf.
    dt1_dw = tau[i] * (a[i] / u0 - a[i] / u_th)
    dvend_dw = a[i] * (1 - e_end) - u_r * e_end * dt1_dw / tau[i]
    expected["weight"][i] = dl * a[i] * (1 - decay) + dn * dvend_dw
    # v_threshold: only t1 depends on it, dt1/dtheta = tau / u_th.
    expected["v_threshold"][i] = -dl + dn * (-u_r * e_end / u_th - 1)
    # v_reset: only v_end depends on it.
    expected["v_reset"][i] = dn * e_end
    # v_rest moves v0 and v_inf together: u0 fixed, dt1/dv_rest = -tau / u_th.
    expected["v_rest"][i] = dl + dn * (1 - e_end + u_r * e_end / u_th)

    params = dict(
        tau_mem=tau, v_rest=v_rest, v_threshold=theta, v_reset=v_reset, C_mem=c_mem
    )
    inputs = np.zeros((5, 4))
    inputs[0, 0] = x
    hand = Case(weight, params, inputs)
    coefs = hand.coefs(seed=0, keys=())
    coefs["counts"] = coefs["counts"].at[0].set(1.0)  # count of the first interval
    grads, out = library_grads_and_outputs(
        hand.layer(surrogate), jnp.asarray(inputs), coefs, T, MAX_SPIKES
    )
    np.testing.assert_array_equal(out["counts"][0], [0.0, 1.0, 0.0])
    for name, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), (name, g)
    g_w = np.asarray(grads["weight"])
    # The silent inputs get exactly zero; the driven one a positive gradient, the
    # largest for the neuron just below threshold.
    np.testing.assert_array_equal(g_w[:, 1:], 0.0)
    assert np.all(g_w[:, 0] > 0)
    assert g_w[0, 0] > g_w[2, 0]
    np.testing.assert_allclose(g_w[:, 0], expected["weight"], rtol=1e-10)
    for name in ("v_threshold", "v_rest", "v_reset"):
        np.testing.assert_allclose(
            grads[name], expected[name], rtol=1e-10, err_msg=name
        )
    for name in ("tau_mem", "C_mem"):  # by hand for the quiet neurons
        np.testing.assert_allclose(
            np.asarray(grads[name])[[0, 2]],
            expected[name][[0, 2]],
            rtol=1e-10,
            err_msg=name,
        )
    assert grads["v_reset"][0] == 0.0 and grads["v_reset"][2] == 0.0


@pytest.mark.parametrize(
    "t_ref, chunk",
    [(None, None), (0.4, None), (0.4, 2)],
    ids=["", "t_ref", "t_ref-chunk2"],
)
def test_second_derivatives_match_finite_differences_of_the_gradient(t_ref, chunk):
    """Hessian-vector products of a loss of spike times and the final voltage, with
    respect to the weight, every model parameter, the inputs, the interval and the
    initial state, over three intervals (the tangents carried from one interval's
    start state to the next are differentiated again, also across chunks of two
    intervals): equal to central differences of the library's own gradient along
    the same direction. The Hessian's rounding is that of the gradient divided by
    the step, about 1e-10 relative here."""
    layer, x, state = four_neurons(t_ref)
    args = (layer, x, jnp.asarray(1.0), state)
    params, static = eqx.partition(args, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(p):
        lay, x, interval, state = eqx.combine(unravel(p), static)
        sol = integrate_chunked(lay, x, interval, state, 8, chunk)
        times = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.sum(sol.final_state.v) + jnp.sum(times)

    grad = jax.jit(jax.grad(loss))
    v = jax.random.normal(jax.random.key(3), flat.shape)
    hvp = jax.jit(lambda p: jax.jvp(grad, (p,), (v,))[1])(flat)
    step = 1e-5
    fd = (grad(flat + step * v) - grad(flat - step * v)) / (2 * step)
    # several spikes in the run, so that resets and the chain take part
    assert (
        int(jnp.sum(jnp.isfinite(layer.simulate(x, 1.0, max_spikes=8).spike_times)))
        >= 3
    )
    np.testing.assert_allclose(hvp, fd, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(fd))))


def test_second_order_matches_reference():
    """Second derivatives (the tangents are differentiated again), of one run and of
    a batch's loss: the Hessian w.r.t. the weight of the exact outputs' loss."""
    case = CASES["per_neuron"]
    coefs = case.coefs(seed=15, keys=EXACT_OUTPUTS)
    batch = _batch_inputs(case)[:2]

    def reference_hessian(inputs):
        counts, margin = numpy_forward(case.weight, inputs, INTERVAL, case.params)
        assert margin > MIN_MARGIN

        def loss(weight):
            out = reference_outputs(
                weight, case.jnp_params(), inputs, INTERVAL, counts, MAX_SPIKES
            )
            return sum(jnp.sum(coefs[k] * out[k]) for k in EXACT_OUTPUTS)

        return jax.hessian(loss)(jnp.asarray(case.weight))

    layer = case.layer()

    def loss(w, x):
        lyr = eqx.tree_at(lambda m: m.weight, layer, w)
        return weighted_loss(library_outputs(lyr, x, INTERVAL, MAX_SPIKES), coefs)

    d1, d2 = np.random.default_rng(16).normal(size=(2,) + case.weight.shape)

    @jax.jit
    def hessians(w, xb):
        one = jax.hessian(loss)(w, xb[0])
        whole = jax.hessian(lambda w: jnp.sum(jax.vmap(lambda x: loss(w, x))(xb)))(w)
        # Forward over forward, no vmap: `d2 . H . d1`, the inner tangents
        # differentiated in the run's primals.
        inner = lambda w: jax.jvp(lambda v: loss(v, xb[0]), (w,), (d1,))[1]
        forward = jax.jvp(inner, (w,), (d2,))[1]
        return one, whole, forward

    one, whole, forward = hessians(layer.weight, jnp.asarray(batch))
    expected = [reference_hessian(x) for x in batch]
    assert rel_err(one, expected[0]) < RTOL_REFERENCE
    assert rel_err(whole, expected[0] + expected[1]) < RTOL_REFERENCE
    h = np.asarray(expected[0]).reshape(d1.size, d1.size)
    assert float(forward) == pytest.approx(d2.ravel() @ h @ d1.ravel(), rel=1e-9)


def test_surrogate_with_an_array_parameter():
    """A user's surrogate whose parameter is an array (a leaf of the layer, here
    also batched per sample) gives the gradient of the built-in surrogate with the
    same formula and a static parameter."""

    class ArraySlope(sj.AbstractSurrogate):
        slope: jax.Array

        def derivative(self, x):
            return (self.slope / 2) / (1 + (jnp.pi / 2 * self.slope * x) ** 2)

    case = CASES["per_neuron"]
    coefs = case.coefs(seed=17, keys=("counts",))
    batch = _batch_inputs(case)
    slopes = np.array([1.0, 2.0, 4.0])

    def loss(layer, x, slope):
        lyr = eqx.tree_at(lambda m: m.surrogate, layer, ArraySlope(slope))
        return weighted_loss(library_outputs(lyr, x, INTERVAL, MAX_SPIKES), coefs)

    @eqx.filter_jit
    def grads(layer, xb, slopes):
        one = eqx.filter_grad(loss)(layer, xb[0], slopes[0])
        batch_loss = lambda lyr: jnp.sum(
            jax.vmap(lambda x, s: loss(lyr, x, s))(xb, slopes)
        )
        return param_grads(one), param_grads(eqx.filter_grad(batch_loss)(layer))

    one, whole = grads(case.layer(), jnp.asarray(batch), jnp.asarray(slopes))
    expected = [
        library_grads(
            case.layer(surrogate=sj.ArctanSurrogate(float(slope))),
            jnp.asarray(x),
            coefs,
            INTERVAL,
            MAX_SPIKES,
        )
        for x, slope in zip(batch, slopes)
    ]
    assert_grads_close(one, expected[0], 1e-12)
    assert_grads_close(whole, jax.tree.map(lambda *g: sum(g), *expected), 1e-12)


@pytest.mark.parametrize("t_ref", [None, 0.0])
def test_spike_exactly_at_an_interval_end(t_ref):
    """LIF from rest on a held drive (v_inf = 2 w, threshold 1, reset 0, tau = 10,
    w = 1) fires at T = tau ln(2w / (2w - 1)) = tau ln 2, dT/dw = -10. An interval
    ending exactly at T ends in the reset state, flowed for no time since the
    spike: from the right, dv/dL = v_inf / tau = 0.2 and dv/dw = -0.2 dT/dw = 2.
    Cut there, a longer run's state and gradient are those of the run cut nowhere:
    v(9) = v_inf (1 - e^(-(9 - T) / tau)), dv(9)/dw = 2 (the closed form's
    derivative). The same state read through `save_times` at T. A refractory
    period of 0 changes nothing (its time left stays 0, with no derivative)."""
    tau = 10.0
    layer = sj.SpikingODELayer(
        1,
        1,
        sj.ODELIFDynamics(tau_mem=tau, t_ref=t_ref),
        key=jax.random.key(0),
        dtype=jnp.float64,
    )
    x = jnp.array([[0.2]])

    def run(w, lengths, x):
        sol = eqx.tree_at(lambda m: m.weight, layer, w).simulate(
            x, lengths, max_spikes=4
        )
        return sol.interval_states.v[:, 0]

    w = jnp.ones((1, 1))
    sol = eqx.tree_at(lambda m: m.weight, layer, w).simulate(x, 10.0, max_spikes=4)
    t_spike = float(sol.spike_times[0, 0])
    assert t_spike == tau * np.log(2.0)

    def one(length, w):
        return run(w, length, x)[0]

    if t_ref is not None:

        def refractory_left(length, w):
            sol = eqx.tree_at(lambda m: m.weight, layer, w).simulate(
                x, length, max_spikes=4
            )
            return sol.interval_states.refractory[0, 0]

        value, grads = jax.value_and_grad(refractory_left, (0, 1))(
            jnp.asarray(t_spike), w
        )
        assert float(value) == 0.0
        assert float(grads[0]) == 0.0 and float(grads[1][0, 0]) == 0.0

    value, grads = jax.jit(jax.value_and_grad(one, (0, 1)))(jnp.asarray(t_spike), w)
    # v_reset, up to rounding in v_inf (2): the time since the spike is 0 or an ulp.
    assert abs(float(value)) <= 4 * np.finfo(np.float64).eps
    np.testing.assert_allclose(float(grads[0]), 0.2, rtol=1e-12)
    np.testing.assert_allclose(float(grads[1][0, 0]), 2.0, rtol=1e-12)

    def split(w):
        return run(w, jnp.array([t_spike, 9.0 - t_spike]), jnp.concatenate([x, x]))[1]

    def whole(w):
        return run(w, 9.0, x)[0]

    v9 = 2.0 * (1.0 - np.exp(-(9.0 - t_spike) / tau))
    for f in (split, whole):
        value, grad = jax.jit(jax.value_and_grad(f))(w)
        np.testing.assert_allclose(float(value), v9, rtol=1e-13)
        np.testing.assert_allclose(float(grad[0, 0]), 2.0, rtol=1e-12)

    def saved(s, w):
        sol = eqx.tree_at(lambda m: m.weight, layer, w).simulate(
            x, 10.0, max_spikes=4, save_times=s
        )
        return sol.saved_states.v[:, 0]

    s = jnp.array([t_spike, 9.0])
    np.testing.assert_allclose(
        np.diag(np.asarray(jax.jacrev(saved)(s, w))),
        [0.2, 0.2 * np.exp(-(9.0 - t_spike) / tau)],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        np.asarray(jax.jacrev(saved, 1)(s, w)).ravel(), [2.0, 2.0], rtol=1e-12
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda dtype: sj.SpikingODELayer(
            3, 4, sj.ODELIFDynamics(tau_mem=20.0), dtype=dtype, key=jax.random.key(0)
        ),
        lambda dtype: sj.LeakyReadout(
            3, 4, sj.ODELIFDynamics(tau_mem=20.0), dtype=dtype, key=jax.random.key(0)
        ),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_training_step_is_traced_once(make, dtype):
    """The parameters of a model built from Python numbers are arrays of the
    layer's dtype, strongly typed: an optimizer's update keeps every leaf's type,
    so a jitted training step is traced (and compiled) once, not again after the
    first update (weakly typed parameters come back strongly typed) and the second
    (the optimizer's moments follow)."""
    import optax

    model = make(dtype)
    leaves = jax.tree.leaves(eqx.filter(model.dynamics, eqx.is_array))
    assert leaves and all(x.dtype == dtype and not x.weak_type for x in leaves)
    x = jnp.linspace(0.5, 1.5, 6 * 3, dtype=dtype).reshape(6, 3)
    train = sj.SpikeTrain(jnp.array([0.5, 1.0, 2.0], dtype), jnp.array([0, 1, 2]))
    optim = optax.adam(1e-2)
    traces = []

    def loss(model):
        if isinstance(model, sj.LeakyReadout):
            return jnp.sum(model.simulate(train, t_end=4.0).max_voltage)
        return jnp.sum(model.forward(x * 4.0, 1.0))

    @eqx.filter_jit
    def step(model, opt_state):
        traces.append(None)  # (at trace time only)
        grads = eqx.filter_grad(loss)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optim.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state

    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    for _ in range(4):
        model, opt_state = step(model, opt_state)
    assert len(traces) == 1


def _compiles_of_runs(caplog, calls) -> list[str]:
    """The runs (`integrate...` programs) that `calls` compiled."""
    import logging

    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        for call in calls:
            call()
    return [
        r.getMessage()[:60]
        for r in caplog.records
        if r.getMessage().startswith("Compiling jit(integrate")
    ]


def test_runs_compile_once_for_any_type_of_interval_or_swapped_number(caplog):
    """An int, a NumPy float64 or an array of another dtype as `interval`, or a
    Python number swapped into the model with `eqx.tree_at`, reuse the compiled
    run (each compiled it again, a swapped number once per value)."""
    x = np.full((5, 3), 0.3)
    train = sj.SpikeTrain(jnp.array([0.5, 1.0]), jnp.array([0, 2]))
    layers = {
        "walk": sj.SpikingODELayer(
            3, 4, sj.ODELIFDynamics(), dtype=jnp.float32, key=jax.random.key(0)
        ),
        "events": sj.SpikingODELayer(
            3, 4, sj.ODELIFDynamics(), dtype=jnp.float32, recurrent=True,
            delay=0.5, key=jax.random.key(0),
        ),
    }  # fmt: skip
    for name, layer in layers.items():
        swapped = lambda tau: eqx.tree_at(lambda m: m.dynamics.tau_mem, layer, tau)
        # (`simulate` on a recurrent layer: `forward` is for feed-forward ones.)
        run = lambda m, x, interval: m.simulate(x, interval).counts
        if name == "walk":
            run = lambda m, x, interval: m.forward(x, interval)
        first = [lambda: run(layer, x, 1.0), lambda: run(layer, x, np.ones(5))]
        if name == "events":
            first.append(lambda: layer.simulate(train, t_end=2.0))
        assert len(_compiles_of_runs(caplog, first)) == len(first)
        again = [
            lambda: run(layer, x, 2.0),
            lambda: run(layer, x, 1),
            lambda: run(layer, x, np.float64(1.5)),
            lambda: run(layer, x, jnp.asarray(0.7, jnp.float64)),
            lambda: run(layer, x, np.full(5, 0.5)),
            lambda: run(layer, x, jnp.full(5, 0.5, jnp.float64)),
            lambda: run(swapped(25.0), x, 1.0),
            lambda: run(swapped(30.0), x, 1.0),
        ]
        if name == "events":
            again.append(lambda: swapped(35.0).simulate(train, t_end=2.0))
        assert _compiles_of_runs(caplog, again) == [], name
