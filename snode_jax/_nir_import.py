"""Import from NIR ([`from_nir`][]; the mapping is in `snode_jax.nir`'s
docstring)."""

import os
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_float_dtype, check_positive_float, describe, narrowed
from ._cuba import CubaLIFDynamics
from ._if import IFDynamics
from ._layer import SpikingODELayer
from ._lif import ODELIFDynamics
from ._network import LeakyReadout, SpikingODENetwork
from ._nir_common import _READOUT, _f64, _nir
from ._nir_graph import _Graph, _type

if TYPE_CHECKING:
    import nir as nir_types


def _weight(name: str, node, n_out: int | None, n_in: int) -> np.ndarray:
    w = _f64(node.weight)
    if w.ndim != 2 or w.shape[1] != n_in or (n_out is not None and w.shape[0] != n_out):
        want = f"({'n' if n_out is None else n_out}, {n_in})"
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): `weight` must have shape {want}, got "
            f"{w.shape}."
        )
    if not np.all(np.isfinite(w)):
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): `weight` must be finite, got "
            f"{describe(w)}."
        )
    if _type(node) == "Affine":
        if node.bias is None:
            raise ValueError(
                f"NIR node {name!r} (Affine) has no `bias` (None); NIR's Affine is "
                "`W x + b`: give a zero bias, or use a Linear node."
            )
        bias = _f64(node.bias)
        if bias.shape not in ((), (w.shape[0],)):
            raise ValueError(
                f"NIR node {name!r} (Affine): `bias` must have shape () or "
                f"({w.shape[0]},) (one per output), got {bias.shape}."
            )
        if np.any(bias != 0):
            raise ValueError(
                f"NIR node {name!r} (Affine) has a non-zero `bias` "
                f"({describe(bias)}): a constant current, which a spike-driven "
                "snode_jax layer does not have. Only a zero bias is supported."
            )
    return w


def _param(name: str, node, field: str, n: int, positive: bool = False):
    if getattr(node, field) is None:
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): `{field}` is None; it needs a "
            "value (one, or one per neuron)."
        )
    value = _f64(getattr(node, field))
    if value.shape not in ((), (n,)):
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): `{field}` must have shape () or "
            f"({n},) (one per neuron), got {value.shape}."
        )
    if not np.all(np.isfinite(value)) or (positive and np.any(value <= 0)):
        cond = "finite and > 0" if positive else "finite"
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): `{field}` must be {cond}, got "
            f"{describe(value)}."
        )
    return np.broadcast_to(value, (n,))


def _io_size(name: str, kind: str, shape) -> int:
    """The size of a NIR Input or Output node of shape `shape`: one positive whole
    number (snode_jax layers take and give 1-D arrays)."""
    shape = np.asarray(shape).reshape(-1)
    if shape.size != 1:
        raise ValueError(
            f"The NIR {kind} node {name!r} has shape {tuple(shape.tolist())}; "
            "snode_jax layers take and give 1-D arrays: it must be (n,)."
        )
    k = shape[0]
    whole = np.issubdtype(shape.dtype, np.number) and not np.iscomplexobj(shape)
    if not (whole and np.isfinite(k) and k == np.floor(k) and k >= 1):
        raise ValueError(
            f"The NIR {kind} node {name!r} has size {k.item()!r}; it must be a whole "
            "number >= 1."
        )
    return int(k)


def _cast(name: str, what: str, x: np.ndarray, dtype) -> jax.Array:
    """`x` in `dtype`, refusing finite values that do not fit in it."""
    hint = "import with a wider `dtype`"
    return jnp.asarray(narrowed(f"NIR node {name!r}: the {what}", x, dtype, hint))


def _compact(x: np.ndarray, dtype) -> float | np.ndarray:
    """A Python float when every neuron has the same value (as a parameter given
    as a number), else one value per neuron."""
    x = np.asarray(x, dtype)
    return float(x[0]) if np.all(x == x[0]) else x


