"""Parameter sweeps: one function evaluated at every point of a grid or batch of
parameters, vmapped in fixed-size chunks and sharded across JAX devices.

```python
import snode_jax as sj
from snode_jax.sweep import grid, sweep_layer

layer = sj.SpikingODELayer(1, 1, sj.ODELIFDynamics(t_ref=2.0), key=jax.random.key(0))
points = grid({"weight": np.linspace(0, 0.5, 100),
               "dynamics.tau_mem": np.linspace(5, 50, 100)})      # 10,000 points
out = sweep_layer(layer, np.ones((1, 1)), points, interval=200.0,
                  measure=lambda sol: sol.num_spikes[0])           # (10000,)
```

**Devices.** The points of one chunk are split over a 1-D `jax.sharding.Mesh` of
the devices (axis `"batch"`) and each device runs `jax.vmap(fn)` on its share under
`jax.shard_map`, so one CPU, several GPUs, or several hosts run the same code. For
several hosts, call `jax.distributed.initialize()` first in every process and give
every process the same `params`: each process places the points of its own devices
(`jax.make_array_from_callback`) and every process receives the whole result. What
is tested: one process with one device, and one process with 4 forced host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`), whose results are bitwise
identical to one device at the same `chunk_size`. The multi-process path is not
tested here.
"""

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PyTree

from ._checks import (
    check_finite,
    check_interval,
    check_real_number,
    describe,
    narrowed,
)
from ._integrate import check_max_spikes
from ._layer import SpikingODELayer
from ._solution import RESULTS, Solution
from ._spike_train import SpikeTrain
from ._sweep import _as_host, _leading_size, sweep

# The most points `grid` builds (its indices, and JAX's, are int32).
_MAX_POINTS = 2**31 - 1


def grid(
    axes: Mapping[str, ArrayLike] | None = None, /, **kwargs: ArrayLike
) -> dict[str, np.ndarray]:
    """The Cartesian product of parameter axes, flattened to one batch of points.

    **Arguments:**

    - `axes`: a mapping from names to the values of each axis (leading axis: the
        values; a 1-D array for scalar parameters). Names need not be identifiers
        (`"dynamics.tau_mem"`).
    - `**kwargs`: more axes, by keyword.

    **Returns:**

    A dict with the same names, each of length `prod(len(axis))`, in C order: the
    first axis varies slowest, so `out[name].reshape(shape)` with
    `shape = tuple(len(a) for a in axes)` gives the grid back.

    **Raises:**

    `ValueError` for no axes, an axis given twice, an empty, scalar or ragged
    axis, or more than `2**31 - 1` points; `TypeError` for `axes` that is not a
    mapping (nor pairs of names and values).
    """
    try:
        merged: dict[str, Any] = dict(axes or {})
    except (TypeError, ValueError) as error:
        raise TypeError(
            "`axes` must be a mapping from names to values (or give the axes by "
            f"keyword: `grid(tau_mem=[10, 20])`), got {type(axes).__name__} {axes!r}."
        ) from error
    for name, values in kwargs.items():
        if name in merged:
            raise ValueError(f"Axis {name!r} given twice.")
        merged[name] = values
    if not merged:
        raise ValueError("`grid` needs at least one axis, got none.")
    arrays = {}
    for name, values in merged.items():
        try:
            arr = np.asarray(values)
        except ValueError as e:  # (ragged nesting)
            raise ValueError(
                f"Axis {name!r} must be an array of values (one per grid point "
                f"along it), got {values!r}: {e}"
            ) from None
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise ValueError(
                f"Axis {name!r} must be a non-empty sequence of values, got shape "
                f"{arr.shape}."
            )
        arrays[name] = arr
    sizes = [len(a) for a in arrays.values()]
    total = math.prod(sizes)
    if total > _MAX_POINTS:
        raise ValueError(
            f"`grid` of shape {tuple(sizes)} has {total:,} points, more than "
            f"{_MAX_POINTS:,} (2**31 - 1): sweep it in parts."
        )
    index = np.indices(sizes).reshape(len(sizes), -1)
    return {name: arr[idx] for (name, arr), idx in zip(arrays.items(), index)}


def _dynamics_params(layer: SpikingODELayer) -> tuple[str, ...]:
    return tuple(f"dynamics.{name}" for name in layer.dynamics.parameter_names)


def _check_path(layer: SpikingODELayer, path: str, values: np.ndarray):
    """The leaf at dotted `path`, and the per-point shapes it accepts."""
    swept = _dynamics_params(layer) + ("weight",)
    if layer.recurrent_weight is not None:
        swept = swept + ("recurrent_weight",)
    if path not in swept:
        raise ValueError(
            f"Cannot sweep {path!r}: the parameters of this layer are "
            f"{', '.join(repr(s) for s in swept)}."
        )
    obj: Any = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    if obj is None:
        raise ValueError(
            f"Cannot sweep {path!r}: this layer's dynamics has none (build it with a "
            f"value for `{path.split('.')[-1]}`, e.g. 0.0)."
        )
    shape = np.shape(obj)
    if path.startswith("dynamics."):
        allowed = [(), (layer.n_neurons,)]
    else:
        allowed = [(), shape]
    point_shape = values.shape[1:]
    if point_shape not in allowed:
        raise ValueError(
            f"`params[{path!r}]` must have shape (num_points,) + one of {allowed} "
            f"(one value per point{', per neuron' if len(allowed[1]) == 1 else ''}), "
            f"got {values.shape}."
        )
    return shape


def _in_layer_dtype(name: str, x, layer: SpikingODELayer) -> np.ndarray:
    """The real numbers `x` in `layer`'s dtype, refused where one would become
    inf there."""
    host = np.asarray(x, dtype=np.float64)
    return narrowed(name, host, layer.dtype, "the layer's dtype")


def sweep_layer(
    layer: SpikingODELayer,
    inputs: ArrayLike,
    params: Mapping[str, ArrayLike],
    *,
    interval: float | None = None,
    max_spikes: int = 64,
    measure: Callable[[Solution], PyTree[ArrayLike]] | None = None,
    chunk_size: int | None = None,
    devices: Sequence[Any] | None = None,
    progress: bool = False,
) -> PyTree[np.ndarray]:
    """Simulate `layer` once per point of `params`, each time with those parameters
    replaced, and keep what `measure` extracts from each run's [`Solution`][].

    **Arguments:**

    - `layer`: the [`SpikingODELayer`][] whose other parameters stay fixed.
    - `inputs`: dense inputs `(T, n_inputs)`, shared by every point.
    - `params`: a mapping from parameter paths to arrays with one entry per point
        (e.g. from [`grid`][]): `"weight"` (a scalar per point, broadcast, or the
        whole weight matrix), `"recurrent_weight"`, or a dynamics parameter
        `"dynamics.<name>"` for a `<name>` in the model's `parameter_names` (a
        scalar per point, or one value per neuron).
    - `interval`: the length of each input interval (ms).
    - `max_spikes`: spike times stored per neuron.
    - `measure`: a function of one run's `Solution` returning a PyTree of arrays;
        default `{"counts": sol.counts, "spike_times": sol.spike_times}`. Compiled
        with the layer's run once per function object (see [`sweep`][]).
    - `chunk_size`, `devices`, `progress`: as for [`sweep`][].

    **Returns:**

    `measure`'s output with NumPy leaves, leading axis one entry per point.

    **Raises:**

    `ValueError` for a path that is not a parameter of the layer, a model built
    without that parameter (`t_ref=None`), values of the wrong shape, or values
    or inputs beyond the range of the layer's dtype; `TypeError` for values that
    are not real numbers (complex, bool), inputs that are neither real numbers nor
    bools (read as 0 and 1, as by `forward`), or a `measure` that is not
    a function; a `RuntimeError` where a point's run fails (e.g. a non-positive
    `tau_mem`, or a full spike buffer), after the sweep, naming the first such
    point, its values, and the failed condition or `RESULTS` item.
    """
    if not isinstance(layer, SpikingODELayer):
        raise TypeError(f"`layer` must be a SpikingODELayer, got {type(layer)}.")
    if not isinstance(params, Mapping):
        raise TypeError(
            "`params` must be a mapping from parameter paths (such as "
            f"'dynamics.tau_mem' or 'weight') to arrays, got {type(params)}."
        )
    if interval is None:
        raise ValueError("`sweep_layer` needs `interval` (ms).")
    if isinstance(inputs, SpikeTrain):
        raise TypeError(
            "`sweep_layer` takes dense `inputs` (T, n_inputs), got a SpikeTrain: "
            "sweep a spike-driven run with `sweep(fn, params, ...)` and a function "
            "calling `layer.simulate(train, t_end=...)`."
        )
    for path, v in params.items():
        # A layer's parameters are real numbers (not bools: `True` is no weight).
        check_real_number(f"params[{path!r}]", v, unit="")
    # Inputs may be bools (a spike raster, read as 0 and 1, as by `forward`).
    try:
        raster = np.asarray(inputs).dtype == np.bool_
    except ValueError:  # (nested lists of other lengths: named just below)
        raster = False
    if not raster:
        check_real_number("inputs", inputs, unit="")
    values = {path: _as_host(v, f"`params[{path!r}]`") for path, v in params.items()}
    _leading_size(values)
    shapes = {path: _check_path(layer, path, v) for path, v in values.items()}
    for path, v in values.items():
        check_finite(f"params[{path!r}]", v)
        # (Run in the layer's dtype: a value beyond its range would be inf there.
        # One that rounds to break a model's condition fails its point's run,
        # which is then named with its values.)
        _in_layer_dtype(f"`params[{path!r}]`", v, layer)
    check_finite("inputs", inputs)
    inputs = _in_layer_dtype("`inputs`", inputs, layer)
    if measure is None:
        measure = _default_measure
    elif not callable(measure):
        raise TypeError(
            "`measure` must be a function of one run's Solution, got "
            f"{type(measure).__name__} ({measure!r})."
        )
    check_interval(interval, inputs.shape[0], layer.dtype)
    # (An array: another `interval` reuses the compiled sweep. The rest is static,
    # and hashable: another sweep of the same kind reuses it too.)
    lengths = np.asarray(interval, layer.dtype)
    spec = _PointSpec(tuple(shapes.items()), check_max_spikes(max_spikes), measure)
    out, results = sweep(
        _layer_point,
        values,
        layer,
        inputs,
        lengths,
        spec,
        chunk_size=chunk_size,
        devices=devices,
        progress=progress,
    )
    failed = np.flatnonzero(results != RESULTS.successful._value)
    if failed.size:
        _raise_for_point(
            int(failed[0]), failed.size, values, layer, inputs, lengths, spec
        )
    return out


