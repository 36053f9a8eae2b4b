"""Plots of simulations: spike rasters, membrane-voltage traces, firing-rate curves.

Needs matplotlib (`pip install "snode_jax[plot]"`), imported when a function is
called. Every function draws on `ax` (default: the current axes, `plt.gca()`),
returns it, and never calls `plt.show()`.
"""

import decimal
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import ArrayLike, Float

from ._checks import check_real_number, describe
from ._dynamics import AbstractDynamics
from ._solution import RESULTS, Solution
from ._spike_train import SpikeTrain

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "snode_jax.plot needs matplotlib, which is not installed: "
            'pip install "snode_jax[plot]" (or pip install "matplotlib>=3.8").'
        ) from e
    return plt


def _axes(ax):
    plt = _pyplot()
    return plt.gca() if ax is None else ax


def _neuron_index(neurons, n: int, bounded: bool = True) -> np.ndarray:
    """`neurons` (None: all `n`) as an int array of indices in `[0, n)` (or, not
    `bounded`, any index >= 0)."""
    if neurons is None:
        return np.arange(n)
    index = np.atleast_1d(np.asarray(neurons))
    if index.ndim == 1 and index.size == 0:  # (an empty list is a float array)
        return index.astype(int)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"`neurons` must be a sequence of neuron indices (ints), got {neurons!r}."
        )
    bad = (index < 0) | ((index >= n) if bounded else False)
    if np.any(bad):
        allowed = f"in [0, {n})" if bounded else ">= 0"
        raise ValueError(
            f"`neurons` must be neuron indices {allowed}, got {describe(index[bad])}."
        )
    return index


def _warn_if_failed(solution: Solution) -> None:
    """A `RuntimeWarning` where `solution` (from `throw=False`) is not a success:
    what it holds may be incomplete."""
    values = np.unique(np.asarray(solution.result._value))
    failed = [int(v) for v in values if v != RESULTS.successful._value]
    if failed:
        messages = " ".join(RESULTS._index_to_message[v] for v in failed)
        warnings.warn(
            f"Plotting a run that did not succeed (`result` is not successful): "
            f"{messages}",
            RuntimeWarning,
            stacklevel=3,
        )


def _finite(values: np.ndarray) -> np.ndarray:
    """Which of `values` are finite numbers, also in an object array (fractions,
    decimals, ints beyond int64; a decimal beyond a float's range is finite)."""
    if values.dtype != object:
        return np.isfinite(values)

    def one(v) -> bool:
        if isinstance(v, decimal.Decimal):
            return v.is_finite()
        try:
            return math.isfinite(v)
        except OverflowError:  # (an int or a fraction beyond a float: finite)
            return True

    return np.vectorize(one, otypes=[bool])(values)


def _check_times(times: np.ndarray, what: str) -> None:
    bad = np.isnan(times) | (times < 0)
    if np.any(bad):
        raise ValueError(
            f"{what} must be >= 0 (ms), or +inf for padding; got {describe(times[bad])}."
        )