def _population_size(
    name: str, node, n_weight: int | None, identity: int | None = None
) -> int:
    """The node's number of neurons: that of its 1-D parameters, else that of its
    input weight's rows (`n_weight`), else, fed without a weight node, that of its
    inputs (`identity`)."""
    fields = [f for f in ("r", "tau", "tau_mem", "v_threshold") if hasattr(node, f)]
    shapes = {np.shape(getattr(node, f)) for f in fields} - {()}
    if len(shapes) > 1 or any(len(s) != 1 for s in shapes):
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}): parameters must be 1-D (one per "
            f"neuron), got shapes {sorted(shapes)}."
        )
    n = shapes.pop()[0] if shapes else (n_weight if identity is None else identity)
    if n == 0:
        raise ValueError(f"NIR node {name!r} ({_type(node)}) has no neurons.")
    if n is None or (n_weight is not None and n != n_weight):
        raise ValueError(
            f"NIR node {name!r} ({_type(node)}) has {n} neurons but its input weight "
            f"has {n_weight} rows."
        )
    return n


def _import_population(name: str, node, n: int, s: float, dtype):
    """`(dynamics, scale)`: this library's model of the node and the factor per
    neuron such that `weight = scale[:, None] * W`."""
    P = lambda field, positive=False: _param(name, node, field, n, positive)
    c = lambda x: _compact(x, dtype)
    kind = _type(node)
    readout = kind in _READOUT
    fire = {}
    if not readout:
        fire = dict(v_threshold=c(P("v_threshold")), v_reset=c(P("v_reset")))
    try:
        if kind in ("LIF", "LI"):
            tau, r = P("tau", True), P("r", True)
            dyn = ODELIFDynamics(
                tau_mem=c(s * tau), v_rest=c(P("v_leak")), C_mem=c(s * tau / r), **fire
            )
            return dyn, r / tau
        if kind in ("CubaLIF", "CubaLI"):
            tau_mem, tau_syn = P("tau_mem", True), P("tau_syn", True)
            r, w_in = P("r", True), P("w_in")
            dyn = CubaLIFDynamics(
                tau_mem=c(s * tau_mem),
                tau_syn=c(s * tau_syn),
                v_rest=c(P("v_leak")),
                C_mem=c(s * tau_mem / r),
                **fire,
            )
            return dyn, w_in / tau_syn
        r = P("r", True)
        return IFDynamics(C_mem=c(s / r), **fire), r
    except ValueError as e:
        # A model's own check (e.g. v_reset < v_threshold); `_param`'s messages
        # name the node already.
        prefix = f"NIR node {name!r} ({kind}): "
        message = str(e)
        message = message if message.startswith(prefix) else prefix + message
        if np.dtype(dtype) != np.float64:
            # Values the check accepts in float64 that rounding to `dtype` made
            # equal (or out of order).
            try:
                _import_population(name, node, n, s, np.float64)
            except ValueError:
                pass
            else:
                message += (
                    f" (as rounded to {np.dtype(dtype).name}; the graph's values "
                    "pass in float64: import with a wider `dtype`)"
                )
        raise ValueError(message) from None


