"""`snode_jax.sweep`: the grid, chunked and sharded sweeps against a Python loop of
the closed-form reference, 4 host devices against 1, and argument errors."""

import itertools
import os
import pathlib
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj
from snode_jax.sweep import grid, sweep, sweep_layer

from .lif_reference import lif_reference

_ROOT = pathlib.Path(__file__).resolve().parents[1]

N_NEURONS, N_INPUTS, MAX_SPIKES, INTERVAL = 3, 2, 32, 2.0


def _layer(t_ref=0.5):
    dyn = sj.ODELIFDynamics(tau_mem=20.0, t_ref=t_ref)
    return sj.SpikingODELayer(
        N_INPUTS, N_NEURONS, dyn, dtype=jnp.float64, key=jax.random.key(0)
    )


def _inputs():
    return np.random.default_rng(0).uniform(0.0, 1.5, (6, N_INPUTS))


def _points():
    weights = np.random.default_rng(1).uniform(0.2, 1.2, (3, N_NEURONS, N_INPUTS))
    return grid(
        {"weight": weights, "dynamics.tau_mem": [5.0, 10.0, 20.0, 40.0]},
        **{"dynamics.t_ref": [0.0, 1.0]},
    )


def _reference(points, inputs):
    counts, times = [], []
    for w, tau, t_ref in zip(
        points["weight"], points["dynamics.tau_mem"], points["dynamics.t_ref"]
    ):
        ref = lif_reference(w, inputs, INTERVAL, tau_mem=tau, t_ref=t_ref)
        counts.append(ref.counts)
        times.append(ref.padded_times(MAX_SPIKES))
    return np.stack(counts), np.stack(times)


def test_grid_order_matches_itertools_product():
    a, b, c = [1, 2], np.array([10.0, 20.0, 30.0]), np.arange(8).reshape(4, 2)
    g = grid({"a": a, "b": b}, c=c)
    expected = list(itertools.product(range(2), range(3), range(4)))
    assert len(g["a"]) == len(expected) == 24
    for k, (i, j, m) in enumerate(expected):
        assert g["a"][k] == a[i] and g["b"][k] == b[j]
        np.testing.assert_array_equal(g["c"][k], c[m])
    # Reshaping gives the grid back, first axis slowest.
    np.testing.assert_array_equal(g["b"].reshape(2, 3, 4)[1, :, 0], b)


@pytest.fixture(scope="module")
def swept():
    points = _points()
    # 24 points in chunks of 5: four full chunks and one of 4 (one padded point).
    out = sweep_layer(
        _layer(),
        _inputs(),
        points,
        interval=INTERVAL,
        max_spikes=MAX_SPIKES,
        chunk_size=5,
    )
    return points, out


def test_sweep_layer_matches_reference_loop(swept):
    points, out = swept
    counts, times = _reference(points, _inputs())
    assert out["counts"].shape == counts.shape == (24, 6, N_NEURONS)
    assert int(counts.sum()) > 100  # the grid exercises many spikes
    np.testing.assert_array_equal(out["counts"], counts)
    assert np.array_equal(np.isinf(out["spike_times"]), np.isinf(times))
    finite = np.isfinite(times)
    # Closed form in float64 on both sides: agreement to rounding (ms).
    np.testing.assert_allclose(out["spike_times"][finite], times[finite], atol=1e-10)


def test_chunk_sizes_and_remainders_agree(swept):
    points, out = swept
    # One call (no padding) and chunks of 7 (3 padded points): the same counts, and
    # spike times equal up to the last bits (vectorised lengths differ).
    for chunk in (None, 7):
        other = sweep_layer(
            _layer(),
            _inputs(),
            points,
            interval=INTERVAL,
            max_spikes=MAX_SPIKES,
            chunk_size=chunk,
        )
        np.testing.assert_array_equal(other["counts"], out["counts"])
        np.testing.assert_allclose(other["spike_times"], out["spike_times"], rtol=1e-13)


