"""Interchange with the Neuromorphic Intermediate Representation (NIR).

[`to_nir`][] writes a [`SpikingODELayer`][], [`LeakyReadout`][] or
[`SpikingODENetwork`][] as a `nir.NIRGraph`; [`from_nir`][] reads such a graph (or a
`.nir` file) back into these modules. Needs the `nir` package: `pip install
"snode_jax[nir]"`.

**The graphs.** A chain `Input -> Linear -> population -> Linear -> population ...
-> Output`, where a population is one of the nodes below. A recurrent layer is a
loop from its population through a `Linear` (and, for a delay, a `Delay` whose
entries are all equal) back into itself. On import, an `Affine` is accepted in
place of a `Linear` when its bias is zero, a population fed straight from the
previous one (no weight node) gets the identity weight, and nested graphs (as
some libraries write recurrent layers) are inlined. Anything else (convolutions,
pooling, `Flatten`, `Threshold`, `Scale`, a `Delay` outside a recurrent loop, a
non-zero bias, branches or skip connections) raises a `ValueError` naming the
node, its type and what is supported.

**Time.** NIR is continuous-time and has no `dt`: every parameter maps exactly.
Times here are in ms; `time_scale` is the number of ms in one unit of NIR time,
by default 1000 (NIR time constants and delays in seconds, as the libraries that
write NIR use). A spike is a Dirac delta of unit area in NIR time, so a `Linear`
weight `W` carried by a spike is a charge: it moves the node's state by a finite
jump, which is what this library's weight is.

**The equations** (NIR on the left, time `t` in NIR units; this library on the
right, time in ms; `s = time_scale`, `S` the input spikes, `I = W S` the node's
input current):

| NIR node | NIR equations | snode_jax | parameters |
|---|---|---|---|
| `LIF(tau, r, v_leak, v_threshold, v_reset)` | `tau dv/dt = (v_leak - v) + r I` | `ODELIFDynamics`: `dv/dt = -(v - v_rest)/tau_mem + I/C_mem`; a spike adds `w` to `v` | `tau_mem = s tau`, `v_rest = v_leak`, `C_mem = s tau / r`, `w = (r / tau) W` |
| `CubaLIF(tau_syn, tau_mem, r, v_leak, v_threshold, v_reset, w_in)` | `tau_syn dI_s/dt = -I_s + w_in I`, `tau_mem dv/dt = (v_leak - v) + r I_s` | `CubaLIFDynamics`: a spike adds `w` to `i_syn`; `dv/dt = -(v - v_rest)/tau_mem + i_syn/C_mem` | `tau_mem`, `tau_syn` times `s`, `C_mem = s tau_mem / r`, `w = (w_in / tau_syn) W` (so `i_syn` is NIR's `I_s`) |
| `IF(r, v_threshold, v_reset)` | `dv/dt = r I` | [`IFDynamics`][]: `dv/dt = I/C_mem`; a spike adds `w` to `v` | `C_mem = s / r`, `w = r W` |
| `LI(tau, r, v_leak)`, `CubaLI(...)`, `I(r)` | as `LIF`, `CubaLIF`, `IF` without firing | [`LeakyReadout`][] with the model above | as above |
| `Delay(delay)` in a recurrent loop | `y(t) = x(t - delay)` | `SpikingODELayer(..., delay=)` | `delay = s delay` |

All of them spike when `v` reaches `v_threshold` and then set `v = v_reset` (NIR
writes `v > v_threshold`; in continuous time the two differ only when a jump lands
exactly on the threshold, which fires here). In
each row `W` is the `Linear` weight feeding the node (input or recurrent), row
`k` scaled by neuron `k`'s factor. The dense-input current of a layer (`weight @
x_k`, which NIR graphs do not carry) is NIR's current `I`: that is what fixes
`C_mem` from `r`. On export `w_in = 1` and `r` follows from `C_mem` by the same
rules, so a module survives the round trip up to the rounding of these products
(a few ulp), and the spike times with it.

**Parameters.** NIR stores one value per neuron. On export, scalars are broadcast
to `(n,)`; on import, a parameter whose entries are all equal becomes a scalar
(shared by the population, as the model's defaults are), others stay per neuron.
`r`, `tau`, `tau_mem`, `tau_syn` must be `> 0`. NIR does not specify the initial
state: imported neurons start at rest, `v = v_leak`, or at `v_reset` where
`v_leak >= v_threshold` (a neuron that fires with no input has no rest below
threshold) and for an `IF` (as the models' `init_state` does). A readout's
`v_threshold` is never used and is not exported (an imported readout gets the
model's default); nor is its `v_reset`, except that an `IF` readout starts there,
which NIR's `I` cannot carry: export refuses an `IF` readout whose `v_reset` is
not 0.
"""

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import nir as nir_types