def from_nir(
    graph: "nir_types.NIRGraph | str | os.PathLike",
    *,
    time_scale: float = 1000.0,
    dtype=None,
) -> SpikingODELayer | LeakyReadout | SpikingODENetwork:
    """The snode_jax module of a NIR graph (see the module docstring for the mapping).

    **Arguments:**

    - `graph`: a `nir.NIRGraph`, or the path of a `.nir` file (read with
        `nir.read`).
    - `time_scale`: ms per unit of NIR time (default 1000: NIR times in seconds).
    - `dtype`: floating dtype of the weights and parameters; default JAX's default
        float (float64 needs JAX's 64-bit mode).

    **Returns:**

    A [`SpikingODELayer`][] (or [`LeakyReadout`][]) for a graph with one
    population, else a [`SpikingODENetwork`][]. Layers use their default solver and
    settings; change them with `eqx.tree_at` if needed.

    **Raises:**

    `ValueError` naming the node for an unsupported node, a graph that is not a
    chain with optional recurrent loops, a non-zero bias, or parameters this
    library's models do not accept (such as `v_reset >= v_threshold`, or a
    non-positive `r` or time constant); `TypeError` for another `graph`.
    """
    nir = _nir()
    s = check_positive_float("time_scale", time_scale, " (ms per NIR time unit)")
    if isinstance(graph, (str, os.PathLike)):
        graph = nir.read(os.fspath(graph))
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(
            f"`graph` must be a nir.NIRGraph or a path to a .nir file, got "
            f"{type(graph).__name__}."
        )
    dtype = check_float_dtype(dtype)
    g = _Graph(graph)
    stages = g.chain()
    n_in = _io_size(g.inputs[0], "Input", g.nodes[g.inputs[0]].input_type["input"])
    layers = []
    for stage in stages:
        name, node = stage.population, g.nodes[stage.population]
        if stage.weight is None:
            n = _population_size(name, node, None, identity=n_in)
            if n != n_in:
                raise ValueError(
                    f"NIR node {name!r} ({_type(node)}) is fed without a weight node "
                    f"(identity), so it needs {n_in} neurons; it has {n}."
                )
            w = np.eye(n)
        else:
            w = _weight(stage.weight, g.nodes[stage.weight], None, n_in)
            n = _population_size(name, node, w.shape[0])
        dyn, scale = _import_population(name, node, n, s, dtype)
        weight = _cast(stage.weight or name, "weight", scale[:, None] * w, dtype)
        key = jax.random.key(0)
        if _type(node) in _READOUT:
            if stage.loop:
                raise ValueError(
                    f"NIR node {name!r} ({_type(node)}) is a non-spiking readout "
                    "with a recurrent loop, which LeakyReadout does not have."
                )
            layer = LeakyReadout(n_in, n, dyn, dtype=dtype, key=key)
            layers.append(eqx.tree_at(lambda m: m.weight, layer, weight))
            n_in = n
            continue
        delay, rec = 0.0, None
        for k in stage.loop:
            if _type(g.nodes[k]) == "Delay":
                d = _f64(g.nodes[k].delay)
                if d.size == 0 or not (np.all(np.isfinite(s * d)) and np.all(d >= 0)):
                    raise ValueError(
                        f"NIR node {k!r} (Delay): `delay` must be finite and >= 0, "
                        f"got {describe(d)}."
                    )
                if d.shape not in ((), (1,), (n,)) or np.any(d != d.flat[0]):
                    raise ValueError(
                        f"NIR node {k!r} (Delay): a recurrent delay must be one value "
                        f"for all {n} neurons, got {describe(d)}."
                    )
                delay = s * float(d.flat[0])
            else:
                rec = _weight(k, g.nodes[k], n, n)
        layer = SpikingODELayer(
            n_in, n, dyn, recurrent=rec is not None, delay=delay, dtype=dtype, key=key
        )
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        if rec is not None:
            rec_w = _cast(name, "recurrent weight", scale[:, None] * rec, dtype)
            layer = eqx.tree_at(lambda m: m.recurrent_weight, layer, rec_w)
        layers.append(layer)
        n_in = n
    out_name = g.outputs[0]
    n_out = _io_size(out_name, "Output", g.nodes[out_name].output_type["output"])
    if n_out != n_in:
        raise ValueError(
            f"The NIR Output node {out_name!r} has shape ({n_out},); the last "
            f"population, {stages[-1].population!r}, has {n_in} neurons: it must be "
            f"({n_in},)."
        )
    if len(layers) == 1:
        return layers[0]
    return SpikingODENetwork(layers)
