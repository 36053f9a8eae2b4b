"""A stateful, step-by-step runner around a layer."""

import functools
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._checks import check_finite, check_fits, check_interval, is_number_dtype
from ._custom_types import Counts, State
from ._layer import SpikingODELayer
from ._misc import is_concrete
from ._solution import RESULTS


@eqx.filter_jit
def _reporting_step(layer, state, x, interval):
    # Reruns a step that failed, with `throw=True`, to raise its error (naming the
    # failed condition or the RESULTS item) as cleanly as any other entry point.
    return layer.step(state, x, interval)


# jax's PyTreeDef is bound as a variable, which type checkers refuse as a type.
_TreeDef: TypeAlias = Any
_StepLeaves = tuple[Array, ...]
_CompiledStep = Callable[
    [list[Array], _StepLeaves, Array | np.ndarray, Array],
    tuple[_StepLeaves, Counts, Bool[Array, ""]],
]


@functools.lru_cache(maxsize=32)
def _compiled_step(
    array_def: _TreeDef,
    static: SpikingODELayer,
    state_def: _TreeDef,
) -> _CompiledStep:
    """The jitted step for one layer structure: a pure function of the layer's array
    leaves, the state's leaves, `x` and the interval, everything else closed over.

    Cached per structure, so runners of layers that differ only in their arrays
    (a layer and its trained version) share one compilation.
    """

    # The step runs with `throw=False` and returns whether it succeeded; a failed
    # step is rerun by `_reporting_step` to raise. (An error check inside a plain
    # `jax.jit` arrives as an opaque runtime error; `eqx.filter_jit`, which raises
    # it cleanly, partitions and hashes the whole layer on every call, which was
    # most of the cost of a step: bench/RESULTS.md.) The state is not donated:
    # its buffers are small, and `state` hands them out to the caller.
    def online_step(arrays, state_leaves, x, interval):
        layer = eqx.combine(jax.tree.unflatten(array_def, arrays), static)
        state = jax.tree.unflatten(state_def, state_leaves)
        sol = layer._run(x[None], interval, state, None, throw=False, keep=False)
        ok = sol.result == RESULTS.successful
        return tuple(jax.tree.leaves(sol.final_state)), sol.counts[0], ok

    return jax.jit(online_step)