__all__ = ["from_nir", "to_nir"]

_SUPPORTED = (
    "Input, Output, Linear, Affine (zero bias), LIF, CubaLIF, IF, LI, CubaLI, I, "
    "and Delay (only in a recurrent loop, one delay for all neurons)"
)
_SPIKING = ("LIF", "CubaLIF", "IF")
_READOUT = ("LI", "CubaLI", "I")
_WEIGHTS = ("Linear", "Affine")


def _nir():
    try:
        import nir
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "snode_jax.nir needs the `nir` package: pip install 'snode_jax[nir]'."
        ) from e
    return nir


def _f64(x) -> np.ndarray:
    if np.iscomplexobj(x):
        raise TypeError(f"NIR parameters must be real, got complex values {x!r}.")
    return np.asarray(x, np.float64)


# -- export --------------------------------------------------------------------------


def _per_neuron(dynamics, name: str, n: int) -> np.ndarray:
    return np.broadcast_to(_f64(getattr(dynamics, name)), (n,)).copy()


def _export_population(layer, index: int, s: float):
    """`(name, node, scale)`: the NIR node of a layer's neurons and the factor per
    neuron such that the NIR weight is `scale[:, None] * weight`."""
    nir = _nir()
    dyn = layer.dynamics
    n = layer.n_neurons
    readout = isinstance(layer, LeakyReadout)
    p = lambda name: _per_neuron(dyn, name, n)
    if isinstance(dyn, ODELIFDynamics):
        if dyn.t_ref is not None:
            raise ValueError(
                f"Layer {index}: NIR's LIF has no refractory period; this "
                f"ODELIFDynamics has `t_ref` = {describe(dyn.t_ref)}. Export a model "
                "with `t_ref=None`."
            )
        tau = p("tau_mem") / s
        r = p("tau_mem") / p("C_mem")
        scale = tau / r
        if readout:
            return "li", nir.LI(tau=tau, r=r, v_leak=p("v_rest")), scale
        node = nir.LIF(
            tau=tau,
            r=r,
            v_leak=p("v_rest"),
            v_threshold=p("v_threshold"),
            v_reset=p("v_reset"),
        )
        return "lif", node, scale
    if isinstance(dyn, CubaLIFDynamics):
        tau_mem, tau_syn = p("tau_mem") / s, p("tau_syn") / s
        r = p("tau_mem") / p("C_mem")
        v_leak, w_in = p("v_rest"), np.ones(n)
        if readout:
            node = nir.CubaLI(
                tau_syn=tau_syn, tau_mem=tau_mem, r=r, v_leak=v_leak, w_in=w_in
            )
            return "cubali", node, tau_syn
        node = nir.CubaLIF(
            tau_syn=tau_syn,
            tau_mem=tau_mem,
            r=r,
            v_leak=v_leak,
            v_threshold=p("v_threshold"),
            v_reset=p("v_reset"),
            w_in=w_in,
        )
        return "cubalif", node, tau_syn
    if isinstance(dyn, IFDynamics):
        r = s / p("C_mem")
        if readout:
            # An IF readout starts at `v_reset` (it has no resting potential);
            # NIR's `I` has no such parameter, and starts at 0.
            v_reset = p("v_reset")
            if np.any(v_reset != 0):
                raise ValueError(
                    f"Layer {index}: an IFDynamics readout starts at its `v_reset`, "
                    f"which NIR's I node cannot carry (it starts at 0); got v_reset = "
                    f"{describe(v_reset)}. Give v_reset=0."
                )
            return "i", nir.I(r=r), 1 / r
        node = nir.IF(r=r, v_threshold=p("v_threshold"), v_reset=p("v_reset"))
        return "if", node, 1 / r
    raise ValueError(
        f"Layer {index}: {type(dyn).__name__} has no NIR node; NIR export supports "
        "ODELIFDynamics (LIF, LI), CubaLIFDynamics (CubaLIF, CubaLI) and IFDynamics "
        "(IF, I)."
    )


