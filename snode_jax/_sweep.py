"""The engine of [`snode_jax.sweep.sweep`][]: a function of one point evaluated at
every point of a batch, vmapped in fixed-size chunks, each chunk sharded over a
1-D mesh of JAX devices, its compiled program cached across sweeps."""

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import ArrayLike, PyTree

from ._checks import check_bool, check_positive_int, narrowed
from ._misc import is_concrete

_AXIS = "batch"


def _leading_size(params) -> int:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("`params` must hold at least one array, got none.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise ValueError(
            "Every leaf of `params` needs a leading batch axis (one entry per "
            "point), got a scalar (a Python list is a PyTree of its entries: give "
            "an array)."
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


def _place_shared(x, sharding) -> jax.Array:
    """An array of `args`, replicated: a typed PRNG key (which NumPy cannot hold)
    as its key data, wrapped again."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return _place(np.asarray(x), sharding)


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
# static arguments (with their types, and the signs of floats: `1`, `1.0` and
# `True` are equal keys otherwise, and so are `0.0` and `-0.0`) and the shapes: a
# function built anew per sweep compiled anew per call, and JAX kept each program
# (6.5 MB more per call of a small `sweep_layer`).
_cached_chunk = eqx.filter_jit(
    lambda fn, mesh, static, types, point, shared: _run_chunk(
        fn, mesh, static, point, shared
    )
)


def _chunk_function(fn, mesh, static):
    """`(point, shared) -> outputs` of [`_run_chunk`][]: compiled once per `fn`,
    mesh and static arguments where those can be hashed, else once per sweep."""
    leaves, treedef = jax.tree.flatten(static)
    types = tuple(
        (type(leaf), math.copysign(1.0, leaf) if isinstance(leaf, float) else None)
        for leaf in leaves
    )
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
    - `chunk_size`: points per device per call, at most (default: the whole
        batch in one call; a larger value is cut to the points per device, as the
        batch would only be padded). Results do not depend on the number of
        devices at a fixed chunk size (bitwise on CPU); a different chunk size
        changes the array lengths that XLA vectorises over, which may change the
        last bit of transcendental functions.
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
    if not callable(fn):
        raise TypeError(
            f"`fn` must be a function of one point, got {type(fn).__name__} ({fn!r})."
        )
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
    # A chunk holds at most the points each device has: a larger one would only
    # pad the batch (one point with `chunk_size=200000` on 4 devices ran 800,000).
    most = math.ceil(n_points / n_dev)
    if chunk_size is not None:
        chunk_size = min(check_positive_int("chunk_size", chunk_size), most)
    chunk_size = most if chunk_size is None else chunk_size
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
    shared = jax.tree.map(lambda x: _place_shared(x, replicated), shared)
    compiled = _chunk_function(fn, mesh, static)

    def place(start):
        return jax.tree.map(
            lambda a: _place(a[start : start + per_call], sharding), host
        )

    check_bool("progress", progress)
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