def _raise_for_point(i, num_failed, values, layer, inputs, interval, spec):
    """Raise the error of point `i`'s run (one of `num_failed` that failed), naming
    the point and its values: its run again, alone, with `throw=True`."""
    point = {path: v[i] for path, v in values.items()}
    shown = ", ".join(f"{path}={describe(v)}" for path, v in point.items())
    where = (
        f"`sweep_layer`: the run of point {i} ({shown}) failed"
        f"{f' (one of {num_failed} that did)' if num_failed > 1 else ''}"
    )
    try:
        jax.block_until_ready(_layer_point(point, layer, inputs, interval, spec, True))
    except eqx.EquinoxRuntimeError as e:
        found = re.search(r"EquinoxRuntimeError: (.*?)(?:\n\s*\n|$)", str(e), re.S)
        message = found.group(1).strip() if found else str(e)
        raise RuntimeError(f"{where}: {message}") from e
    raise RuntimeError(f"{where}, and did not fail when run again alone.")


@dataclasses.dataclass(frozen=True)
class _PointSpec:
    """What `sweep_layer` fixes for every point: one static (hashable) argument,
    none of it traced."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    max_spikes: int
    measure: Callable[[Solution], PyTree[ArrayLike]]


def _layer_point(point, layer, inputs, interval, spec: _PointSpec, throw=False):
    """`sweep_layer`'s function of one point: `layer` with the point's values
    swapped in, simulated, measured; and the run's `result` (as its index), which
    the caller checks (with `throw`, the run raises instead)."""
    shapes, max_spikes, measure = dict(spec.shapes), spec.max_spikes, spec.measure

    def get(path):
        def where(tree):
            for part in path.split("."):
                tree = getattr(tree, part)
            return tree

        return where

    new = layer
    for path, value in point.items():
        value = jnp.asarray(value, layer.dtype)
        if not path.startswith("dynamics."):
            value = jnp.broadcast_to(value, shapes[path])
        new = eqx.tree_at(get(path), new, value)
    sol = new.simulate(inputs, interval, max_spikes, throw=throw)
    return measure(sol), sol.result._value


def _default_measure(sol: Solution):
    return {"counts": sol.counts, "spike_times": sol.spike_times}


__all__ = ["grid", "sweep", "sweep_layer"]
