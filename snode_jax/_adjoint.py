"""How a run is differentiated: the adjoint interface, and the closed-form adjoint
(the closed form replayed with the spike counts held fixed, its tangents in
`_tangents.py`; the adaptive loop's rerun is in `_rerun_adjoint.py`)."""

import abc
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_positive_int
from ._closed_form import ClosedFormWalk
from ._dynamics import AbstractClosedFormDynamics
from ._fold import run_folded
from ._records import Counters, RawRun
from ._scan import AbstractIntegrator, RunConfig
from ._surrogate import AbstractSurrogate
from ._tangent_primitive import closed_form_tangents


class AbstractAdjoint(eqx.Module):
    """Runs the interval scan with a derivative rule attached."""

    @abc.abstractmethod
    def run(
        self,
        integrator: AbstractIntegrator,
        dynamics,
        currents,
        interval,
        state,
        cfg: RunConfig,
        surrogate: AbstractSurrogate,
    ) -> RawRun:
        """The forward values of [`run_folded`][], differentiable."""


# -- closed form -------------------------------------------------------------------


@eqx.filter_custom_jvp
def _closed_form_run(
    dynamics, currents, interval, state, *, walk, cfg, surrogate, chunk
):
    del surrogate, chunk
    return run_folded(walk, dynamics, currents, interval, state, cfg)


@_closed_form_run.def_jvp
def _closed_form_run_jvp(primals, tangents, *, walk, cfg, surrogate, chunk):
    # The forward values come from the event walk; the tangents from the closed form
    # with the spike structure held fixed (the implicit-function derivative of every
    # crossing time, through every reset), linearised at the walk's interval states.
    dynamics, currents, interval, state = primals
    keep = dataclasses.replace(cfg, keep_interval_states=True)
    raw = _closed_form_run(
        *primals, walk=walk, cfg=keep, surrogate=surrogate, chunk=chunk
    )
    # Not cut from the primals: the starts are differentiable through this rule
    # itself, so that the tangents can be differentiated again (second order).
    ends = raw.interval_states
    num_intervals = currents.shape[0]
    starts = jax.tree.map(
        lambda s, e: jnp.concatenate([s[None], e])[:num_intervals], state, ends
    )
    if not cfg.keep_interval_states:
        raw = eqx.tree_at(
            lambda r: r.interval_states, raw, None, is_leaf=lambda x: x is None
        )
    counts = jax.lax.stop_gradient(raw.counts).astype(jnp.int32)
    tangents = jax.tree.map(
        lambda t, p: jnp.zeros_like(p) if t is None and p is not None else t,
        tangents,
        primals,
        is_leaf=lambda x: x is None,
    )
    t_counts, t_times, t_final, t_states = closed_form_tangents(
        dynamics,
        currents,
        interval,
        tangents,
        starts,
        counts,
        raw.num_spikes,
        cfg,
        surrogate,
        chunk,
    )
    no_tangent = Counters(None, None)  # pyright: ignore[reportArgumentType]
    t_raw = RawRun(t_counts, t_times, None, t_final, t_states, no_tangent, None, None)  # pyright: ignore[reportArgumentType]
    return raw, t_raw


class ClosedFormAdjoint(AbstractAdjoint):
    """Forward and reverse mode for the closed-form walk: the tangents come from
    the model's `replay_interval` with each interval's spike count held at its
    forward value; counts get the surrogate derivative of the margins of their two
    threshold decisions.

    **Arguments:**

    - `chunk_intervals`: how many intervals the derivatives are taken for at once
        (reverse mode keeps one chunk's temporaries at a time and recomputes each
        chunk's closed form). Default `None`: 128, fewer for layers of over 256
        neurons in float64 (512 in float32; about 256 KiB per array of a chunk,
        at least 1 interval). Under `jax.vmap` the batch is folded into the
        neuron axis, and a chunk holds that many intervals of every sample (by
        default, sized for all of the batch's neurons). Any positive integer
        gives the same derivatives, to rounding.
    """

    chunk_intervals: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.chunk_intervals is not None:
            check_positive_int("chunk_intervals", self.chunk_intervals)

    def run(self, integrator, dynamics, currents, interval, state, cfg, surrogate):
        assert isinstance(integrator, ClosedFormWalk)
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        return _closed_form_run(
            dynamics,
            currents,
            interval,
            state,
            walk=integrator,
            cfg=cfg,
            surrogate=surrogate,
            chunk=self.chunk_intervals,
        )