def raster(
    spikes: Solution | SpikeTrain | Float[ArrayLike, "n_neurons max_spikes"],
    *,
    ax: "Axes | None" = None,
    t_end: float | None = None,
    neurons: Sequence[int] | None = None,
    **scatter_kwargs: Any,
) -> "Axes":
    """A spike raster: one mark per spike, at its time (ms) and neuron (or source).

    **Arguments:**

    - `spikes`: a [`Solution`][] (its `spike_times`), a [`SpikeTrain`][] (times and
        sources), or an array `(n_neurons, max_spikes)` of spike times padded with
        `+inf`. One simulation, not a batch.
    - `ax`: the matplotlib `Axes` to draw on; default the current axes.
    - `t_end`: the right end of the time axis (ms); default the solution's
        duration, else the last spike. Given, it crops the axis: spikes after it
        are outside the plotted range.
    - `neurons`: the neurons (or sources) to show, by index; default all. They
        keep their index on the vertical axis.
    - `scatter_kwargs`: passed to `ax.scatter` (defaults: `marker="|"`, `s=40`,
        `color="black"`, `linewidths=1`).

    **Returns:** the `Axes`.

    **Raises:** `ValueError` for a batch, a wrong shape, NaN or negative times, or
    neuron indices out of range; `TypeError` for other results (a readout's),
    complex spike times or a `t_end` that is not a number. A `RuntimeWarning` for a
    `Solution` whose `result` is not a success (from `throw=False`): what it holds
    may be incomplete.
    """
    duration = None
    if t_end is not None:
        check_real_number("t_end", t_end)
        if np.ndim(t_end) != 0:
            raise ValueError(
                f"`t_end` must be one number (ms), got shape {np.shape(t_end)}."
            )
        given = t_end
        try:
            t_end = float(t_end)  # (a fraction or a decimal too)
        except OverflowError:  # (an int beyond a float: refused below)
            t_end = math.inf
        # (Before anything is drawn.)
        if not (np.isfinite(t_end) and t_end > 0):
            raise ValueError(f"`t_end` must be finite and > 0 (ms), got {given!r}.")
    failed_solution = None
    if isinstance(spikes, Solution):
        failed_solution = spikes
        duration = spikes.duration
        spikes = spikes.spike_times
    if isinstance(spikes, SpikeTrain):
        times = np.asarray(spikes.times, float)
        sources = np.asarray(spikes.sources)
        if times.ndim != 1:
            raise ValueError(
                "`spikes` must be one SpikeTrain with 1-D times, got shape "
                f"{times.shape} (a batch? plot one element)."
            )
        _check_times(times, "Spike times")
        real = np.isfinite(times)
        rows, times = sources[real], times[real]
        if np.any(rows < 0):
            raise ValueError(
                "`spikes`: a SpikeTrain's sources must be >= 0, got "
                f"{describe(np.unique(rows[rows < 0]))}."
            )
        n = int(rows.max()) + 1 if len(rows) else 0
        bounded = False  # a train does not say how many sources there are
    else:
        if isinstance(spikes, eqx.Module):  # (a readout's or a network's results)
            raise TypeError(
                "`spikes` must be a Solution, a SpikeTrain or an array (n_neurons, "
                f"max_spikes) of spike times, got a {type(spikes).__name__}."
            )
        # (An object array of numbers is read as its numbers.)
        given = spikes
        if isinstance(spikes, np.ndarray) and spikes.dtype == object:
            given = spikes.tolist()
        check_real_number("spikes", given)
        try:
            with np.errstate(over="ignore"):  # (refused below)
                grid = np.asarray(spikes, float)
            beyond = _finite(np.asarray(given)) & ~np.isfinite(grid)
        except OverflowError:  # (an int or a fraction beyond a float)
            beyond = True
        except ValueError:  # (a signalling-NaN decimal, which no float holds)
            raise ValueError(
                f"Spike times must be >= 0 (ms), or +inf for padding; got "
                f"{describe(np.asarray(given, object).ravel()[:6].tolist())} "
                "(a signalling NaN)."
            ) from None
        if np.any(beyond):
            raise ValueError(
                "`spikes` must hold times within float64's range (ms), or +inf "
                "for padding; a finite time beyond it would be drawn as padding."
            )
        if grid.ndim != 2:
            raise ValueError(
                "`spikes` must be a Solution, a SpikeTrain or an array (n_neurons, "
                f"max_spikes) of spike times, got shape {grid.shape} (a batch? plot "
                "one element)."
            )
        _check_times(grid, "Spike times")
        n = grid.shape[0]
        rows = np.broadcast_to(np.arange(n)[:, None], grid.shape)
        real = np.isfinite(grid)
        rows, times = rows[real], grid[real]
        bounded = True
    shown = _neuron_index(neurons, n, bounded)
    if failed_solution is not None:  # (once its shape is known to be one run's)
        _warn_if_failed(failed_solution)
    keep = np.isin(rows, shown)
    rows, times = rows[keep], times[keep]
    ax = _axes(ax)
    style: dict[str, Any] = dict(marker="|", s=40, color="black", linewidths=1)
    style.update(scatter_kwargs)
    ax.scatter(times, rows, **style)
    if t_end is None:
        t_end = float(np.max(np.asarray(duration))) if duration is not None else None
    if t_end is None:
        # (No spike, or all at 0: an axis of 1 ms, not of none.)
        t_end = float(times.max()) if len(times) and times.max() > 0 else 1.0
    ax.set_xlim(0.0, float(t_end))
    low, high = (shown.min(), shown.max()) if len(shown) else (0, 0)
    ax.set_ylim(low - 0.5, high + 0.5)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron")
    return ax