def to_nir(
    module: SpikingODELayer | LeakyReadout | SpikingODENetwork,
    *,
    time_scale: float = 1000.0,
) -> "nir_types.NIRGraph":
    """The module as a NIR graph (see the module docstring for the mapping).

    **Arguments:**

    - `module`: a [`SpikingODELayer`][] (optionally recurrent), a
        [`LeakyReadout`][], or a [`SpikingODENetwork`][] of them.
    - `time_scale`: ms per unit of NIR time (default 1000: NIR times in seconds).

    **Returns:**

    A `nir.NIRGraph`: `input -> linear_0 -> lif_0 -> linear_1 -> ... -> output`, with
    `recurrent_i` (and `delay_i`) looping back into population `i` of a recurrent
    layer. The arrays are float64. Save it with `nir.write(path, graph)`.

    **Raises:**

    `TypeError` for another module; `ValueError` for a model NIR has no node for
    (AdEx, Izhikevich, QIF, a LIF with a refractory period, your own), or a bad
    `time_scale`.
    """
    nir = _nir()
    s = check_positive_float("time_scale", time_scale, " (ms per NIR time unit)")
    if isinstance(module, SpikingODENetwork):
        layers = module.layers
    elif isinstance(module, (SpikingODELayer, LeakyReadout)):
        layers = (module,)
    else:
        raise TypeError(
            "`module` must be a SpikingODELayer, LeakyReadout or SpikingODENetwork, "
            f"got {type(module).__name__}."
        )
    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([layers[0].n_inputs])})
    }
    edges: list[tuple[str, str]] = []
    previous = "input"
    for i, layer in enumerate(layers):
        kind, node, scale = _export_population(layer, i, s)
        weight_name, population = f"linear_{i}", f"{kind}_{i}"
        nodes[weight_name] = nir.Linear(weight=scale[:, None] * _f64(layer.weight))
        nodes[population] = node
        edges += [(previous, weight_name), (weight_name, population)]
        rec = getattr(layer, "recurrent_weight", None)
        if isinstance(layer, SpikingODELayer) and rec is not None:
            rec_name = f"recurrent_{i}"
            nodes[rec_name] = nir.Linear(weight=scale[:, None] * _f64(rec))
            edges.append((population, rec_name))
            if layer.delay > 0:
                delay_name = f"delay_{i}"
                delays = np.full(layer.n_neurons, layer.delay / s)
                nodes[delay_name] = nir.Delay(delay=delays)
                edges += [(rec_name, delay_name), (delay_name, population)]
            else:
                edges.append((rec_name, population))
        previous = population
    nodes["output"] = nir.Output(
        output_type={"output": np.array([layers[-1].n_neurons])}
    )
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={})


# -- import --------------------------------------------------------------------------


def _type(node) -> str:
    return type(node).__name__


