"""`snode_jax.plot`: figures rendered to PNG headless, and the data they show."""

import sys
import warnings
from decimal import Decimal
from fractions import Fraction

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def save_png(ax, path):
    ax.figure.savefig(path, dpi=50)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    plt.close(ax.figure)


@pytest.fixture(scope="module")
def run():
    """Three LIF neurons under held input, with the voltage saved on a grid."""
    layer = sj.SpikingODELayer(
        1, 3, sj.ODELIFDynamics(tau_mem=20.0), key=jax.random.key(0)
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[0.03], [0.08], [0.15]]))
    inputs = np.ones((4, 1))
    save = jnp.linspace(0.0, 40.0, 101)
    sol = layer.simulate(inputs, 10.0, max_spikes=16, save_times=save)
    return layer, sol


def test_raster_of_solution(run, tmp_path):
    _, sol = run
    fig, ax = plt.subplots()
    out = plot.raster(sol, ax=ax)
    assert out is ax
    (points,) = ax.collections
    times = np.asarray(sol.spike_times)
    rows, cols = np.nonzero(np.isfinite(times))
    assert len(rows) >= 5
    np.testing.assert_array_equal(
        points.get_offsets(), np.stack([times[rows, cols], rows], axis=1)
    )
    assert ax.get_xlim() == (0.0, 40.0)  # the duration
    save_png(ax, tmp_path / "raster.png")


def test_raster_of_spike_train_and_array(tmp_path):
    train = sj.SpikeTrain(jnp.array([3.0, jnp.inf, 1.0, 2.5]), jnp.array([2, 0, 0, 2]))
    ax = plot.raster(train, ax=plt.subplots()[1], color="red")
    np.testing.assert_array_equal(
        ax.collections[0].get_offsets(), [[3.0, 2], [1.0, 0], [2.5, 2]]
    )
    assert ax.get_xlim() == (0.0, 3.0)  # the last spike
    save_png(ax, tmp_path / "train.png")
    times = np.array([[1.0, 4.0, np.inf], [np.inf, np.inf, np.inf], [0.5, 2.0, 6.0]])
    ax = plot.raster(times, ax=plt.subplots()[1], t_end=10.0, neurons=[2])
    np.testing.assert_array_equal(
        ax.collections[0].get_offsets(), [[0.5, 2], [2.0, 2], [6.0, 2]]
    )
    assert ax.get_xlim() == (0.0, 10.0)
    save_png(ax, tmp_path / "array.png")
    # Every spike at 0: an axis of 1 ms (it was set to (0, 0), which matplotlib
    # widened to start below 0 with a warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = plot.raster(np.array([[0.0, np.inf]]), ax=plt.subplots()[1])
    assert ax.get_xlim() == (0.0, 1.0)


def test_raster_errors(run):
    _, sol = run
    with pytest.raises(ValueError, match=r"neuron indices in \[0, 3\), got \[3\]"):
        plot.raster(sol, neurons=[3])
    with pytest.raises(ValueError, match=r"Spike times must be >= 0 .*nan"):
        plot.raster(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"Spike times must be >= 0 .*signalling NaN"):
        plot.raster([[Decimal("sNaN"), 1.0]])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 1\) \(a batch"):
        plot.raster(np.ones((2, 3, 1)))
    # A finite time that float64 cannot hold would be +inf, the padding: refused
    # (a long double), not an OverflowError naming nothing (an int).
    for huge in (
        np.array([[np.longdouble("1e400"), 1.0]]),
        [[10**400, 1.0]],
        [[Decimal("1e400"), 1.0]],
        [[Fraction(10**400), 1.0]],
    ):
        with pytest.raises(ValueError, match=r"`spikes` must hold times within"):
            plot.raster(huge)
    # Within range, each kind of number is drawn (fractions and decimals, in a
    # list or an object array, and an int beyond int64).
    for times, drawn in (
        (np.array([[np.longdouble(2), np.inf]]), [[2.0, 0.0]]),
        ([[Fraction(1, 2), Decimal("Infinity")]], [[0.5, 0.0]]),
        (np.array([[Decimal("1.5"), 10**20]], dtype=object), [[1.5, 0.0], [1e20, 0.0]]),
    ):
        ax = plot.raster(times, ax=plt.subplots()[1])
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), drawn)
    with pytest.raises(ValueError, match=r"sources must be >= 0, got \[-1\]"):
        plot.raster(sj.SpikeTrain(np.array([1.0, 2.0]), np.array([-1, 0])))
    for bad in (-1.0, np.nan, 0.0):
        fig, ax = plt.subplots()
        with pytest.raises(ValueError, match="`t_end` must be finite and > 0"):
            plot.raster(sol, t_end=bad, ax=ax)
        assert not ax.collections  # refused before anything is drawn
    # A fraction or a decimal is a number of ms too (NumPy's isfinite refused it).
    for t_end in (Fraction(5, 2), Decimal("2.5")):
        ax = plot.raster(sol, t_end=t_end, ax=plt.subplots()[1])
        assert ax.get_xlim() == (0.0, 2.5)
    readout = sj.LeakyReadout(2, 3, key=jax.random.key(0))
    train = sj.SpikeTrain(np.array([1.0, 2.0]), np.array([0, 1]))
    outputs = readout.simulate(train, t_end=5.0)
    with pytest.raises(TypeError, match="`spikes` must be a .* ReadoutSolution"):
        plot.raster(outputs)
    plt.close("all")