def voltage_traces(
    solution: Solution,
    dynamics_or_layer: Any,
    *,
    neurons: Sequence[int] | None = None,
    ax: "Axes | None" = None,
    threshold: bool = True,
    spike_marks: bool = True,
    **plot_kwargs: Any,
) -> "Axes":
    """Membrane voltage against time, from a run with `save_times`: one line per
    neuron through the saved voltages, the threshold as a dashed line, and a mark
    on the threshold at each spike time.

    **Arguments:**

    - `solution`: from `layer.simulate(..., save_times=...)`.
    - `dynamics_or_layer`: the model (an `AbstractDynamics`), or the
        `SpikingODELayer` that ran; its `voltage` reads the voltage from the saved
        states, and the threshold voltage is `voltage(y) - threshold(y)` (for
        the models here `v_threshold`, or `v_peak`).
    - `neurons`: the neurons to draw, by index; default all.
    - `ax`: the matplotlib `Axes`; default the current axes.
    - `threshold`, `spike_marks`: draw the threshold line, and the spike marks.
    - `plot_kwargs`: passed to `ax.plot` for the voltage lines.

    The saved states are right-continuous: at a save time equal to a spike time the
    voltage is the reset value; the spike shows as a mark on the threshold line.

    **Returns:** the `Axes`.

    **Raises:** `ValueError` if the solution has no saved states, is a batch, or
    `neurons` is out of range; `TypeError` for a `solution` that is not a
    `Solution`, or a model that is not one or not that of the solution (its state,
    or its number of neurons). A `Solution` does not hold the model's parameters,
    so those are not compared: a model with another `v_threshold` draws its
    threshold line and spike marks there. A `RuntimeWarning` for a solution whose
    `result` is not a success (from `throw=False`).
    """
    if not isinstance(solution, Solution):
        raise TypeError(
            "`solution` must be the Solution of a run with `save_times=`, got "
            f"{type(solution).__name__}."
        )
    if solution.saved_states is None or solution.save_times is None:
        raise ValueError(
            "`solution` has no saved states: simulate with `save_times=` (e.g. "
            "`save_times=jnp.linspace(0, duration, 500)`)."
        )
    dynamics = getattr(dynamics_or_layer, "dynamics", dynamics_or_layer)
    if not isinstance(dynamics, AbstractDynamics):
        raise TypeError(
            "`dynamics_or_layer` must be a model (AbstractDynamics) or a layer with "
            f"`.dynamics`, got {type(dynamics_or_layer).__name__}."
        )
    save_times = np.asarray(solution.save_times)
    if save_times.ndim != 1:
        raise ValueError(
            f"`solution` must be one simulation, got save times of shape "
            f"{save_times.shape} (a batch? plot one element)."
        )
    states = solution.saved_states
    # The model must be the one that ran: its per-neuron parameters for as many
    # neurons (a layer's too), its state's structure, one value per neuron.
    n = np.shape(solution.spike_times)[0]
    layer_n = getattr(dynamics_or_layer, "n_neurons", None)
    if dynamics is not dynamics_or_layer and layer_n is not None and layer_n != n:
        raise TypeError(
            f"`dynamics_or_layer`: a layer of {layer_n} neurons is not the one that "
            f"ran this solution ({n} neurons)."
        )
    dynamics.check_n_neurons(n)
    dtype = jax.tree.leaves(states)[0].dtype
    expected = dynamics.init_state(n, dtype)
    same = jax.tree.structure(states) == jax.tree.structure(expected) and all(
        np.shape(a)[1:] == np.shape(b)
        for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(expected))
    )
    if not same:
        raise TypeError(
            f"`dynamics_or_layer`: {type(dynamics).__name__} is not the model of "
            f"this solution (its saved states are not {n} neurons' "
            f"{type(expected).__name__})."
        )
    _warn_if_failed(solution)
    volts = np.asarray(jax.vmap(dynamics.voltage)(states))
    margins = np.asarray(jax.vmap(dynamics.threshold)(states))
    # The threshold voltage, per neuron (constant in time for a voltage threshold;
    # with no save times, that of the resting state).
    if len(save_times):
        v_threshold = (volts - margins)[0]
    else:
        v_threshold = np.broadcast_to(
            np.asarray(dynamics.voltage(expected) - dynamics.threshold(expected)), (n,)
        )
    shown = _neuron_index(neurons, volts.shape[1])
    ax = _axes(ax)
    spike_times = np.asarray(solution.spike_times)
    for i in shown:
        line_kwargs = {"label": f"neuron {i}", **plot_kwargs}  # (a label given wins)
        (line,) = ax.plot(save_times, volts[:, i], **line_kwargs)
        color = line.get_color()
        if threshold:
            ax.axhline(
                float(v_threshold[i]), color=color, linestyle="--", linewidth=0.8
            )
        own = spike_times[i][np.isfinite(spike_times[i])]
        if spike_marks and len(own):
            ax.scatter(
                own,
                np.full(own.shape, v_threshold[i]),
                marker="^",
                color=color,
                zorder=3,
            )
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("membrane voltage")
    return ax


