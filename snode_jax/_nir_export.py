"""Export to NIR ([`to_nir`][]; the mapping is in `snode_jax.nir`'s docstring)."""

from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import check_positive_float, describe
from ._cuba import CubaLIFDynamics
from ._if import IFDynamics
from ._layer import SpikingODELayer
from ._lif import ODELIFDynamics
from ._network import LeakyReadout, SpikingODENetwork
from ._nir_common import _f64, _nir

if TYPE_CHECKING:
    import nir as nir_types


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
