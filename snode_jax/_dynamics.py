"""Neuron dynamics: the abstract interfaces every model implements."""

import abc
import dataclasses
from typing import ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._checks import check_real_number
from ._custom_types import NeuronBool, NeuronFloat, State


class AbstractDynamics(eqx.Module):
    """The interface every neuron model implements.

    A model is a vector field for the membrane state between spikes, a threshold
    function whose upward zero crossing is a spike, and a reset map applied at that
    instant; the Runge-Kutta solvers (and their gradients) need nothing else.
    Parameters are array fields (trainable). Those named in `parameter_names` are
    per-neuron parameters: each a scalar or one value per neuron, and the library
    splits, batches and compacts them along the neuron axis; any other array field
    is shared by the whole population as it is. A shared array that happens to
    have one entry per neuron (shape `(n_neurons,)`) must be named in
    `shared_parameter_names`: otherwise it is refused, as the likelier mistake is a
    per-neuron parameter left out of `parameter_names` (which the crossing search,
    on subsets of the neurons, would pair with other neurons' values).

    The current `current` seen by every method is the layer's input current,
    `weight @ x_k`, held constant over the interval.

    Models whose flow is known in closed form subclass
    [`AbstractExactFlowDynamics`][] instead, and those whose spikes are too
    [`AbstractClosedFormDynamics`][].
    """

    parameter_names: ClassVar[tuple[str, ...]] = ()
    shared_parameter_names: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def init_state(self, n_neurons: int, dtype) -> State:
        """The resting state of `n_neurons` neurons."""

    @abc.abstractmethod
    def vector_field(
        self, t: Float[Array, ""], y: State, current: NeuronFloat
    ) -> State:
        """Time derivative of the state (per ms)."""

    @abc.abstractmethod
    def threshold(self, y: State) -> NeuronFloat:
        """A spike happens when this crosses zero from below."""

    @abc.abstractmethod
    def reset(self, y: State) -> State:
        """The state just after a spike, given the state at the crossing."""

    @abc.abstractmethod
    def voltage(self, y: State) -> NeuronFloat:
        """The membrane voltage in the state `y`."""

    @abc.abstractmethod
    def constraints(self, y: State) -> dict[str, Bool[Array, ""]]:
        """Traced checks of the parameters and of the state `y`: each entry maps a
        condition, written for the user (such as `"tau_mem > 0"`), to whether it
        holds. A run whose condition fails reports `RESULTS.invalid_parameters`,
        and with `throw=True` raises an error that names the condition."""

    def check_solver(self, solver) -> None:
        """Raise `ValueError` if the model cannot be integrated with `solver`
        (every solver works unless a model says otherwise)."""
        del solver

    def astype(self, dtype) -> Self:
        """A copy with every parameter cast to `dtype`, as an array: a number
        swapped in with `eqx.tree_at` (which skips the model's own checks) too;
        `TypeError` for one that is not a real number (a Python bool, a string;
        a boolean array, such as a mask, is read as 0 and 1)."""

        def cast(path, p):
            # (A boolean array, a mask: 0 and 1, as ever; one boolean is refused.)
            if hasattr(p, "dtype") and p.dtype == bool and jnp.ndim(p) >= 1:
                return jnp.asarray(p, dtype)
            name = getattr(path[0], "name", "a leaf") if path else "a leaf"
            check_real_number(f"{name}` of `{type(self).__name__}", p, unit="")
            if not hasattr(p, "dtype"):  # (a Python number, a fraction)
                p = float(p)
            return jnp.asarray(p, dtype)

        return jax.tree_util.tree_map_with_path(cast, self)

    def per_neuron_mask(self) -> PyTree[bool]:
        """The model's structure with `True` at the leaves of the per-neuron
        parameters (`parameter_names`) and `False` elsewhere."""
        names = set(self.parameter_names)

        def is_per_neuron(path, _):
            return isinstance(path[0], jax.tree_util.GetAttrKey) and (
                path[0].name in names
            )

        return jax.tree_util.tree_map_with_path(is_per_neuron, self)

    def check_n_neurons(self, n_neurons: int) -> None:
        """Raise `ValueError` unless every parameter named in `parameter_names` is a
        scalar or has one entry per neuron, and no other array field has one entry
        per neuron unless `shared_parameter_names` names it (the library takes
        subsets of neurons with their per-neuron parameters only: a per-neuron
        field left out would pair neurons with other neurons' values)."""
        named = set(self.parameter_names) | set(self.shared_parameter_names)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name, None)
            if (
                field.name not in named
                and n_neurons > 1
                and isinstance(value, (jax.Array, np.ndarray))
                and value.shape == (n_neurons,)
            ):
                raise ValueError(
                    f"`{field.name}` of {type(self).__name__} has one value per "
                    f"neuron, shape ({n_neurons},), but is not in its "
                    "`parameter_names`: name it there if it is a per-neuron "
                    "parameter, or in `shared_parameter_names` if the whole array "
                    "acts on every neuron."
                )
        for name in self.parameter_names:
            if getattr(self, name) is None:
                continue
            shape = jnp.shape(getattr(self, name))
            if shape not in ((), (n_neurons,)):
                raise ValueError(
                    f"`{name}` must be a scalar or have shape ({n_neurons},) (one per "
                    f"neuron), got shape {shape}."
                )

    def parameters(self) -> PyTree[Array]:
        """The trainable parameters (used for the finiteness check)."""
        return eqx.filter(self, eqx.is_array)


