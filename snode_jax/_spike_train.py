"""`SpikeTrain`: spikes as events, the input and output of event-driven layers."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ._checks import as_jax_array, beyond, check_real_number, describe
from ._dynamics import AbstractExactFlowDynamics
from ._lif import ODELIFDynamics
from ._misc import is_concrete


class SpikeTrain(eqx.Module):
    """Spikes from a population of sources, as a list of events.

    Event `e` is a spike of source `sources[e]` at time `times[e]` (ms). Events may
    come in any order; entries with time `+inf` are padding (their source is
    ignored), so that trains with different numbers of spikes share one shape and
    can be batched with `jax.vmap` (give arrays with a leading batch axis).

    **Arguments:**

    - `times`: spike times in ms, shape `(..., num_events)`, `>= 0` or `+inf`.
    - `sources`: the spiking source (an input index of the receiving layer) of each
        event, integers of the same shape.

    **Raises:**

    `TypeError` for sources that are not integers or times that are bools;
    `ValueError` for shapes that differ, a zero-dimensional array, or (for concrete
    values) NaN, `-inf` or negative times. Whether the sources fit the receiving
    layer, and the times its simulated span, is checked by the layer.
    """

    times: Float[Array, "*batch events"]
    sources: Int[Array, "*batch events"]

    def __init__(self, times: Float[ArrayLike, "..."], sources: Int[ArrayLike, "..."]):
        times = as_jax_array("times", times)
        if times.dtype == bool:  # (`True` would be a spike at 1 ms)
            raise TypeError(
                "`times` must be numbers (ms), got dtype bool: "
                f"{describe(times) if is_concrete(times) else 'traced'}."
            )
        if not jnp.issubdtype(times.dtype, jnp.floating):
            times = times.astype(jnp.result_type(float))
        sources = as_jax_array("sources", sources)
        if sources.size == 0:  # `[]` is a float array; an empty train is fine
            sources = sources.astype(jnp.int32)
        if not jnp.issubdtype(sources.dtype, jnp.integer):
            raise TypeError(
                f"`sources` must be integers (input indices), got dtype {sources.dtype}."
            )
        sources = widened_sources(sources)
        if times.ndim < 1 or sources.ndim < 1:
            raise ValueError(
                "`times` and `sources` must be arrays of shape (..., num_events), "
                f"got shapes {times.shape} and {sources.shape} (one spike is "
                "`SpikeTrain([t], [source])`)."
            )
        if times.shape != sources.shape:
            raise ValueError(
                "`times` and `sources` must have the same shape (..., num_events), got "
                f"{times.shape} and {sources.shape}."
            )
        if is_concrete(times):
            t = np.asarray(times)
            bad = np.isnan(t) | (t < 0)
            if np.any(bad):
                raise ValueError(
                    "`times` must be >= 0 (ms), or +inf for padding; got "
                    f"{describe(t[bad])} at positions {np.argwhere(bad)[:5].tolist()}."
                )
        self.times = times
        self.sources = sources

    @property
    def num_events(self) -> int:
        """The length of the event axis (padding included)."""
        return self.times.shape[-1]


def widened_sources(sources):
    """Integer `sources` of fewer than 32 bits as int32 (the same values): compared
    with a layer's input count in their own type, that count would wrap around
    (300 is 44 in uint8) and valid sources would be refused."""
    if jnp.iinfo(sources.dtype).bits < 32:
        return sources.astype(jnp.int32)
    return sources


def check_event_dynamics(dynamics, what: str) -> AbstractExactFlowDynamics:
    """The model, if the event-driven engine can run it; else `ValueError`."""
    if not isinstance(dynamics, AbstractExactFlowDynamics):
        raise ValueError(
            f"{what} run on the event-driven engine, which needs a model with an "
            "exact flow (an AbstractExactFlowDynamics: ODELIFDynamics, "
            f"CubaLIFDynamics, IFDynamics), got {type(dynamics).__name__}."
        )
    if isinstance(dynamics, ODELIFDynamics) and dynamics.t_ref is not None:
        raise ValueError(
            f"{what} run on the event-driven engine, which does not model the "
            "refractory period of ODELIFDynamics: give `t_ref=None`."
        )
    return dynamics


def check_spike_train(
    spikes: SpikeTrain, n_inputs: int, t_end, name: str = "inputs", dtype=None
) -> None:
    """Python errors for what can be seen now: shapes, and concrete values (the
    train is the argument `name`; `t_end` must be finite in `dtype`, the run's,
    where given)."""
    if not isinstance(spikes, SpikeTrain):
        raise TypeError(f"`{name}` must be a SpikeTrain, got {type(spikes).__name__}.")
    if spikes.times.ndim != 1:
        raise ValueError(
            f"`{name}` must be one SpikeTrain with 1-D `times` and `sources`, got "
            f"shape {spikes.times.shape}. For a batch, use jax.vmap over the leading "
            "axis."
        )
    check_real_number("t_end", t_end)
    if jnp.shape(t_end) != ():
        raise ValueError(
            f"`t_end` must be a scalar (ms), got shape {jnp.shape(t_end)}."
        )
    if is_concrete(t_end):
        value = float(t_end)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"`t_end` must be finite and > 0 (ms), got {t_end!r}.")
        if dtype is not None and beyond(value, dtype):
            raise ValueError(
                f"`t_end` must be finite in the run's dtype {jnp.dtype(dtype).name} "
                f"(at most {float(jnp.finfo(dtype).max)!r} ms), got {t_end!r}."
            )
        if dtype is not None and np.asarray(value).astype(dtype) == 0:
            raise ValueError(
                f"`t_end` must be > 0 in the run's dtype {jnp.dtype(dtype).name}, "
                f"where {t_end!r} rounds to 0 (ms)."
            )
    if is_concrete((spikes, t_end)):
        times = np.asarray(spikes.times)
        sources = np.asarray(widened_sources(spikes.sources))
        # Compared in the run's dtype, as a traced train is (under `jax.jit`): a
        # time that rounds to `t_end` there is at the end, not past it.
        run_dtype = times.dtype if dtype is None else np.dtype(dtype)
        with np.errstate(over="ignore"):  # (a time beyond the dtype is late)
            late = np.isfinite(times) & (
                times.astype(run_dtype) > np.asarray(t_end).astype(run_dtype)
            )
        if np.any(late):
            raise ValueError(
                f"Input spike `times` must be <= t_end = {float(t_end)!r} (ms) or "
                f"+inf (padding), got {describe(times[late])}."
            )
        real = np.isfinite(times)
        bad = real & ((sources < 0) | (sources >= n_inputs))
        if np.any(bad):
            raise ValueError(
                f"Input spike `sources` must be input indices in [0, {n_inputs}), got "
                f"{describe(sources[bad])}."
            )
