"""`integrate`: a layer's run from its weights, inputs and model to a `Solution`."""

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float

from ._adaptive import AdaptiveLoop
from ._adjoint import AbstractAdjoint, ClosedFormAdjoint, RerunAdjoint
from ._closed_form import ClosedFormWalk
from ._controller import PredictiveController
from ._custom_types import State
from ._dynamics import AbstractClosedFormDynamics, AbstractDynamics
from ._root_find import BracketedNewton
from ._scan import AbstractIntegrator, RunConfig
from ._solution import RESULTS, Solution, update_result
from ._solver import Exact, check_solver, make_stepper
from ._surrogate import AbstractSurrogate, ArctanSurrogate

# The placeholder diffrax puts in a root finder's tolerances when they are to be the
# step controller's (`diffrax.with_stepsize_controller_tols`; Kvaerno5's default).
_TOLS = diffrax.with_stepsize_controller_tols(optx.Chord)().rtol


def make_integrator(
    dynamics: AbstractDynamics,
    solver,
    stepsize_controller: PredictiveController,
    root_finder: BracketedNewton,
    max_steps: int,
) -> AbstractIntegrator:
    """The integrator for a model and a solver: the closed-form walk for a model whose
    spikes have a closed form on the [`Exact`][] solver, else the adaptive loop."""
    stepper = check_solver(dynamics, solver)
    if isinstance(solver, Exact) and isinstance(dynamics, AbstractClosedFormDynamics):
        return ClosedFormWalk(max_steps=max_steps)
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        # As `diffrax.diffeqsolve` does: root-finder tolerances left to the step
        # controller (diffrax's default, a sentinel, not a number) take its values.
        finder = solver.root_finder
        attrs = [
            a for a in ("rtol", "atol", "norm") if getattr(finder, a, None) is _TOLS
        ]
        if attrs:
            solver = eqx.tree_at(
                lambda s: tuple(getattr(s.root_finder, a) for a in attrs),
                solver,
                tuple(getattr(stepsize_controller, a) for a in attrs),
            )
            stepper = make_stepper(solver)
    return AdaptiveLoop(
        stepper=stepper,
        controller=stepsize_controller,
        root_finder=root_finder,
        max_steps=max_steps,
    )


def default_adjoint(integrator: AbstractIntegrator, throw: bool) -> AbstractAdjoint:
    if isinstance(integrator, ClosedFormWalk):
        return ClosedFormAdjoint()
    return RerunAdjoint(throw=throw)


def integrate(
    dynamics: AbstractDynamics,
    solver,
    weight: Float[Array, "n_neurons n_inputs"],
    inputs: Float[Array, "time n_inputs"],
    interval,
    state: State,
    *,
    stepsize_controller: PredictiveController,
    root_finder: BracketedNewton | None = None,
    max_steps: int = 4096,
    max_spikes: int | None = None,
    keep_interval_states: bool = True,
    surrogate: AbstractSurrogate | None = None,
    adjoint: AbstractAdjoint | None = None,
    throw: bool = False,
) -> Solution:
    """Simulate a layer over consecutive intervals of held input.

    Interval `k` drives the neurons with the current `weight @ inputs[k]`. With a
    scalar `interval` (ms) every interval has that length (interval `k` spans
    `[k * interval, (k + 1) * interval)`); with one length per interval (shape
    `(T,)`) they follow one another. Arguments are validated by the caller; traced
    values that are invalid (NaN/inf, a non-positive time constant, ...) are
    reported in the solution's `result`. `max_spikes=None` records no spike times;
    `keep_interval_states=False` leaves `interval_states` as None (saves memory).

    Differentiable: spike times, states and voltages get exact gradients; counts get
    the `surrogate` gradient (default [`ArctanSurrogate`][]). The `adjoint` says how
    (default: [`ClosedFormAdjoint`][] on the closed-form walk, forward and reverse
    mode; [`RerunAdjoint`][] on the adaptive loop, reverse mode).

    With `throw=True` an unsuccessful run raises (under `eqx.filter_jit`, as a clean
    error naming the failed condition or the [`RESULTS`][] item).
    """
    dtype = jnp.result_type(weight, inputs)
    dynamics = dynamics.astype(dtype)
    weight = weight.astype(dtype)
    inputs = inputs.astype(dtype)
    interval = jnp.asarray(interval, dtype)
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)
    currents = inputs @ weight.T
    cfg = RunConfig(max_spikes, keep_interval_states)
    root_finder = BracketedNewton() if root_finder is None else root_finder
    if not isinstance(stepsize_controller, PredictiveController):
        raise TypeError(
            "`stepsize_controller` must be a PredictiveController (per-neuron steps), "
            f"got {type(stepsize_controller).__name__}."
        )
    if jnp.shape(interval) not in ((), (inputs.shape[0],)):
        raise ValueError(
            "`interval` must be a scalar or have one length per interval, shape "
            f"({inputs.shape[0]},); got shape {jnp.shape(interval)}."
        )
    integrator = make_integrator(
        dynamics, solver, stepsize_controller, root_finder, max_steps
    )
    adjoint = default_adjoint(integrator, throw) if adjoint is None else adjoint
    surrogate = ArctanSurrogate() if surrogate is None else surrogate

    params = jax.tree.leaves((dynamics.parameters(), weight, inputs, state))
    nonfinite = jnp.zeros((), bool)
    for leaf in params:
        nonfinite = nonfinite | ~jnp.all(jnp.isfinite(leaf))
    conditions = dict(dynamics.constraints(state))
    conditions["interval > 0"] = jnp.all(interval > 0) & jnp.all(jnp.isfinite(interval))
    conditions.update(integrator.conditions(dynamics, interval))
    invalid = ~jnp.all(jnp.stack([jnp.asarray(ok) for ok in conditions.values()]))
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_input, RESULTS.successful)
    result = update_result(result, invalid, RESULTS.invalid_parameters)

    raw = adjoint.run(integrator, dynamics, currents, interval, state, cfg, surrogate)

    # The currents cannot overflow if |x| |W| summed over inputs stays finite (a
    # few scalars); only then are all T x n of them checked.
    bound = jnp.max(jnp.abs(inputs)) * jnp.max(jnp.sum(jnp.abs(weight), axis=1))
    nonfinite_current = ~nonfinite & lax.cond(
        jnp.isfinite(bound),
        lambda: jnp.zeros((), bool),
        lambda: ~jnp.all(jnp.isfinite(currents)),
    )
    result = update_result(result, nonfinite_current, RESULTS.nonfinite_current)
    state_leaves = jax.tree.leaves((raw.final_state, raw.interval_states))
    bad_state = jnp.any(jnp.isnan(raw.spike_times))
    for leaf in state_leaves:
        bad_state = bad_state | ~jnp.all(jnp.isfinite(leaf))
    result = update_result(result, bad_state, RESULTS.nonfinite_state)
    if raw.counters.num_imprecise_intervals is not None:
        imprecise = jnp.any(raw.counters.num_imprecise_intervals > 0)
        result = update_result(result, imprecise, RESULTS.count_precision_lost)
    if raw.counters.num_stalled_steps is not None:
        stalled = jnp.any(raw.counters.num_stalled_steps > 0)
        result = update_result(result, stalled, RESULTS.step_size_underflow)
    exhausted, root_fail = jnp.any(raw.exhausted), jnp.any(raw.root_fail)
    result = update_result(result, exhausted, RESULTS.max_steps_reached)
    result = update_result(result, root_fail, RESULTS.crossing_search_failed)
    if max_spikes is not None:
        overflow = jnp.any(raw.num_spikes > max_spikes)
        result = update_result(result, overflow, RESULTS.spike_buffer_full)
    counters = jax.tree.map(
        lambda c: jnp.zeros_like(raw.num_spikes) if c is None else c,
        raw.counters,
        is_leaf=lambda c: c is None,
    )
    stats = dict(
        num_steps=counters.num_steps,
        num_rejected_steps=counters.num_rejected_steps,
        num_crossings=counters.num_crossings,
        num_dt_min_steps=counters.num_dt_min_steps,
        num_stalled_steps=counters.num_stalled_steps,
        num_imprecise_intervals=counters.num_imprecise_intervals,
        max_steps=jnp.asarray(max_steps),
    )
    sol = Solution(
        counts=raw.counts,
        spike_times=raw.spike_times,
        num_spikes=raw.num_spikes,
        final_state=raw.final_state,
        interval_states=raw.interval_states,
        stats=stats,
        result=result,
        interval=interval,
        duration=jnp.sum(jnp.broadcast_to(interval, (inputs.shape[0],))),
    )
    if throw:
        # A failed condition of the model, by name (unless NaN/inf is the cause).
        name = type(dynamics).__name__
        for condition, ok in conditions.items():
            sol = eqx.error_if(
                sol,
                ~ok & ~nonfinite,
                f"Invalid parameters or initial state of {name} found at run time: "
                f"need {condition}.",
            )
        sol = sol.result.error_if(sol, sol.result != RESULTS.successful)
    return sol
