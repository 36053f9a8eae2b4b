"""A stateful, step-by-step runner around a layer."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Counts, State
from ._layer import SpikingODELayer
from ._misc import check_interval


@eqx.filter_jit
def _online_step(layer, state, x, interval):
    # Module level: one compilation per layer structure, shared by every runner.
    return layer.step(state, x, interval)


class OnlineLayer:
    """Stateful, step-by-step runner around a [`SpikingODELayer`][].

    The step is compiled once per layer structure (on first use, shared by all
    runners) and reused, so each call is cheap.

    ```python
    online = OnlineLayer(layer)
    online.reset()
    counts = online.step(x, interval=1.0)
    online.voltage
    ```
    """

    def __init__(self, layer: SpikingODELayer):
        if not isinstance(layer, SpikingODELayer):
            raise TypeError(
                f"`layer` must be a SpikingODELayer, got {type(layer).__name__}."
            )
        self.layer = layer
        self.state = layer.init_state()

    def reset(self, state: State | None = None) -> None:
        """Return to the resting state (or to `state`)."""
        self.state = self.layer.init_state() if state is None else state

    def step(self, x, interval: float = 1.0) -> Counts:
        """Advance one interval with constant input `x`; returns the counts."""
        check_interval(interval)  # here: inside the compiled step it is traced
        x = jnp.asarray(x)  # its shape is checked by `layer.step` while tracing
        dt = jnp.asarray(interval, self.layer.dtype)
        self.state, counts = _online_step(self.layer, self.state, x, dt)
        return counts

    @property
    def voltage(self) -> Float[Array, " n_neurons"]:
        """Membrane voltage of every neuron now."""
        return self.layer.dynamics.voltage(self.state)
