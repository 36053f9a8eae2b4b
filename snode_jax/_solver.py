"""Solvers: the exact flow of closed-form models, diffrax's solvers stepped per
neuron, and `adaptive_step`, which puts a solver and the step controller together.
(The Runge-Kutta pairs written out for speed are in `_runge_kutta.py`.)"""

import abc
import functools as ft

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._checks import describe
from ._controller import PredictiveController, PredictiveState
from ._custom_types import NeuronFloat, State
from ._dynamics import AbstractDynamics, AbstractExactFlowDynamics
from ._misc import is_concrete, where_tree


class Exact(eqx.Module):
    """Integrate with the model's closed form, as far as it goes: a model whose
    spikes have a closed form ([`AbstractClosedFormDynamics`][], the LIF) is walked
    from spike to spike without root finding; a model with only an exact flow
    ([`AbstractExactFlowDynamics`][], such as `CubaLIFDynamics`) takes steps that
    span the interval, and its crossings are located on the exact flow.
    """


class ExactFlow(eqx.Module):
    """Step with the model's exact flow and locate crossings with the root finder,
    even for a model whose spikes have a closed form (a cross-check of the event
    walk). Needs an [`AbstractExactFlowDynamics`][]."""


def lane_axes(dynamics: AbstractDynamics) -> PyTree[int | None]:
    """vmap axes of a model over its neurons: 0 for per-neuron parameters given one
    value per neuron, None for scalars and for parameters shared by the population."""
    return jax.tree.map(
        lambda p, per_neuron: 0 if per_neuron and jnp.ndim(p) >= 1 else None,
        dynamics,
        dynamics.per_neuron_mask(),
    )


class AbstractStepper(eqx.Module):
    """One step per neuron, each from its own `t0` to its own `t1` (ms)."""

    @abc.abstractmethod
    def step(
        self, dynamics: AbstractDynamics, t0, t1, y0: State, current
    ) -> tuple[State, State | None, PyTree[Array]]:
        """`(y1, y_error, dense)`: the state at `t1`, the error estimate (`None` for
        an exact step) and the step's dense output, a pytree whose every leaf has
        the neuron axis first (crossings are located on subsets of neurons)."""

    @abc.abstractmethod
    def evaluate(self, dynamics: AbstractDynamics, dense, s) -> State:
        """The dense output at times `s` (ms, per neuron, within the step)."""

    def end_directions(
        self, dynamics: AbstractDynamics, dense, t0, t1
    ) -> tuple[State, State]:
        """The time derivative of the dense output of a step from `t0` to `t1` at
        its start and at its end, each up to a positive factor per neuron (by
        default by forward-mode AD of `evaluate`)."""

        def direction(s):
            fn = lambda s: self.evaluate(dynamics, dense, s)
            return jax.jvp(fn, (s,), (jnp.ones_like(s),))[1]

        return direction(t0), direction(t1)

    @abc.abstractmethod
    def error_order(self) -> int | None:
        """The order of the error estimate (`None`: exact)."""


class ExactStepper(AbstractStepper):
    """Steps with the exact flow of an [`AbstractExactFlowDynamics`][]."""

    def step(self, dynamics, t0, t1, y0, current):
        assert isinstance(dynamics, AbstractExactFlowDynamics)
        return dynamics.exact_flow(y0, current, t1 - t0), None, (y0, current, t0)

    def evaluate(self, dynamics, dense, s):
        assert isinstance(dynamics, AbstractExactFlowDynamics)
        y0, current, t0 = dense
        return dynamics.exact_flow(y0, current, s - t0)

    def error_order(self):
        return None


def _vector_field(t, y, args):
    dynamics, current = args
    return dynamics.vector_field(t, y, current)


_TERM = diffrax.ODETerm(_vector_field)


# One neuron's diffrax step. Module-level and jitted, so that its trace is cached
# (by the solver, the model's static fields and the shapes): the loop's step, the
# crossing search's sub-steps and the backward pass's rerun trace the solver once
# between them, instead of once each (an implicit solver's step takes ~0.5 s to
# trace). Inside a jitted run it is inlined: the compiled program is the same.
@eqx.filter_jit
def _diffrax_step(solver, dyn, t0, t1, y0, cur):
    args = (dyn, cur)
    state = solver.init(_TERM, t0, t1, y0, args)
    y1, y_error, dense, _, result = solver.step(
        _TERM, t0, t1, y0, args, state, made_jump=False
    )
    # A failed implicit solve: an infinite error rejects the step.
    failed = result != diffrax.RESULTS.successful
    y_error = jax.tree.map(lambda e: jnp.where(failed, jnp.inf, e), y_error)
    return y1, y_error, dict(t0=t0, t1=t1, **dense)