def rate_curve(
    drive: Float[ArrayLike, " points"],
    rate: Float[ArrayLike, " points"],
    *,
    ax: "Axes | None" = None,
    label: str | None = None,
    xlabel: str = "input current",
    ylabel: str = "firing rate (Hz)",
    **plot_kwargs: Any,
) -> "Axes":
    """A firing-rate curve (an f-I curve): `rate` against `drive`, as a line with
    markers.

    **Arguments:**

    - `drive`: the drive of each point (input current, input rate, ...), 1-D.
    - `rate`: the firing rate at each point (e.g. Hz: `1000 * counts / duration_ms`),
        same shape.
    - `ax`: the matplotlib `Axes`; default the current axes.
    - `label`: a legend entry for this curve (then the legend is drawn).
    - `xlabel`, `ylabel`: the axis labels.
    - `plot_kwargs`: passed to `ax.plot` (default `marker="o"`).

    **Returns:** the `Axes`.

    **Raises:** `ValueError` for shapes that are not equal and 1-D, or values that
    are not finite; `TypeError` for values that are not real numbers (a bool, a
    string, a complex number).
    """
    check_real_number("drive", drive, unit="")
    check_real_number("rate", rate, unit="")
    x = np.asarray(drive, float)
    y = np.asarray(rate, float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            "`drive` and `rate` must be 1-D arrays of equal length, got shapes "
            f"{x.shape} and {y.shape}."
        )
    for name, values in (("drive", x), ("rate", y)):
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"`{name}` must be finite, got {describe(values[~np.isfinite(values)])}."
            )
    ax = _axes(ax)
    style: dict[str, Any] = dict(marker="o")
    style.update(plot_kwargs)
    ax.plot(x, y, label=label, **style)
    if label is not None:
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax
