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
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import ArrayLike, PyTree

from ._checks import (
    check_finite,
    check_interval,
    check_positive_int,
    check_real_number,
    narrowed,
)
from ._integrate import check_max_spikes
from ._layer import SpikingODELayer
from ._misc import is_concrete
from ._solution import Solution
from ._spike_train import SpikeTrain

_AXIS = "batch"

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
    axis, or more than `2**31 - 1` points.
    """
    merged: dict[str, Any] = dict(axes or {})
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


def _leading_size(params) -> int:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("`params` must hold at least one array, got none.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise ValueError(
            "Every leaf of `params` needs a leading batch axis (one entry per "
            "point), got a scalar."
        )
    if len(sizes) != 1:
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(
            "Every leaf of `params` must have the same leading size (the number of "
            f"points), got shapes {shapes}."
        )
    size = sizes.pop()
    assert size is not None
    if size == 0:
        raise ValueError("`params` has no points (leading size 0).")
    return int(size)


def _as_host(leaf, name: str = "`params`") -> np.ndarray:
    arr = np.asarray(leaf)
    if arr.dtype.kind not in "biufc":  # (strings, objects: no JAX type)
        raise TypeError(
            f"{name} must hold numbers (bool, int, float or complex arrays), got an "
            f"array of dtype {arr.dtype}."
        )
    # JAX's dtype for this data (float64 -> float32 unless x64 is enabled).
    return narrowed(name, arr, jax.dtypes.canonicalize_dtype(arr.dtype))


def _host_leaves(params):
    """`params` as NumPy arrays, each leaf checked by `_as_host` and named by its
    path in `params`."""

    def one(path, leaf):
        return _as_host(leaf, f"`params{jax.tree_util.keystr(path)}`")

    return jax.tree_util.tree_map_with_path(one, params)


def _check_devices(devices) -> list:
    """`devices` as a list of distinct JAX devices (default: all of them)."""
    if devices is None:
        return list(jax.devices())
    not_a_sequence = TypeError(
        "`devices` must be a sequence of JAX devices (e.g. `jax.devices()` or "
        f"`jax.devices()[:2]`), got {devices!r}."
    )
    if isinstance(devices, (str, bytes, jax.Device)):
        raise not_a_sequence
    if isinstance(devices, np.ndarray):  # (such as a mesh's `devices`)
        devices = devices.reshape(-1)
    try:
        devices = list(devices)
    except TypeError:
        raise not_a_sequence from None
    for d in devices:
        if not isinstance(d, jax.Device):
            raise TypeError(
                f"`devices` must be a sequence of JAX devices, got an entry {d!r}."
            )
    if len(set(devices)) != len(devices):
        raise ValueError(f"`devices` lists a device more than once: {devices}.")
    return devices


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _place(x: np.ndarray, sharding) -> jax.Array:
    # Each process supplies the blocks of its own devices (all of them in a
    # single process), so this also builds global arrays across hosts.
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _progress_bar(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError(
            "`progress=True` needs tqdm: pip install 'snode_jax[cli]' (or tqdm)."
        ) from e
    return tqdm(total=total, desc=desc, unit="pt")


def _run_chunk(fn, mesh, static, point, shared):
    """`jax.vmap(fn)` over a chunk of points (sharded over `mesh`), with the
    arguments `eqx.combine(shared, static)` (`shared`: their arrays, replicated)."""

    def batched(point, shared):
        return jax.vmap(lambda p: fn(p, *eqx.combine(shared, static)))(point)

    # `fn` may run loops of its own whose carries start from values that vary
    # over no mesh axis (the library's own loops need no such care); nothing in
    # `jax.vmap(fn)` communicates across devices, so the check is off.
    run = jax.shard_map(
        batched,
        mesh=mesh,
        in_specs=(P(_AXIS), P()),
        out_specs=P(_AXIS),
        check_vma=False,
    )
    return run(point, shared)


# `eqx.filter_jit` rather than `jax.jit`: an error raised inside `fn` (a failed
# simulation) then prints its message rather than a callback traceback. One
# function for every sweep, its compiled chunks cached by `fn`, the mesh, the
# static arguments (with their types: `1`, `1.0` and `True` are equal keys
# otherwise) and the shapes: a function built anew per sweep compiled anew per
# call, and JAX kept each program (6.5 MB more per call of a small `sweep_layer`).
_cached_chunk = eqx.filter_jit(
    lambda fn, mesh, static, types, point, shared: _run_chunk(
        fn, mesh, static, point, shared
    )
)


def _chunk_function(fn, mesh, static):
    """`(point, shared) -> outputs` of [`_run_chunk`][]: compiled once per `fn`,
    mesh and static arguments where those can be hashed, else once per sweep."""
    leaves, treedef = jax.tree.flatten(static)
    types = tuple(type(leaf) for leaf in leaves)
    try:
        hash((fn, mesh, treedef, tuple(leaves)))
    except TypeError:  # (a static argument that cannot be a cache key)
        per_sweep = eqx.filter_jit(
            lambda point, shared: _run_chunk(fn, mesh, static, point, shared)
        )
        return per_sweep
    return lambda point, shared: _cached_chunk(fn, mesh, static, types, point, shared)


def sweep(
    fn: Callable[..., PyTree[ArrayLike]],
    params: PyTree[ArrayLike],
    *args: Any,
    chunk_size: int | None = None,
    devices: Sequence[Any] | None = None,
    progress: bool = False,
) -> PyTree[np.ndarray]:
    """Evaluate `fn(point, *args)` at every point of a batch of parameters.

    Each call of the compiled function evaluates `chunk_size` points on every
    device (`jax.vmap(fn)` under `jax.shard_map` over a 1-D mesh of `devices`); the
    batch is walked in such chunks, so memory is bounded by the chunk, and the
    function is compiled once (every chunk has the same shape). The last chunk is
    padded with copies of the last point (valid parameters, so `fn` cannot fail on
    the padding); their results are dropped before returning.

    **Arguments:**

    - `fn`: a JAX-traceable function of one point (the leaves of `params` without
        their leading axis) returning a PyTree of arrays.
    - `params`: a PyTree of arrays sharing a leading axis: one entry per point
        (e.g. from [`grid`][]).
    - `*args`: what every point shares (PyTrees, e.g. a layer and its inputs):
        passed to `fn` unbatched, and placed once on every device rather than
        compiled into the program as constants.

    **Compilation.** As `jax.jit(fn)` does, `sweep` compiles `fn` once per
    function object, shapes and dtypes of the arrays, and values of the
    arguments in `*args` that are not arrays, and reuses the program in later
    sweeps (where one of those values cannot be hashed, it compiles once per
    sweep instead): what `fn` reads from globals or closures is what it read
    when first compiled. Pass what changes between sweeps as an argument.
    - `chunk_size`: points per device per call (default: the whole batch in one
        call). Results do not depend on the number of devices at a fixed
        `chunk_size` (bitwise on CPU); a different `chunk_size` changes the array
        lengths that XLA vectorises over, which may change the last bit of
        transcendental functions.
    - `devices`: the devices to shard over; default `jax.devices()` (every device
        of every process).
    - `progress`: show a tqdm progress bar over the points (needs tqdm).

    **Returns:**

    `fn`'s output PyTree with NumPy leaves, each with a leading axis of one entry
    per point, in the order of `params`.

    **Raises:**

    `ValueError` for `params` without a common leading axis, a bad `chunk_size`,
    or an empty `devices` or one that lists a device twice; `TypeError` for leaves
    of `params` that are not numbers, `devices` that is not a sequence of devices,
    or traced arguments (`sweep` runs eagerly, outside `jax.jit`); whatever `fn`
    raises (e.g. a failed simulation with `throw=True`).
    """
    if not is_concrete((params, args)):
        raise TypeError(
            "`sweep` runs eagerly (it walks the points in chunks, each a compiled "
            "call): call it outside `jax.jit`, `jax.vmap` and `jax.grad`, with "
            "concrete `params` and arguments."
        )
    n_points = _leading_size(params)
    host = _host_leaves(params)
    devices = _check_devices(devices)
    if not devices:
        raise ValueError("`devices` must name at least one device, got none.")
    n_dev = len(devices)
    if chunk_size is None:
        chunk_size = math.ceil(n_points / n_dev)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    per_call = chunk_size * n_dev
    n_calls = math.ceil(n_points / per_call)
    pad = n_calls * per_call - n_points
    if pad:
        host = jax.tree.map(
            lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]), host
        )

    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, P(_AXIS))
    replicated = NamedSharding(mesh, P())
    # The arrays of `args` travel as (replicated) inputs; the rest is static.
    shared, static = eqx.partition(args, eqx.is_array)
    shared = jax.tree.map(lambda x: _place(np.asarray(x), replicated), shared)
    compiled = _chunk_function(fn, mesh, static)

    def place(start):
        return jax.tree.map(
            lambda a: _place(a[start : start + per_call], sharding), host
        )

    bar = _progress_bar(n_points, "sweep") if progress else None
    outputs = []
    try:
        # Dispatch the next chunk before copying the previous one back, so the
        # host copy overlaps the devices' work.
        pending = compiled(place(0), shared)
        for k in itertools.count(1):
            nxt = compiled(place(k * per_call), shared) if k < n_calls else None
            outputs.append(jax.tree.map(_to_host, pending))
            if bar is not None:
                bar.update(min(per_call, n_points - (k - 1) * per_call))
            if nxt is None:
                break
            pending = nxt
    finally:
        if bar is not None:
            bar.close()
    return jax.tree.map(lambda *chunks: np.concatenate(chunks)[:n_points], *outputs)


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
    or inputs beyond the range of the layer's dtype; `TypeError` for values or
    inputs that are not real numbers (complex, bool); a runtime error naming the failed
    condition when a point's run fails (e.g. a non-positive `tau_mem`).
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
    check_real_number("inputs", inputs, unit="")
    values = {path: _as_host(v, f"`params[{path!r}]`") for path, v in params.items()}
    _leading_size(values)
    shapes = {path: _check_path(layer, path, v) for path, v in values.items()}
    for path, v in values.items():
        check_finite(f"params[{path!r}]", v)
        # (Run in the layer's dtype: a value beyond its range would be inf there.)
        _in_layer_dtype(f"`params[{path!r}]`", v, layer)
    inputs = _in_layer_dtype("`inputs`", inputs, layer)
    if measure is None:
        measure = _default_measure
    check_interval(interval, inputs.shape[0], layer.dtype)
    # (An array: another `interval` reuses the compiled sweep. The rest is static,
    # and hashable: another sweep of the same kind reuses it too.)
    lengths = np.asarray(interval, layer.dtype)
    spec = _PointSpec(tuple(shapes.items()), check_max_spikes(max_spikes), measure)
    return sweep(
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


@dataclasses.dataclass(frozen=True)
class _PointSpec:
    """What `sweep_layer` fixes for every point: one static (hashable) argument,
    none of it traced."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    max_spikes: int
    measure: Callable[[Solution], PyTree[ArrayLike]]


def _layer_point(point, layer, inputs, interval, spec: _PointSpec):
    """`sweep_layer`'s function of one point: `layer` with the point's values
    swapped in, simulated, measured."""
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
    return measure(new.simulate(inputs, interval, max_spikes))


def _default_measure(sol: Solution):
    return {"counts": sol.counts, "spike_times": sol.spike_times}


__all__ = ["grid", "sweep", "sweep_layer"]