def test_bool_inputs_are_read_as_zero_and_one():
    # `forward` and `simulate` read a bool raster as 0 and 1; `sweep_layer`
    # refused it (a TypeError naming `inputs`).
    raster = np.random.default_rng(2).random((6, N_INPUTS)) < 0.5
    assert 0 < raster.sum() < raster.size
    points = {"weight": np.array([1.5, 2.5])}
    out = sweep_layer(
        _layer(), raster, points, interval=INTERVAL, max_spikes=MAX_SPIKES
    )
    for i, w in enumerate(points["weight"]):
        ref = lif_reference(
            np.full((N_NEURONS, N_INPUTS), w), raster.astype(float), INTERVAL,
            tau_mem=20.0, t_ref=0.5,
        )  # fmt: skip
        np.testing.assert_array_equal(out["counts"][i], ref.counts)
        assert ref.counts.sum() > 0
    # (What is refused stays refused: strings, complex numbers, and ragged lists,
    # each named.)
    for bad, error in ((raster.astype(str), TypeError), (raster + 0j, TypeError)):
        with pytest.raises(error, match="`inputs` must be"):
            sweep_layer(_layer(), bad, points, interval=INTERVAL)
    with pytest.raises(ValueError, match="`inputs`"):
        sweep_layer(_layer(), [[0.5, 1.0], [0.5]], points, interval=INTERVAL)


def test_sweep_generic_function_and_padding_dropped():
    # A function that fails on anything but the given points: padding must be
    # copies of real points, and dropped.
    # Traced (and compiled) once for its three chunks.
    x = np.arange(1.0, 8.0)
    traces = []

    def fn(p, scale, name):
        traces.append(name)
        y = eqx.error_if(p["x"], p["x"] <= 0, "padding reached fn")
        return {"sq": y**2, "pair": jnp.stack([y, -y]) * scale}

    # Shared arguments: an array (placed on the devices) and a static string.
    scale = jnp.array([1.0, 10.0])
    out = sweep(fn, {"x": x}, scale, "s", chunk_size=3, progress=True)
    np.testing.assert_array_equal(out["sq"], x**2)
    np.testing.assert_array_equal(out["pair"], np.stack([x, -10 * x], axis=1))
    assert len(traces) == 1


def test_a_prng_key_among_the_shared_arguments():
    # A typed key (which NumPy cannot hold) failed with NumPy's own error.
    x = np.arange(3.0)
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        out = sweep(lambda p, k: p + jax.random.normal(k), x, key, chunk_size=2)
        np.testing.assert_allclose(out, x + float(jax.random.normal(key)), rtol=1e-6)