def test_voltage_traces(run, tmp_path):
    layer, sol = run
    fig, ax = plt.subplots()
    out = plot.voltage_traces(sol, layer, ax=ax, neurons=[1, 2])
    assert out is ax
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    thresholds = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(lines) == 2 and len(thresholds) == 2
    for line, i in zip(lines, [1, 2]):
        np.testing.assert_array_equal(line.get_xdata(), sol.save_times)
        np.testing.assert_array_equal(line.get_ydata(), sol.saved_states.v[:, i])
    for line in thresholds:  # horizontal, at v_threshold = 1
        np.testing.assert_array_equal(line.get_ydata(), [1.0, 1.0])
    # Spike marks: at each spike time of the neuron, on the threshold.
    for marks, i in zip(ax.collections, [1, 2]):
        times = np.asarray(sol.spike_times[i])
        times = times[np.isfinite(times)]
        assert len(times) >= 1
        np.testing.assert_array_equal(
            marks.get_offsets(), np.stack([times, np.ones_like(times)], axis=1)
        )
    save_png(ax, tmp_path / "voltage.png")
    # The model alone works as well as the layer.
    ax = plot.voltage_traces(sol, layer.dynamics, ax=plt.subplots()[1])
    assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]) == 3
    # A label among the line's arguments replaces the default one (it was passed
    # twice to ax.plot).
    ax = plot.voltage_traces(sol, layer, ax=plt.subplots()[1], label="v", neurons=[0])
    assert [ln.get_label() for ln in ax.get_lines() if ln.get_linestyle() == "-"] == [
        "v"
    ]
    plt.close("all")