class AbstractExactFlowDynamics(AbstractDynamics):
    """A model whose flow under constant input is known in closed form. It can run
    on the [`Exact`][] solver: steps span the whole interval, and crossings are
    located on the exact flow. It also takes spike-train inputs ([`SpikeTrain`][])
    and recurrent connections: the event-driven engine advances every neuron from
    one event to the next with `exact_flow` and applies each input spike with
    `jump`.
    """

    @abc.abstractmethod
    def jump(self, y: State, amount: NeuronFloat) -> State:
        """The state just after input spikes of total weight `amount` (one per
        neuron) arrive: added to the membrane (a delta synapse) or to a synaptic
        current (an exponential synapse)."""

    @abc.abstractmethod
    def exact_flow(self, y: State, current: NeuronFloat, h: NeuronFloat) -> State:
        """The state after time `h` (ms) with constant `current` and no spike."""

    @abc.abstractmethod
    def peak_in_step(
        self, y: State, current: NeuronFloat, h: NeuronFloat
    ) -> tuple[NeuronFloat, NeuronBool]:
        """`(t_peak, has_peak)`: the time (ms from the step start) of an interior
        maximum of the threshold function in `(0, h)`, and whether there is one, so
        that a crossing that goes up and back down within a step is not missed. A
        monotone flow (the LIF) has none."""


class AbstractClosedFormDynamics(AbstractExactFlowDynamics):
    """Dynamics whose spikes within an interval of constant input have closed form.

    The solver walks through the events of one interval with these methods, so
    that deciding whether another spike happens costs no transcendental function:

    - `max_event_span()`: the longest span the closed form may cover in one go;
    - `interval_constants(interval)`: quantities fixed for the whole simulation;
    - `interval_start(y, current, constants)`: the event state at the interval start;
    - `crossing_pending(ev)`: whether the next crossing happens before the end;
    - `fire(ev, mask)`: move past that crossing and reset, where `mask` holds;
    - `interval_end(ev)`: the state at the interval end;
    - `next_piece(ev, current, constants)` (optional): the event state at the start
      of a long interval's next piece.

    Spike times and gradients use `replay_interval`: given how many spikes the
    interval holds (counted by the walk), it writes the interval out in closed form,
    differentiably. The class is for one-dimensional models with a fixed reset,
    whose spikes under constant input are periodic after the first one.
    """

    @abc.abstractmethod
    def max_event_span(self) -> Float[Array, ""]:
        """The longest span (ms) the closed form may cover in one go; longer
        intervals are walked in equal pieces no longer than this."""

    @abc.abstractmethod
    def interval_constants(self, interval: Float[Array, ""]) -> PyTree[Array]: ...

    @abc.abstractmethod
    def interval_start(
        self, y: State, current: NeuronFloat, constants: PyTree[Array]
    ) -> PyTree[Array]: ...

    @abc.abstractmethod
    def crossing_pending(self, ev: PyTree[Array]) -> NeuronBool: ...

    @abc.abstractmethod
    def fire(self, ev: PyTree[Array], mask: NeuronBool) -> PyTree[Array]: ...

    @abc.abstractmethod
    def interval_end(self, ev: PyTree[Array]) -> State: ...

    def next_piece(
        self, ev: PyTree[Array], current: NeuronFloat, constants: PyTree[Array]
    ) -> PyTree[Array]:
        """The event state at the start of an interval's next piece (see
        `max_event_span`), from `ev` at the end of this one. By default the state
        at the end, started again: `interval_start(interval_end(ev), current,
        constants)`."""
        return self.interval_start(self.interval_end(ev), current, constants)

    @abc.abstractmethod
    def count_uncertain(self, ev: PyTree[Array], count) -> NeuronBool:
        """Whether the rounding of the walk (which accumulates over the `count`
        spikes of the interval, all its pieces included) may have changed the
        count."""

    @abc.abstractmethod
    def replay_interval(
        self, y: State, current: NeuronFloat, interval, count
    ) -> "IntervalReplay":
        """The interval written out in closed form with `count` spikes per neuron.
        Each neuron's entries depend on that neuron's state alone (the derivatives
        in the start state are taken for all neurons at once, one state leaf at a
        time)."""