_FOUR_DEVICES = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from tests.test_sweep import _inputs, _layer, _points, INTERVAL, MAX_SPIKES
    from snode_jax.sweep import sweep_layer

    assert jax.device_count() == 4, jax.devices()
    outs = {}
    for name, devices in (("four", jax.devices()), ("one", jax.devices()[:1])):
        out = sweep_layer(_layer(), _inputs(), _points(), interval=INTERVAL,
                          max_spikes=MAX_SPIKES, chunk_size=2, devices=devices)
        outs.update({f"{name}_{k}": v for k, v in out.items()})
    np.savez(sys.argv[1], **outs)
    """
)


def test_four_host_devices_match_one(tmp_path):
    env = dict(os.environ)
    # Compiled as users compile it (conftest.py turns XLA's CPU fusion emitters off
    # to compile faster; with the older emitters the 4-device program rounds
    # differently from the 1-device one, by 1 ulp).
    flags = env.get("XLA_FLAGS", "").replace("--xla_cpu_use_fusion_emitters=false", "")
    env["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = str(_ROOT)
    env["JAX_PLATFORMS"] = "cpu"
    path = tmp_path / "out.npz"
    proc = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES, str(path)],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(np.load(path))
    # Bitwise: every device runs the same compiled per-device program on chunks of
    # the same size (2 points per device per call: 3 calls of 8 points on 4
    # devices, 12 calls of 2 on one).
    for key in ("counts", "spike_times"):
        np.testing.assert_array_equal(out[f"four_{key}"], out[f"one_{key}"])
    counts, times = _reference(_points(), _inputs())
    np.testing.assert_array_equal(out["four_counts"], counts)
    finite = np.isfinite(times)
    np.testing.assert_allclose(
        out["four_spike_times"][finite], times[finite], atol=1e-10
    )


def test_per_neuron_parameters():
    # One threshold per neuron per point, against the reference.
    th = np.array([[0.8, 1.0, 1.3], [1.1, 0.9, 2.0]])
    layer = _layer(t_ref=None)
    out = sweep_layer(
        layer,
        _inputs(),
        {"dynamics.v_threshold": th},
        interval=INTERVAL,
        max_spikes=MAX_SPIKES,
        measure=lambda sol: sol.counts,
    )
    for k in range(2):
        ref = lif_reference(layer.weight, _inputs(), INTERVAL, v_threshold=th[k])
        np.testing.assert_array_equal(out[k], ref.counts)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"dynamics.tau": [1.0]}, "Cannot sweep 'dynamics.tau'.*'dynamics.tau_mem'"),
        ({"bias": [1.0]}, "Cannot sweep 'bias'"),
        ({"weight": np.ones((2, 4, 4))}, r"params\['weight'\].*got \(2, 4, 4\)"),
        ({"dynamics.tau_mem": np.ones((2, 2))}, r"\(\), \(3,\)"),
        (
            {"dynamics.tau_mem": [1.0, 2.0], "weight": [1.0]},
            "same leading size",
        ),
        ({"dynamics.tau_mem": [1.0, np.nan]}, "must be finite"),
        ({"dynamics.tau_mem": 3.0}, "leading batch axis"),
        ({}, "at least one array"),
    ],
)
def test_bad_params_raise(params, match):
    with pytest.raises(ValueError, match=match):
        sweep_layer(_layer(), _inputs(), params, interval=INTERVAL)


def test_missing_parameter_and_other_errors():
    with pytest.raises(ValueError, match="dynamics has none.*t_ref"):
        sweep_layer(
            _layer(t_ref=None), _inputs(), {"dynamics.t_ref": [1.0]}, interval=1.0
        )
    with pytest.raises(ValueError, match="needs `interval`"):
        sweep_layer(_layer(), _inputs(), {"weight": [1.0]})
    train = sj.SpikeTrain(np.array([1.0]), np.array([0]))
    with pytest.raises(TypeError, match="dense `inputs`.*got a SpikeTrain"):
        sweep_layer(_layer(), train, {"weight": [1.0]}, interval=1.0)
    with pytest.raises(TypeError, match="mapping"):
        sweep_layer(_layer(), _inputs(), [1.0], interval=1.0)  # type: ignore
    # A layer's parameters and inputs are real: complex values are refused, not
    # run with their imaginary part dropped.
    with pytest.raises(TypeError, match=r"`params\['weight'\]` must be real"):
        sweep_layer(_layer(), _inputs(), {"weight": [0.5 + 1j, 0.5]}, interval=1.0)
    with pytest.raises(TypeError, match=r"`params\['dynamics.tau_mem'\]` must be real"):
        sweep_layer(
            _layer(), _inputs(), {"dynamics.tau_mem": [10.0 + 5j]}, interval=1.0
        )
    with pytest.raises(TypeError, match="`inputs` must be real"):
        sweep_layer(_layer(), _inputs() + 1j, {"weight": [1.0]}, interval=1.0)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int, got 0"):
        sweep(lambda p: p, {"x": np.ones(3)}, chunk_size=0)
    with pytest.raises(ValueError, match="`devices`"):
        sweep(lambda p: p, {"x": np.ones(3)}, devices=[])
    with pytest.raises(ValueError, match="Axis 'a' must be a non-empty"):
        grid(a=[])
    with pytest.raises(ValueError, match="at least one axis"):
        grid()
    # (A bare "cannot convert dictionary update sequence element" before.)
    with pytest.raises(
        TypeError, match=r"`axes` must be a mapping .* got list \[1, 2\]"
    ):
        grid([1, 2])  # type: ignore[arg-type]
    # Pairs of names and values, and no axes but keywords, as `dict` takes them.
    pairs = grid([("a", [1.0, 2.0]), ("b", [3.0])], c=[4.0])  # type: ignore[arg-type]
    np.testing.assert_array_equal(pairs["a"], [1.0, 2.0])
    np.testing.assert_array_equal(grid((), c=[4.0])["c"], [4.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`progress` must be True or False, got None"):
        sweep(lambda p: p, {"x": np.ones(3)}, progress=None)  # type: ignore[arg-type]


def test_invalid_point_fails_at_run_time_naming_the_condition():
    with pytest.raises(Exception, match="tau_mem > 0"):
        sweep_layer(
            _layer(), _inputs(), {"dynamics.tau_mem": [10.0, -1.0]}, interval=1.0
        )


def test_values_devices_and_calls_that_are_refused():
    # Bools are no parameter values (True would run as a weight of 1), strings no
    # numbers; each is named. (Bool inputs are a raster: see
    # `test_bool_inputs_are_read_as_zero_and_one`.)
    with pytest.raises(TypeError, match=r"`params\['weight'\]` must be a real number"):
        sweep_layer(_layer(), _inputs(), {"weight": [True, False]}, interval=1.0)
    with pytest.raises(TypeError, match=r"`params\['a'\]` must hold numbers.*<U1"):
        sweep(lambda p: p, {"a": np.array(["x", "y"])})
    with pytest.raises(TypeError, match=r"`params\[0\]` must hold numbers.*object"):
        sweep(lambda p: p, [np.array([object(), object()])])
    # A value the layer's dtype cannot hold is refused before the run (it would be
    # inf there, and the run reported as given NaN or inf).
    half = sj.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        sj.ODELIFDynamics(),
        dtype=jnp.float16,
        key=jax.random.key(0),
    )
    with pytest.raises(
        ValueError,
        match=r"`params\['dynamics.tau_mem'\]` holds values beyond the range of "
        r"float16 \(the layer's dtype\), got \[1000000.0\]",
    ):
        sweep_layer(half, _inputs(), {"dynamics.tau_mem": [20.0, 1e6]}, interval=1.0)
    with pytest.raises(ValueError, match="`inputs` holds values beyond the range"):
        sweep_layer(half, _inputs() * 1e5, {"weight": [1.0]}, interval=1.0)
    # A model parameter that rounds to 0 there fails its point's run, named with
    # its value; a weight or a parameter may round to 0 where no condition breaks.
    with pytest.raises(
        RuntimeError,
        match=r"the run of point 1 \(dynamics.tau_mem=1e-09\) failed: .*tau_mem > 0",
    ):
        sweep_layer(half, _inputs(), {"dynamics.tau_mem": [20.0, 1e-9]}, interval=1.0)
    tiny = sweep_layer(half, _inputs(), {"weight": [0.0, 1e-9]}, interval=1.0)
    np.testing.assert_array_equal(tiny["counts"], 0)
    resets = np.arange(-0.5, 0.5, 0.1)  # (its "0" is -1.1e-16: 0 in float16)
    sweep_layer(half, _inputs(), {"dynamics.v_reset": resets}, interval=1.0)
    # `measure` must be a function (it failed with "'int' object is not callable").
    with pytest.raises(TypeError, match=r"`measure` must be a function .* got int"):
        sweep_layer(_layer(), _inputs(), {"weight": [1.0]}, interval=1.0, measure=3)
    # NaN inputs are named before the run (it failed there, naming no entry).
    nan_inputs = _inputs().copy()
    nan_inputs[3, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"`inputs` must be finite, got nan at inputs\[3, 1\]"
    ):
        sweep_layer(_layer(), nan_inputs, {"weight": [1.0]}, interval=1.0)
    # `devices`: a sequence of distinct devices.
    one = {"x": np.ones(3)}
    for devices in ("cpu", jax.devices()[0], [0]):
        with pytest.raises(TypeError, match="`devices` must be a sequence of JAX"):
            sweep(lambda p: p, one, devices=devices)
    with pytest.raises(ValueError, match="`devices` lists a device more than once"):
        sweep(lambda p: p, one, devices=[jax.devices()[0]] * 2)
    # Eager only: under `jax.jit` it says so.
    with pytest.raises(TypeError, match="`sweep` runs eagerly"):
        jax.jit(lambda x: sweep(lambda p: p, {"x": x}))(np.ones(3))
    # A ragged axis, and a grid too large to index, are named.
    with pytest.raises(ValueError, match="Axis 'a' must be an array of values"):
        grid(a=[[1, 2], [3]])
    with pytest.raises(ValueError, match=r"`grid` of shape \(1000, 1000, 1000, 1000\)"):
        grid(**{f"a{i}": np.arange(1000) for i in range(4)})


def test_a_sweep_of_the_same_kind_is_compiled_once(caplog):
    """Another call with the same function, shapes and static settings reuses the
    compiled chunk (each call compiled it again, and kept it: memory grew by
    about 6.5 MB per call of a small `sweep_layer`); another `interval` too."""
    import logging

    def compiled(call):
        caplog.clear()
        with jax.log_compiles(True), caplog.at_level(logging.WARNING):
            out = call()
        names = [r.getMessage() for r in caplog.records]
        return out, [m[:60] for m in names if m.startswith("Compiling")]

    layer, inputs = _layer(), _inputs()
    taus = {"dynamics.tau_mem": np.linspace(10.0, 30.0, 4)}
    first, logs = compiled(lambda: sweep_layer(layer, inputs, taus, interval=1.0))
    assert logs
    for interval in (1.0, 2.0):
        out, logs = compiled(
            lambda: sweep_layer(layer, inputs, taus, interval=interval)  # noqa: B023
        )
        assert logs == [], interval
    np.testing.assert_array_equal(
        sweep_layer(layer, inputs, taus, interval=1.0)["counts"], first["counts"]
    )
    # `sweep` with the same function: compiled once.
    fn = lambda p, a: p["x"] * a
    _, logs = compiled(lambda: sweep(fn, {"x": np.arange(3.0)}, np.float64(2.0)))
    assert logs
    out, logs = compiled(lambda: sweep(fn, {"x": np.arange(3.0) + 1}, np.float64(3.0)))
    assert logs == []
    np.testing.assert_array_equal(out, [3.0, 6.0, 9.0])


def test_arguments_the_cache_cannot_key_or_tell_apart():
    # A static argument that cannot be hashed: compiled per sweep, as before.
    class Config:  # (unhashable: defines __eq__ without __hash__)
        scale = 2.0

        def __eq__(self, other):
            return isinstance(other, Config)

    fn = lambda p, config, s: p["x"] * config.scale + s.start
    out = sweep(fn, {"x": np.arange(3.0)}, Config(), slice(1, 2))
    np.testing.assert_array_equal(out, [1.0, 3.0, 5.0])
    # Equal but different static values (1 and True) are different programs.
    branch = lambda p, c: p["x"] + (5.0 if c is True else 7.0)
    np.testing.assert_array_equal(sweep(branch, {"x": np.zeros(2)}, 1), [7.0, 7.0])
    np.testing.assert_array_equal(sweep(branch, {"x": np.zeros(2)}, True), [5.0, 5.0])
    # A NumPy int as `max_spikes`, and devices as an array (a mesh's).
    layer, inputs = _layer(), _inputs()
    taus = {"dynamics.tau_mem": [10.0, 20.0]}
    a = sweep_layer(layer, inputs, taus, interval=1.0, max_spikes=np.int64(8))
    b = sweep_layer(
        layer, inputs, taus, interval=1.0, max_spikes=8, devices=np.array(jax.devices())
    )
    np.testing.assert_array_equal(a["spike_times"], b["spike_times"])


def test_chunks_hold_at_most_the_points_and_signed_zeros_differ(monkeypatch):
    import snode_jax._sweep as engine

    placed = []
    place = engine._place
    monkeypatch.setattr(
        engine,
        "_place",
        lambda x, sharding: placed.append(x.shape) or place(x, sharding),
    )
    # A chunk larger than the batch is cut to it (it padded 3 points to 100).
    x = np.arange(1.0, 4.0)
    out = sweep(lambda p: p["x"] * 2, {"x": x}, chunk_size=100)
    np.testing.assert_array_equal(out, 2 * x)
    assert placed == [(3,)]
    # A smaller chunk pads the last one, as before.
    placed.clear()
    np.testing.assert_array_equal(sweep(lambda p: p["x"], {"x": x}, chunk_size=2), x)
    assert placed == [(2,), (2,)]
    # 0.0 and -0.0 are different static values (equal keys otherwise: the second
    # sweep reused the first one's program).
    sign = lambda p, s: p["x"] * jnp.copysign(1.0, s)
    np.testing.assert_array_equal(sweep(sign, {"x": np.ones(2)}, 0.0), [1.0, 1.0])
    np.testing.assert_array_equal(sweep(sign, {"x": np.ones(2)}, -0.0), [-1.0, -1.0])
    with pytest.raises(
        TypeError, match=r"`fn` must be a function of one point, got int"
    ):
        sweep(5, {"x": x})  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"got a scalar \(a Python list is a PyTree"):
        sweep(lambda p: p, {"x": [1.0, 2.0]})


def test_a_failed_point_is_named_with_its_values():
    """A point whose run fails raised from inside the compiled sweep with the
    condition alone ("need tau_mem > 0"): which of the points, and with what
    values, was not said. Now the sweep finishes and names the first failed
    point, its values, the condition or result, and how many failed."""
    taus = [20.0, 10.0, -1.0, 5.0, -2.0]
    with pytest.raises(
        RuntimeError,
        match=r"`sweep_layer`: the run of point 2 \(dynamics.tau_mem=-1.0\) failed "
        r"\(one of 2 that did\): .*need tau_mem > 0",
    ):
        sweep_layer(_layer(), _inputs(), {"dynamics.tau_mem": taus}, interval=1.0)
    with pytest.raises(
        RuntimeError,
        match=r"point 1 \(weight=40.0\) failed: More spikes occurred than fit",
    ):
        sweep_layer(
            _layer(t_ref=None), _inputs(), {"weight": [0.0, 40.0]}, interval=1.0,
            max_spikes=2,
        )  # fmt: skip
    # The same points, valid: the sweep's values are those of each run by hand.
    out = sweep_layer(_layer(), _inputs(), {"dynamics.tau_mem": taus[:2]}, interval=1.0)
    for i, tau in enumerate(taus[:2]):
        one = eqx.tree_at(lambda m: m.dynamics.tau_mem, _layer(), jnp.asarray(tau))
        sol = one.simulate(_inputs(), 1.0, max_spikes=64)
        np.testing.assert_array_equal(out["counts"][i], sol.counts)


def test_complex_values_beyond_the_narrower_type_are_refused():
    """With float64 off, a complex128 leaf is narrowed to complex64 (as a float64
    leaf to float32): a finite value that becomes inf there is refused by name, as
    a real one is. (Float64 is on in this suite: the narrowing step itself.)"""
    from snode_jax._checks import narrowed

    with pytest.raises(
        ValueError,
        match=r"`params\['z'\]` holds values beyond the range of complex64 .*got "
        r"\[\(1e\+300\+1j\)\]",
    ):
        narrowed("`params['z']`", np.array([1e300 + 1j, 2.0 + 0j]), np.complex64)
    with pytest.raises(ValueError, match=r"got \[\(1\+1e\+300j\)\]"):
        narrowed("`params['z']`", np.array([1 + 1e300j]), np.complex64)
    # One part beyond, the other not finite: the finite part is what changed.
    for z in (complex(1e300, np.nan), complex(np.inf, 1e300)):
        with pytest.raises(ValueError, match="beyond the range of complex64"):
            narrowed("`params['z']`", np.array([z]), np.complex64)
    kept = narrowed("`params['z']`", np.array([2.0 + 1j, np.inf + 0j]), np.complex64)
    assert kept.dtype == np.complex64
    np.testing.assert_array_equal(kept, [2.0 + 1j, np.inf + 0j])