class OnlineLayer:
    """Stateful, step-by-step runner around a [`SpikingODELayer`][].

    The step is compiled once per layer structure (on first use, shared by all
    runners of layers that differ only in their arrays) and reused. Each call does
    only what must happen per call: a shape check of `x`, a check of `interval`
    (skipped when it is the same Python float as the previous call's), and one
    call of the compiled step on the flat arrays of the layer and the state, which
    are flattened once (when the runner is built, `layer` is set or `reset` runs).

    ```python
    online = OnlineLayer(layer)
    online.reset()
    counts = online.step(x, interval=1.0)
    online.voltage
    ```

    **Arguments:**

    - `layer`: a feed-forward [`SpikingODELayer`][] (a recurrent layer's spikes in
        flight are not part of its state: use `simulate`).

    **Raises:**

    `TypeError` if `layer` is not a feed-forward `SpikingODELayer`.
    """

    def __init__(self, layer: SpikingODELayer):
        self.layer = layer
        self.reset()

    @property
    def layer(self) -> SpikingODELayer:
        """The layer being run. Setting it (e.g. to a trained version) keeps the
        state, which must fit the new layer."""
        return self._layer

    @layer.setter
    def layer(self, layer: SpikingODELayer) -> None:
        if not isinstance(layer, SpikingODELayer):
            raise TypeError(
                f"`layer` must be a SpikingODELayer, got {type(layer).__name__}."
            )
        if layer.recurrent_weight is not None:
            raise TypeError(
                "`OnlineLayer` steps a feed-forward layer; a recurrent layer's spikes "
                "in flight are not part of its state: use `simulate`."
            )
        # Its arrays (one swapped in with `eqx.tree_at` is not checked by the
        # layer's `__init__`): an int32 weight failed in the interval's check.
        layer._check_arrays()
        state = self.state if hasattr(self, "_state_leaves") else None
        if state is not None:
            layer._check_state(state)  # the current state must fit the new layer
        arrays, static = eqx.partition(layer, eqx.is_array)
        array_leaves, array_def = jax.tree.flatten(arrays)
        state_def = jax.tree.structure(layer.init_state())
        self._layer = layer
        self._arrays = array_leaves
        self._compiled = _compiled_step(array_def, static, state_def)
        self._state_def = state_def
        self._input_shape = (layer.n_inputs,)
        self._dtype = np.dtype(layer.dtype)
        self._last_interval = math.nan  # the last Python-float interval checked
        self._last_interval_array = None
        if state is not None:
            self.state = state  # in the new layer's dtype

    @property
    def state(self) -> State:
        """The current state of the neurons (as from `layer.init_state()`)."""
        return jax.tree.unflatten(self._state_def, self._state_leaves)

    @state.setter
    def state(self, state: State) -> None:
        state = self._layer._check_state(state)
        # Cast once here rather than in every step: the compiled step would cast
        # to the layer's dtype anyway (the same rounding), and a state of another
        # dtype would otherwise cost a second compilation.
        self._state_leaves = tuple(
            jnp.asarray(leaf, self._dtype) for leaf in jax.tree.leaves(state)
        )

    def reset(self, state: State | None = None) -> None:
        """Return to the resting state (or to `state`).

        **Raises:**

        `ValueError` if `state` is not a state of the layer's model with one
        finite value per neuron.
        """
        self.state = self._layer.init_state() if state is None else state

    def step(
        self,
        x: Float[ArrayLike, " n_inputs"],
        interval: float | Float[ArrayLike, ""] = 1.0,
    ) -> Counts:
        """Advance one interval with constant input `x`.

        **Arguments:**

        - `x`: the input held over the interval, shape `(n_inputs,)`; cast to the
            layer's dtype.
        - `interval`: its length (ms), finite and `> 0`.

        **Returns:**

        The spike counts of the interval, shape `(n_neurons,)`, exact integers in
        the layer's dtype. The runner's `state` moves to the interval's end.

        **Raises:**

        `TypeError` under a JAX transformation (`jax.jit`, `lax.scan`, `vmap`,
        ...: the runner is stateful; use the pure [`SpikingODELayer.step`][]
        there); `ValueError` for a bad `interval` or shape of `x`, or an `x` that
        is not finite or beyond the layer's dtype (naming the entry); the runtime
        error of [`SpikingODELayer.step`][] (invalid parameters or initial state,
        an exhausted step budget, ...) if the interval failed, leaving the state
        where it was.
        """
        if not is_concrete((x, interval)):
            raise TypeError(
                "`OnlineLayer.step` runs eagerly: it keeps its state between calls, "
                "which a traced call (under `jax.jit`, `lax.scan`, `jax.vmap`, ...) "
                "cannot. Use the pure `layer.step(state, x, interval)` there, which "
                "returns the new state."
            )
        interval = self._interval_array(interval)
        given = x
        x = self._input_array(x)
        state_leaves, counts, ok = self._compiled(
            self._arrays, self._state_leaves, x, interval
        )
        if not np.asarray(ok):  # (the cheapest read measured; `bool(ok)`: +15 us)
            # An input that is not finite, or not in the layer's dtype, named by
            # its entry as the layer's eager checks do (the rerun traces `x`).
            check_finite("x", np.asarray(given))
            if isinstance(given, jax.Array):  # (NumPy's: checked when cast)
                check_fits("x", given, given.astype(self._dtype))
            # Rerun with the error raised (the failure is deterministic).
            _reporting_step(self._layer, self.state, x, interval)
            raise RuntimeError(
                "An `OnlineLayer` step failed, and rerunning it with `throw=True` did "
                "not reproduce the failure."
            )
        self._state_leaves = state_leaves
        return counts

    def _interval_array(self, interval) -> Array:
        # A Python float equal to the last one was checked and converted already
        # (NaN never compares equal, so it is always checked).
        if type(interval) is float and interval == self._last_interval:
            return self._last_interval_array  # pyright: ignore[reportReturnType]
        check_interval(interval, dtype=self._dtype)
        if isinstance(interval, jax.Array):
            array = interval.astype(self._dtype)  # (no-op if it has the dtype)
        else:  # cast on the host: no eager XLA operation
            array = jax.device_put(np.asarray(interval, self._dtype))
        if type(interval) is float:
            self._last_interval, self._last_interval_array = interval, array
        return array

    def _input_array(self, x) -> Array | np.ndarray:
        # Cast here (NumPy inputs on the host), with the rounding of the cast
        # inside the step, so that every input dtype meets the one compiled step.
        if not isinstance(x, jax.Array):
            x = np.asarray(x)
        if x.dtype != self._dtype:
            # (Not durations or dates: NumPy counts them as integers.)
            if not is_number_dtype(x.dtype):
                raise TypeError(f"`x` must be real numbers, got dtype {x.dtype}.")
            with np.errstate(over="ignore"):  # (found below, and refused)
                cast = x.astype(self._dtype)
            # (On the host only: a JAX array's cast stays on the device, and a
            # value beyond the dtype is reported by the step.)
            if isinstance(cast, np.ndarray) and not np.isfinite(cast).all():
                check_fits("x", x, cast)
            x = cast
        if x.shape != self._input_shape:
            raise ValueError(
                f"`x` must have shape (n_inputs,) = ({self._input_shape[0]},), got "
                f"{x.shape}."
            )
        return x

    @property
    def voltage(self) -> Float[Array, " n_neurons"]:
        """Membrane voltage of every neuron now."""
        return self._layer.dynamics.voltage(self.state)