class DiffraxStepper(AbstractStepper):
    """A diffrax solver with an error estimate, vmapped over neurons: each neuron is
    its own ODE `diffrax.ODETerm` with the model's vector field, stepped through the
    solver's public `init`/`step`, with dense output from its `interpolation_cls`."""

    solver: diffrax.AbstractAdaptiveSolver

    def step(self, dynamics, t0, t1, y0, current):
        one = ft.partial(_diffrax_step, self.solver)
        axes = lane_axes(dynamics)
        return jax.vmap(one, in_axes=(axes, 0, 0, 0, 0))(dynamics, t0, t1, y0, current)

    def evaluate(self, dynamics, dense, s):
        del dynamics

        def one(dense, s):
            return self.solver.interpolation_cls(**dense).evaluate(s)

        return jax.vmap(one)(dense, s)

    def error_order(self):
        order = self.solver.error_order(_TERM)
        assert order is not None
        return order


def make_stepper(solver) -> AbstractStepper:
    """The stepper for a solver given by the user (validated)."""
    if isinstance(solver, (Exact, ExactFlow)):
        return ExactStepper()
    if isinstance(solver, AbstractStepper):  # this library's Runge-Kutta pairs
        return solver
    if isinstance(solver, diffrax.AbstractSolver) and not (
        isinstance(solver.term_structure, type)
        and issubclass(solver.term_structure, diffrax.AbstractTerm)
    ):
        raise ValueError(
            f"`solver` {type(solver).__name__} needs several terms "
            f"({solver.term_structure}); a spiking layer integrates each neuron's "
            "single ODE term: use an ODE solver such as diffrax.Tsit5() or Kvaerno5()."
        )
    if isinstance(solver, diffrax.AbstractAdaptiveSolver):
        inner = solver.solver if isinstance(solver, diffrax.HalfSolver) else solver
        if isinstance(inner, diffrax.ReversibleHeun):
            # Its state (the auxiliary `yhat`) is what makes it reversible; each
            # neuron's step here starts from `solver.init`, since steps are
            # rejected and cut at spikes, so every step would be Heun's.
            name = "ReversibleHeun" if inner is solver else "HalfSolver(ReversibleHeun)"
            raise ValueError(
                f"`solver` {name} carries its state from one step to the next; a "
                "spiking layer starts each neuron's step afresh (steps are rejected "
                "and cut at spikes), so it would run as diffrax.Heun(): use Heun(), "
                "or a higher-order solver such as diffrax.Tsit5()."
            )
        if solver.error_order(_TERM) is None:
            raise ValueError(
                f"`solver` {type(solver).__name__} has no error order for an ODE."
            )
        return DiffraxStepper(solver)
    if isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(
            f"`solver` {type(solver).__name__} has no error estimate; spiking layers "
            "control each neuron's step size, so they need an adaptive solver such "
            "as diffrax.Tsit5(), Dopri5(), Dopri8(), Bosh3() or Kvaerno5()."
        )
    raise TypeError(
        "`solver` must be sj.Exact(), sj.ExactFlow(), a Runge-Kutta pair "
        "(sj.Dopri5(), sj.Tsit5(), sj.Bosh3()) or a diffrax adaptive solver (such "
        f"as diffrax.Tsit5()), got {type(solver).__name__}."
    )


def check_solver(dynamics: AbstractDynamics, solver) -> AbstractStepper:
    """Raise unless `solver` can integrate `dynamics`; returns its stepper."""
    stepper = make_stepper(solver)
    if isinstance(solver, (Exact, ExactFlow)) and not isinstance(
        dynamics, AbstractExactFlowDynamics
    ):
        raise ValueError(
            f"`solver` {type(solver).__name__} needs an exact flow, which "
            f"{type(dynamics).__name__} does not provide (it is no "
            "AbstractExactFlowDynamics); use Dopri5() or Tsit5()."
        )
    dynamics.check_solver(solver)
    return stepper