class IntervalReplay(eqx.Module):
    """One interval in closed form, with its spike count held fixed.

    **Fields:** (one entry per neuron; entries that do not apply are finite dummies)

    - `y_end`: the state at the interval end.
    - `first`: time (ms from the interval start) of the first spike (`count >= 1`).
    - `period`: time between consecutive spikes (`count >= 2`); spike `m` (from 0)
        is at `first + m * period`.
    - `last_margin`: threshold function at the interval end had the last spike not
        reset the neuron (`>= 0`; `count >= 1`).
    - `next_margin`: threshold function at the interval end (`< 0`).
    """

    y_end: State
    first: NeuronFloat
    period: NeuronFloat
    last_margin: NeuronFloat
    next_margin: NeuronFloat


_CHECKED_OUTPUTS: set = set()


def _broadcasts(shape, to) -> bool:
    try:
        return np.broadcast_shapes(shape, to) == to
    except ValueError:
        return False


def check_model_outputs(dynamics: AbstractDynamics, state: State) -> None:
    """Refuse, naming the method, a model whose `vector_field` or `reset` (and, with
    an exact flow, `exact_flow` or `jump`) does not return a state of the structure
    and shapes of `state` (one value per neuron in each array), whose `threshold`
    does not return one value per neuron, or whose `peak_in_step` does not return
    two (the peak's time and whether there is one). Only shapes are traced
    (`jax.eval_shape`), once per model structure and state shape: such a mistake
    otherwise failed deep inside the solver, in a JAX error that named neither the
    method nor the rule."""
    leaves = jax.tree.leaves(state)
    signature = lambda a: (np.shape(a), str(getattr(a, "dtype", type(a).__name__)))
    key = (
        jax.tree.structure(dynamics),
        tuple(map(signature, jax.tree.leaves(dynamics))),
        jax.tree.structure(state),
        tuple(map(signature, leaves)),
    )
    if key in _CHECKED_OUTPUTS:
        return
    name = type(dynamics).__name__
    n = jnp.shape(leaves[0])[0]
    dtype = jnp.result_type(leaves[0])
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), a.dtype), state)
    t = jax.ShapeDtypeStruct((), dtype)
    per_neuron = jax.ShapeDtypeStruct((n,), dtype)
    want = jax.tree.structure(spec)
    try:
        outputs = [
            (
                "vector_field",
                jax.eval_shape(dynamics.vector_field, t, spec, per_neuron),
            ),
            ("reset", jax.eval_shape(dynamics.reset, spec)),
        ]
        out = jax.eval_shape(dynamics.threshold, spec)
    except Exception:
        # (A model that cannot be traced yet, e.g. with a parameter that is not a
        # number: the run's own checks name that.)
        return
    peak = None
    if isinstance(dynamics, AbstractExactFlowDynamics):
        # (Each on its own: a method a model leaves out, e.g. `jump` of a model
        # meant for dense inputs only, fails where it is used.)
        flow_args = {
            "exact_flow": (spec, per_neuron, per_neuron),
            "jump": (spec, per_neuron),
        }
        for method, args in flow_args.items():
            try:
                outputs.append(
                    (method, jax.eval_shape(getattr(dynamics, method), *args))
                )
            except Exception:
                pass
        try:
            peak = jax.eval_shape(dynamics.peak_in_step, spec, per_neuron, per_neuron)
        except Exception:
            pass
    for method, got_tree in outputs:
        if jax.tree.structure(got_tree) != want:
            kind = type(spec).__name__
            got = type(got_tree).__name__
            if got == kind:  # (the same class with other fields set)
                got = (
                    f"one of another structure: {jax.tree.structure(got_tree)}, "
                    f"not {want}"
                )
            raise TypeError(
                f"`{name}.{method}` must return a {kind}, as `init_state` does, "
                f"got {got}."
            )
        for got, expected in zip(jax.tree.leaves(got_tree), jax.tree.leaves(spec)):
            if got.shape != expected.shape:
                raise ValueError(
                    f"`{name}.{method}` must return arrays of `init_state`'s shapes "
                    f"(one value per neuron, ({n},)), got shape {got.shape}."
                )
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (n,):
        got = out.shape if isinstance(out, jax.ShapeDtypeStruct) else out
        raise ValueError(
            f"`{name}.threshold` must return one array of shape (n_neurons,) = "
            f"({n},) (a spike is its upward zero crossing, per neuron), got {got}."
        )
    if peak is not None:
        # (Shapes that broadcast to one per neuron, `False` for a monotone flow.)
        pair = isinstance(peak, (tuple, list)) and len(peak) == 2
        pair = pair and all(isinstance(p, jax.ShapeDtypeStruct) for p in peak)
        shapes = [p.shape for p in peak] if pair else []
        fits = pair and all(_broadcasts(shape, (n,)) for shape in shapes)
        if not fits or peak[1].dtype != jnp.bool_:
            shown = shapes if pair else jax.tree.structure(peak)
            raise ValueError(
                f"`{name}.peak_in_step` must return `(t_peak, has_peak)`, two arrays "
                f"of shape ({n},) (or that broadcast to it), the second boolean, got "
                f"{shown}"
                f"{'' if not pair else f' of dtypes {[str(p.dtype) for p in peak]}'}."
            )
    _CHECKED_OUTPUTS.add(key)
