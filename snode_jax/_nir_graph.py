"""Reading a NIR graph's structure for import: nested graphs inlined, then the
chain of populations (and their recurrent loops) checked and walked in order."""

from collections.abc import Sequence
from typing import Any

from ._nir_common import _READOUT, _SPIKING, _SUPPORTED, _WEIGHTS, _nir


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
        try:
            sub_nodes, sub_edges = _flatten(node.nodes, node.edges)
        except ValueError as e:  # (named within the subgraph: say which one)
            raise ValueError(
                f"In the nested graph {name!r} (its nodes become `{name}.node`): {e}"
            ) from None
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