class StepProposal(eqx.Module):
    """What [`adaptive_step`][] returns.

    **Fields:**

    - `y1`: the proposed state at `t + h`.
    - `error_norm`: per neuron, the scaled error `||err / (atol + rtol |y|)||_rms`
        (0 for an exact step); the step is acceptable when it is `<= 1`.
    - `accept`: per neuron, whether the step is accepted (error within tolerance, or
        the step is already at `dtmin`).
    - `at_dt_min`: per neuron, whether it was accepted only because `h <= dtmin`.
    - `h_next`: per neuron, the next step size (ms); `inf` for an exact flow, meaning
        "to the end of the interval".
    - `dense`: the dense output of the step.
    - `controller_state`: the controller's state after the step.
    """

    y1: State
    error_norm: Float[Array, " n_neurons"]
    accept: Bool[Array, " n_neurons"]
    at_dt_min: Bool[Array, " n_neurons"]
    h_next: Float[Array, " n_neurons"]
    dense: PyTree[Array]
    controller_state: PredictiveState


def propose(
    stepper: AbstractStepper,
    controller: PredictiveController,
    dynamics: AbstractDynamics,
    t: NeuronFloat,
    t1: NeuronFloat,
    y: State,
    current: NeuronFloat,
    state: PredictiveState,
) -> StepProposal:
    """[`adaptive_step`][] on a stepper, from `t` to `t1` per neuron."""
    y1, y_error, dense = stepper.step(dynamics, t, t1, y, current)
    h = t1 - t
    order = stepper.error_order()
    if y_error is None or order is None:
        false = jnp.zeros(h.shape, bool)
        inf = jnp.full_like(h, jnp.inf)
        return StepProposal(y1, jnp.zeros_like(h), ~false, false, inf, dense, state)
    err = controller.error_norm(y_error, y, y1)
    decision = controller.decide(h, err, order, state, t1)
    return StepProposal(
        y1,
        err,
        decision.accept,
        decision.at_dt_min,
        decision.h_next,
        dense,
        decision.state,
    )


def adaptive_step(
    dynamics: AbstractDynamics,
    solver,
    controller: PredictiveController,
    t: NeuronFloat,
    y: State,
    current: NeuronFloat,
    h: NeuronFloat,
    controller_state: PredictiveState | None = None,
) -> StepProposal:
    """Propose one step of size `h` (ms) per neuron and the size of the next one.

    An exact solver returns the closed-form flow, `error_norm = 0` and
    `h_next = inf`. A diffrax solver returns its solution, the RMS norm of its error
    estimate scaled by the controller's tolerances, and the controller's decision
    (see [`PredictiveController`][]).

    **Arguments:**

    - `dynamics`: the neuron model.
    - `solver`: [`Exact`][], [`ExactFlow`][] or a diffrax adaptive solver.
    - `controller`: a [`PredictiveController`][].
    - `t`, `y`, `current`, `h`: per-neuron time (ms), state, input current and step.
    - `controller_state`: the controller's state (the last accepted step of each
        neuron); default none (as after a reset).

    **Returns:**

    A [`StepProposal`][].

    **Raises:** `ValueError` where a concrete `h` is not finite and `> 0`; under
    `jit` such a neuron's step is returned with `accept` (and `at_dt_min`) False
    and the controller's state as given, as is one where `t + h` rounds to `t` (or
    `t` is not finite).
    """
    if is_concrete(h):
        host = np.asarray(h)
        bad = ~(np.isfinite(host) & (host > 0))
        if np.any(bad):
            raise ValueError(
                f"`h` (the step, ms) must be finite and > 0, got {describe(host)} "
                f"({int(np.sum(bad))} of {host.size} not)."
            )
    if controller_state is None:
        controller_state = controller.init_state(jnp.shape(h), jnp.result_type(h))
    stepper = check_solver(dynamics, solver)
    proposal = propose(
        stepper, controller, dynamics, t, t + h, y, current, controller_state
    )
    # (Also a step that does not move the time: `t + h == t`, or `t` not finite.)
    valid = jnp.isfinite(h) & (h > 0) & (t + h > t)
    # (Nor is such a step the controller's last accepted one.)
    kept = where_tree(valid, proposal.controller_state, controller_state)
    return eqx.tree_at(
        lambda p: (p.accept, p.at_dt_min, p.controller_state),
        proposal,
        (proposal.accept & valid, proposal.at_dt_min & valid, kept),
    )
