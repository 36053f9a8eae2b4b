"""The f-I curve example (`examples/fi_curve.py`) on a reduced grid, against the
closed-form LIF rate `1 / (t_ref + tau ln((v_inf - v_reset) / (v_inf - theta)))`."""

import importlib.util
import pathlib

import matplotlib  # noqa: F401  (the example's plot dependency, in the test extra)
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fi_curve.py"
DURATION = 100.0  # ms


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("fi_curve_example", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(example):
    drives = np.linspace(0.0, 0.5, 12)
    taus = np.linspace(5.0, 50.0, 7)
    # 84 points in chunks of 10 (the last one padded).
    return example.fi_sweep(drives, taus, duration=DURATION, chunk_size=10)


def _rate_khz(drive, tau, t_ref=2.0, v_rest=0.0, v_reset=0.0, theta=1.0, c=1.0):
    v_inf = v_rest + drive * tau / c
    fires = v_inf > theta
    safe = np.where(fires, v_inf, theta + 1.0)
    return np.where(
        fires, 1.0 / (t_ref + tau * np.log((safe - v_reset) / (safe - theta))), 0.0
    )


def test_rate_matches_closed_form(example, result):
    exact = _rate_khz(result["drive"], result["tau_mem"])
    assert result["count"].shape == (12, 7)
    # The grid's layout: drive along the first axis, tau_mem along the second.
    np.testing.assert_array_equal(result["drive"][:, 0], np.linspace(0.0, 0.5, 12))
    np.testing.assert_array_equal(result["tau_mem"][0], np.linspace(5.0, 50.0, 7))
    two = result["count"] >= 2
    assert two.sum() > 50 and (~two).sum() > 5  # both regimes are in the grid
    # From spike intervals: exact spike times in float64, so the rate is the
    # closed form's to rounding (a period of up to ~50 ms summed over <= 50 spikes).
    np.testing.assert_allclose(result["rate_isi"][two] / 1000.0, exact[two], rtol=1e-11)
    # From counts over a finite run: within 1 / T of the rate.
    count_rate = result["count"] / DURATION
    assert np.all(np.abs(count_rate - exact) <= 1.0 / DURATION)
    # Below rheobase (I tau <= theta) no spike at all.
    silent = result["drive"] * result["tau_mem"] <= 1.0
    assert silent.any() and np.all(result["count"][silent] == 0)
    # The example's own closed form (used for its printed errors and plot).
    np.testing.assert_allclose(
        example.closed_form_rate(result["drive"], result["tau_mem"]) / 1000.0,
        exact,
        rtol=1e-14,
    )


def test_main_runs_and_plots(example, tmp_path, capsys):
    path = tmp_path / "fi.png"
    example.main(["--drives", "6", "--taus", "5", "--plot", str(path)])
    out = capsys.readouterr().out
    assert "spike counts differing from the closed form: 0 of 30" in out
    assert path.stat().st_size > 10_000


def test_main_without_a_point_of_two_spikes(example, capsys):
    # A 1 ms run: no point fires twice, so no rate from spike intervals to
    # compare with the closed form (it failed on the maximum of nothing).
    example.main(["--drives", "2", "--taus", "5", "--duration", "1", "--plot", "none"])
    out = capsys.readouterr().out
    assert "points with >= 2 spikes: 0" in out
    assert "no point to compare" in out