def _flatten(nodes: dict, edges: Sequence) -> tuple[dict, list]:
    """Inline nested graphs: a subgraph's Input and Output nodes are replaced by the
    edges into and out of the subgraph node."""
    nir = _nir()
    flat: dict[str, Any] = {}
    entries: dict[str, list[str]] = {}
    exits: dict[str, list[str]] = {}
    inner_edges: list[tuple[str, str]] = []
    inlined_from: dict[str, str] = {}  # an inlined node's name: its subgraph's

    def add(key: str, node, subgraph: str | None = None) -> None:
        # An inlined node is named `subgraph.node`, which another node may already
        # be called (or be inlined as, from a deeper level).
        if key in flat:
            what = lambda sub: (
                "a node" if sub is None else f"a node of the nested graph {sub!r}"
            )
            raise ValueError(
                f"NIR graph: {what(subgraph)} and {what(inlined_from.get(key))} "
                f"would both be named {key!r} once nested graphs are inlined (as "
                "`graph.node`); rename one of them."
            )
        flat[key] = node
        if subgraph is not None:
            inlined_from[key] = subgraph

    for name, node in nodes.items():
        if not isinstance(node, nir.NIRGraph):
            add(name, node)
            continue
        sub_nodes, sub_edges = _flatten(node.nodes, node.edges)
        ins = [k for k, v in sub_nodes.items() if isinstance(v, nir.Input)]
        outs = [k for k, v in sub_nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(
                f"NIR node {name!r} is a nested NIRGraph with {len(ins)} Input and "
                f"{len(outs)} Output nodes; one of each is needed to inline it."
            )
        if (ins[0], outs[0]) in [tuple(e) for e in sub_edges]:
            raise ValueError(
                f"NIR node {name!r} is a nested NIRGraph whose Input {ins[0]!r} "
                f"connects straight to its Output {outs[0]!r}; snode_jax imports a "
                "chain of populations, and does not inline a subgraph that passes "
                "its input through."
            )
        entries[name] = [f"{name}.{b}" for a, b in sub_edges if a == ins[0]]
        exits[name] = [f"{name}.{a}" for a, b in sub_edges if b == outs[0]]
        for k, v in sub_nodes.items():
            if k not in (ins[0], outs[0]):
                add(f"{name}.{k}", v, name)
        inner_edges += [
            (f"{name}.{a}", f"{name}.{b}")
            for a, b in sub_edges
            if a != ins[0] and b != outs[0]
        ]
    flat_edges = list(inner_edges)
    for a, b in edges:
        flat_edges += [(x, y) for x in exits.get(a, [a]) for y in entries.get(b, [b])]
    return flat, flat_edges


def _unsupported(name: str, node, why: str = "") -> ValueError:
    why = f" ({why})" if why else ""
    return ValueError(
        f"NIR node {name!r} is a {_type(node)}, which snode_jax cannot import{why}. "
        f"Supported nodes: {_SUPPORTED}."
    )


class _Stage:
    """One population of the chain and the nodes that feed it."""

    def __init__(self, population: str, weight: str | None, loop: list[str]):
        self.population = population
        self.weight = weight  # None: identity
        self.loop = loop  # the recurrent path back into the population


class _Graph:
    def __init__(self, graph):
        nir = _nir()
        self.nodes, edges = _flatten(graph.nodes, graph.edges)
        for a, b in edges:
            for end in (a, b):
                if end not in self.nodes:
                    raise ValueError(
                        f"NIR edge ({a!r}, {b!r}) names the node {end!r}, which the "
                        "graph does not have."
                    )
        if len(set(edges)) != len(edges):
            dup = sorted({e for e in edges if edges.count(e) > 1})
            raise ValueError(f"NIR graph has duplicate edges {dup}.")
        self.succ = {k: [b for a, b in edges if a == k] for k in self.nodes}
        self.pred = {k: [a for a, b in edges if b == k] for k in self.nodes}
        kinds = (nir.Input, nir.Output, nir.Linear, nir.Affine, nir.Delay)
        kinds += (nir.LIF, nir.CubaLIF, nir.IF, nir.LI, nir.CubaLI, nir.I)
        for name, node in self.nodes.items():
            if not isinstance(node, kinds):
                why = {
                    "Threshold": "a threshold without a membrane; spiking nodes here "
                    "are LIF, CubaLIF and IF",
                    "Scale": "fold the scale into the weight before exporting",
                }.get(_type(node), "")
                raise _unsupported(name, node, why)
        self.inputs = [k for k, v in self.nodes.items() if isinstance(v, nir.Input)]
        self.outputs = [k for k, v in self.nodes.items() if isinstance(v, nir.Output)]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError(
                "A NIR graph to import must have exactly one Input and one Output "
                f"node, got inputs {self.inputs} and outputs {self.outputs}."
            )

    def kind(self, name: str) -> str:
        return _type(self.nodes[name])

    def loop_back(self, population: str, first: str) -> list[str] | None:
        """The recurrent path `population -> first -> ... -> population` (one weight
        node and at most one Delay, each with one input and one output), else
        None."""
        path = self.cycle(population, first)
        if path is None or any(len(self.pred[k]) != 1 for k in path):
            return None
        kinds = [self.kind(k) for k in path]
        if any(k not in (*_WEIGHTS, "Delay") for k in kinds):
            return None
        if sum(k in _WEIGHTS for k in kinds) != 1 or kinds.count("Delay") > 1:
            return None
        return path

    def cycle(self, population: str, first: str) -> list[str] | None:
        """The nodes of a path `population -> first -> ... -> population` through
        nodes of one successor each (any kinds), else None."""
        path, name = [], first
        while name != population:
            if name in path or len(self.succ[name]) != 1:
                return None
            path.append(name)
            name = self.succ[name][0]
        return path

    def chain(self) -> list[_Stage]:
        stages: list[_Stage] = []
        current = self.inputs[0]
        seen = {current}
        while True:
            forward = [k for k in self.succ[current]]
            loop: list[str] = []
            if stages:
                loops = [
                    p for k in forward if (p := self.loop_back(current, k)) is not None
                ]
                if len(loops) > 1:
                    raise ValueError(
                        f"NIR node {current!r} has {len(loops)} recurrent loops; a "
                        "layer has at most one recurrent weight."
                    )
                if loops:
                    loop = loops[0]
                    forward = [k for k in forward if k != loop[0]]
                    stages[-1].loop = loop
                    seen.update(loop)
            for k in forward:
                if stages and (path := self.cycle(current, k)) is not None:
                    raise ValueError(
                        f"NIR node {current!r} ({self.kind(current)}) has a recurrent "
                        f"loop through {path} that snode_jax does not import: a "
                        "recurrent loop is the population -> one Linear or Affine "
                        "(-> at most one Delay) -> the same population."
                    )
            if len(forward) != 1:
                raise ValueError(
                    f"NIR node {current!r} ({self.kind(current)}) sends to "
                    f"{forward}; snode_jax imports a chain (Input -> weight -> "
                    "population -> ... -> Output, each population optionally with "
                    "one recurrent loop), without branches or skip connections."
                )
            (nxt,) = forward
            kind = self.kind(nxt)
            if kind == "Output":
                if not stages:
                    raise ValueError("The NIR graph has no neuron population.")
                if len(self.pred[nxt]) != 1:
                    raise ValueError(
                        f"The Output node {nxt!r} receives from {self.pred[nxt]}; "
                        "it must receive from the last population only."
                    )
                seen.add(nxt)
                break
            if self.kind(current) in _READOUT:
                raise ValueError(
                    f"NIR node {current!r} ({self.kind(current)}) does not spike: a "
                    "non-spiking population can only be the last one before Output."
                )
            weight = None
            if kind in _WEIGHTS:
                weight = nxt
                self._single_input(weight, [current])
                after = self.succ[weight]
                if len(after) != 1 or self.kind(after[0]) not in _SPIKING + _READOUT:
                    targets = [(k, self.kind(k)) for k in after]
                    raise ValueError(
                        f"NIR node {weight!r} ({kind}) must feed one population "
                        f"(LIF, CubaLIF, IF, LI, CubaLI, I), got {targets}."
                    )
                seen.add(weight)
                nxt = after[0]
            elif kind not in _SPIKING + _READOUT:
                why = (
                    "a Delay is imported only inside a recurrent loop"
                    if kind == "Delay"
                    else ""
                )
                raise _unsupported(nxt, self.nodes[nxt], why)
            if nxt in seen:
                raise ValueError(f"NIR node {nxt!r} is reached twice along the chain.")
            seen.add(nxt)
            stages.append(_Stage(nxt, weight, []))
            current = nxt
        # Every population's inputs: the feed-forward one and its loop.
        for i, stage in enumerate(stages):
            feed = stage.weight or (stages[i - 1].population if i else self.inputs[0])
            expected = [feed] + stage.loop[-1:]
            self._single_input(stage.population, expected)
        left = [k for k in self.nodes if k not in seen]
        if left:
            k = left[0]
            raise ValueError(
                f"NIR node {k!r} ({self.kind(k)}) is not on the chain from the Input "
                "to the Output (or is a loop snode_jax does not import: a recurrent "
                "loop is population -> Linear/Affine (-> Delay) -> the same "
                "population)."
            )
        return stages

    def _single_input(self, name: str, expected: list[str]) -> None:
        if sorted(self.pred[name]) != sorted(expected):
            raise ValueError(
                f"NIR node {name!r} ({self.kind(name)}) receives from "
                f"{self.pred[name]}; expected {expected} (snode_jax imports a chain "
                "with optional recurrent loops)."
            )


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