def test_voltage_traces_threshold_of_adex_like_models():
    # The threshold line comes from the model's threshold function (AdEx: v_peak).
    dyn = sj.AdExDynamics(v_peak=-45.0)
    states = sj.AdExState(v=jnp.array([[-70.0], [-60.0]]), w=jnp.zeros((2, 1)))
    sol = sj.Solution(
        counts=jnp.zeros((1, 1)),
        spike_times=jnp.full((1, 2), jnp.inf),
        num_spikes=jnp.zeros((1,), int),
        final_state=jax.tree.map(lambda a: a[-1], states),
        interval_states=None,
        stats={},
        result=sj.RESULTS.successful,
        interval=jnp.asarray(1.0),
        duration=jnp.asarray(1.0),
        save_times=jnp.array([0.0, 1.0]),
        saved_states=states,
    )
    ax = plot.voltage_traces(sol, dyn, ax=plt.subplots()[1])
    (threshold,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_array_equal(threshold.get_ydata(), [-45.0, -45.0])
    assert not ax.collections  # no spikes, no marks
    plt.close("all")


def test_voltage_traces_errors(run):
    layer, sol = run
    bare = eqx.tree_at(
        lambda s: (s.save_times, s.saved_states),
        sol,
        (None, None),
        is_leaf=lambda x: x is None,
    )
    with pytest.raises(
        ValueError, match="no saved states: simulate with `save_times=`"
    ):
        plot.voltage_traces(bare, layer)
    with pytest.raises(TypeError, match="must be a model"):
        plot.voltage_traces(sol, "lif")
    with pytest.raises(ValueError, match=r"in \[0, 3\), got \[-1\]"):
        plot.voltage_traces(sol, layer, neurons=[-1])
    with pytest.raises(TypeError, match="`solution` must be the Solution of a run"):
        plot.voltage_traces("x", layer)
    # A model that is not the one that ran: another state, other neuron counts.
    with pytest.raises(TypeError, match="CubaLIFDynamics is not the model"):
        plot.voltage_traces(sol, sj.CubaLIFDynamics())
    two = sj.ODELIFDynamics(tau_mem=jnp.array([10.0, 20.0]))
    with pytest.raises(
        ValueError, match=r"`tau_mem` must be a scalar or have shape \(3,\)"
    ):
        plot.voltage_traces(sol, two)
    # A model whose start state reads a per-neuron parameter of another length is
    # refused by that parameter's name (it failed in a broadcast before).
    with pytest.raises(ValueError, match=r"`E_L` must be a scalar or have shape"):
        plot.voltage_traces(sol, sj.AdExDynamics(E_L=jnp.array([-70.0, -65.0])))
    # A layer of another size is not the one that ran, whatever its model.
    other = sj.SpikingODELayer(1, 5, sj.ODELIFDynamics(), key=jax.random.key(0))
    with pytest.raises(TypeError, match="a layer of 5 neurons is not the one"):
        plot.voltage_traces(sol, other)
    plt.close("all")


def test_a_failed_run_is_plotted_with_a_warning(run, recwarn):
    # With `throw=False` a failed run returns a Solution that stops where it
    # failed: drawn, but not without saying so. A successful one draws silently.
    layer, sol = run
    plot.raster(sol, ax=plt.subplots()[1])
    plot.voltage_traces(sol, layer, ax=plt.subplots()[1])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    save = jnp.linspace(0.0, 40.0, 11)
    full = layer.simulate(
        np.ones((4, 1)), 10.0, max_spikes=1, save_times=save, throw=False
    )
    assert int(full.result._value) == int(sj.RESULTS.spike_buffer_full._value)
    for draw in (
        lambda: plot.raster(full, ax=plt.subplots()[1]),
        lambda: plot.voltage_traces(full, layer, ax=plt.subplots()[1]),
    ):
        with pytest.warns(RuntimeWarning, match="did not succeed.*spike buffer"):
            draw()
    # A batch is refused before anything is said of its results.
    batch = jax.vmap(lambda x: layer.simulate(x, 10.0, max_spikes=1, throw=False))(
        np.ones((2, 4, 1))
    )
    recwarn.clear()
    with pytest.raises(ValueError, match="a batch"):
        plot.raster(batch, ax=plt.subplots()[1])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    plt.close("all")


def test_voltage_traces_without_save_times_draw_the_models_threshold():
    # No save times: no voltage to read it from; the threshold line and the spike
    # marks are at the model's threshold (2.0 here), not at 0.
    dyn = sj.ODELIFDynamics(tau_mem=20.0, v_threshold=2.0)
    layer = sj.SpikingODELayer(1, 1, dyn, key=jax.random.key(0))
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[0.3]]))
    sol = layer.simulate(np.ones((3, 1)), 10.0, max_spikes=4, save_times=[])
    times = np.asarray(sol.spike_times[0])
    times = times[np.isfinite(times)]
    assert len(times) >= 1
    ax = plot.voltage_traces(sol, layer, ax=plt.subplots()[1])
    (threshold,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_array_equal(threshold.get_ydata(), [2.0, 2.0])
    (marks,) = ax.collections
    np.testing.assert_array_equal(marks.get_offsets()[:, 1], np.full(len(times), 2.0))
    plt.close("all")


def test_arguments_that_are_not_real_numbers():
    with pytest.raises(TypeError, match="`spikes` must be real, got complex"):
        plot.raster(np.array([[1 + 2j, np.inf]]))
    # Strings and booleans are named (NumPy's "could not convert string to float").
    for spikes in ("abc", [[1.0, "x"]], np.array([[True, False]])):
        with pytest.raises(TypeError, match="`spikes` must be a real number"):
            plot.raster(spikes)
    # (An object array of numbers is numbers.)
    plot.raster(np.array([[1.0, np.inf]], dtype=object), ax=plt.subplots()[1])
    plt.close("all")
    for bad, error in (("5", TypeError), (5 + 1j, TypeError), (True, TypeError)):
        with pytest.raises(error, match="`t_end`"):
            plot.raster(np.array([[1.0, np.inf]]), t_end=bad)
    with pytest.raises(ValueError, match=r"`t_end` must be one number \(ms\)"):
        plot.raster(np.array([[1.0, np.inf]]), t_end=np.array([5.0, 6.0]))
    for bad in ([1 + 1j, 2.0], ["a", "b"], [True, False]):
        with pytest.raises(TypeError, match="`drive` must be"):
            plot.rate_curve(bad, [3.0, 4.0])
    with pytest.raises(TypeError, match="`rate` must be"):
        plot.rate_curve([1.0, 2.0], [True, False])
    # No neurons: nothing drawn (an empty list is not refused as not ints).
    ax = plot.raster(
        np.array([[1.0, np.inf], [2.0, 3.0]]), neurons=[], ax=plt.subplots()[1]
    )
    assert len(ax.collections[0].get_offsets()) == 0
    plt.close("all")


def test_rate_curve(tmp_path):
    # The f-I curve of the LIF has a closed form: rate = 1000 / (tau log(I tau /
    # (I tau - 1))) Hz above the rheobase I = 1 / tau (threshold 1, C = 1).
    tau = 20.0
    drive = np.linspace(0.06, 0.3, 7)
    rate = 1000.0 / (tau * np.log(drive * tau / (drive * tau - 1.0)))
    fig, ax = plt.subplots()
    out = plot.rate_curve(drive, rate, ax=ax, label="LIF", color="C1")
    assert out is ax
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), drive)
    np.testing.assert_array_equal(line.get_ydata(), rate)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["LIF"]
    assert ax.get_ylabel() == "firing rate (Hz)"
    save_png(ax, tmp_path / "rate.png")
    with pytest.raises(ValueError, match=r"equal length, got shapes \(7,\) and \(6,\)"):
        plot.rate_curve(drive, rate[:-1])
    with pytest.raises(ValueError, match="`rate` must be finite"):
        plot.rate_curve(drive, np.where(drive > 0.1, rate, np.nan))
    plt.close("all")


def test_default_axes_is_current():
    fig, ax = plt.subplots()
    assert plot.rate_curve([1.0, 2.0], [3.0, 4.0]) is ax
    plt.close("all")


def test_missing_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"snode_jax\[plot\]"):
        plot.rate_curve([1.0], [2.0])
