"""`integrate` and `integrate_events`: a layer's run from its weights, inputs and model to a `Solution`."""

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from ._adaptive import AdaptiveLoop
from ._adjoint import AbstractAdjoint, ClosedFormAdjoint
from ._checks import MAX_BUDGET, check_positive_int, check_real_float, check_real_number
from ._closed_form import ClosedFormWalk
from ._controller import PredictiveController
from ._custom_types import State
from ._dynamics import (
    AbstractClosedFormDynamics,
    AbstractDynamics,
    AbstractExactFlowDynamics,
)
from ._event_run import (
    EventSchedule,
    default_max_events,
    default_max_events_feedforward,
)
from ._events import simulate_events
from ._feedforward import simulate_feedforward
from ._misc import (
    any_nonfinite,
    input_currents,
    is_concrete,
    max_across_devices,
    run_currents,
    tie_to,
    time_major_currents,
    time_order,
    vary_like,
)
from ._rerun_adjoint import RerunAdjoint
from ._root_find import BracketedNewton
from ._scan import AbstractIntegrator, RunConfig, interval_starts
from ._solution import RESULTS, Solution, update_result
from ._solver import Exact, check_solver, make_stepper
from ._spike_train import SpikeTrain, check_spike_train, widened_sources
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


def check_run_arrays(
    dynamics, weight, state, inputs=None, recurrent_weight=None
) -> None:
    """`ValueError`/`TypeError` naming the argument where a run's arrays do not
    make one: shapes that do not fit together (JAX would broadcast a state of one
    neuron to all of them without a word, or fail inside a product without naming
    anything), a dtype that is not real floating (from `weight` and `inputs`), no
    neuron, or a state whose arrays are not shaped as the model's resting state
    (`dynamics.init_state`)."""
    if jnp.ndim(weight) != 2:
        raise ValueError(
            "`weight` must have shape (n_neurons, n_inputs), got shape "
            f"{jnp.shape(weight)}."
        )
    n, n_inputs = jnp.shape(weight)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"`state` must hold one value per neuron ({n}, the rows of `weight`) "
                f"in every array, got `state{jax.tree_util.keystr(path)}` of shape "
                f"{jnp.shape(leaf)}."
            )
    if inputs is not None and (
        jnp.ndim(inputs) != 2 or jnp.shape(inputs)[1] != n_inputs
    ):
        raise ValueError(
            f"`inputs` must have shape (T, n_inputs) = (T, {n_inputs}) (the columns "
            f"of `weight`), got shape {jnp.shape(inputs)}."
        )
    if recurrent_weight is not None and jnp.shape(recurrent_weight) != (n, n):
        raise ValueError(
            f"`recurrent_weight` must have shape (n_neurons, n_neurons) = ({n}, {n}), "
            f"got shape {jnp.shape(recurrent_weight)}."
        )
    arrays = [weight] if inputs is None else [weight, inputs]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            "`weight` (with `inputs`) must give a real floating dtype, got "
            f"{jnp.dtype(dtype).name}."
        )
    if n == 0:
        raise ValueError(
            f"`weight` must have a row per neuron, at least one, got shape "
            f"{jnp.shape(weight)}."
        )
    rest = jax.eval_shape(lambda: dynamics.init_state(n, dtype))
    if jax.tree.structure(rest) != jax.tree.structure(state):
        return  # (named where the model reads the state)
    for (path, leaf), want in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(rest)
    ):
        if jnp.shape(leaf) != want.shape:
            raise ValueError(
                f"`state{jax.tree_util.keystr(path)}` must have the shape of "
                f"{type(dynamics).__name__}'s resting state, {want.shape}, got "
                f"{jnp.shape(leaf)}."
            )


def _end_finite(interval, num_intervals: int):
    """Whether the run over `num_intervals` intervals of length `interval` (one,
    or one per interval) ends at a finite time in the interval's dtype, as its
    spike times are computed (checked eagerly where the interval is concrete; a
    traced one that overflows would leave spike times at `inf`)."""
    if num_intervals == 0:
        return jnp.ones((), bool)
    last = interval if jnp.ndim(interval) == 0 else interval[-1]
    return jnp.isfinite(interval_starts(interval, num_intervals)[-1] + last)


def exact_integer_limit(dtype) -> int:
    """The largest integer up to which every integer is exact in the float `dtype`
    (256 in bfloat16, 2048 in float16, 2^24 in float32)."""
    return 2 ** (jnp.finfo(dtype).nmant + 1)


def initial_conditions(dynamics, state) -> dict:
    """The model's `constraints` on the start state `state`, and that every neuron
    starts below its threshold (a spike is an upward crossing: a neuron that
    starts above would be taken to cross at the start)."""
    conditions = dict(dynamics.constraints(state))
    conditions.setdefault(
        "initial threshold(y) < 0", jnp.all(dynamics.threshold(state) < 0)
    )
    return conditions


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
    throw: bool = True,
    backward_throw: bool | None = None,
) -> Solution:
    """Simulate a layer over consecutive intervals of held input.

    Interval `k` drives the neurons with the current `weight @ inputs[k]`. With a
    scalar `interval` (ms) every interval has that length (interval `k` spans
    `[k * interval, (k + 1) * interval)`); with one length per interval (shape
    `(T,)`) they follow one another. The arrays' shapes are checked here (a
    `ValueError` naming the argument), their values by the caller; traced values
    that are invalid (NaN/inf, a non-positive time constant, ...) are reported in
    the solution's `result`. `max_spikes=None` records no spike times;
    `keep_interval_states=False` leaves `interval_states` as None (saves memory).

    Differentiable: spike times, states and voltages get exact gradients; counts get
    the `surrogate` gradient (default [`ArctanSurrogate`][]). The `adjoint` says how
    (default: [`ClosedFormAdjoint`][] on the closed-form walk, forward and reverse
    mode; [`RerunAdjoint`][] on the adaptive loop, reverse mode).

    With `throw=True` (the default) an unsuccessful run raises (under
    `eqx.filter_jit`, as a clean error naming the failed condition or the
    [`RESULTS`][] item); with `throw=False` it returns, and `result` says what
    failed (its other fields are then not to be trusted: a full spike buffer's
    spike times are cut short, a NaN input gives NaN states).
    `backward_throw` (default: `throw`) is the same for the default adjoint's own
    check in the backward pass (see [`RerunAdjoint`][]), for a caller that
    reports the forward run's outcome itself.
    """
    check_run_arrays(dynamics, weight, state, inputs)
    if max_spikes is not None:
        max_spikes = check_max_spikes(max_spikes)
    dtype = jnp.result_type(weight, inputs)
    dynamics = dynamics.astype(dtype)
    weight = weight.astype(dtype)
    inputs = inputs.astype(dtype)
    interval = jnp.asarray(interval, dtype)
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)
    currents = run_currents(inputs, weight)
    cfg = RunConfig(
        max_spikes,
        keep_interval_states,
        counts_over_currents=not time_major_currents(inputs, weight),
    )
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
    max_steps = check_positive_int("max_steps", max_steps, MAX_BUDGET)
    integrator = make_integrator(
        dynamics, solver, stepsize_controller, root_finder, max_steps
    )
    if adjoint is None:
        check = throw if backward_throw is None else backward_throw
        adjoint = default_adjoint(integrator, check)
    surrogate = ArctanSurrogate() if surrogate is None else surrogate

    # A weight that is NaN or inf makes some current nonfinite (x is finite, or
    # reported on its own): a run with fewer currents than weights checks the
    # currents, and scans the weight only when one is not finite, to tell a bad
    # weight from an overflowing product (one pass over the weight, per step of an
    # online runner, cost four times the product).
    few_currents = currents.size <= weight.size
    if few_currents:
        bad_current = ~jnp.all(jnp.isfinite(currents))
        nonfinite = any_nonfinite((dynamics.parameters(), inputs, state))
        nonfinite = nonfinite | lax.cond(
            eqxi.unvmap_any(bad_current),
            lambda: any_nonfinite(weight),
            lambda: jnp.zeros((), bool),
        )
    else:
        nonfinite = any_nonfinite((dynamics.parameters(), weight, inputs, state))
    conditions = initial_conditions(dynamics, state)
    conditions["0 < interval < inf"] = jnp.all(interval > 0) & jnp.all(
        jnp.isfinite(interval)
    )
    conditions["the run's end time finite in its dtype"] = _end_finite(
        interval, inputs.shape[0]
    )
    conditions.update(integrator.conditions(dynamics, interval))
    invalid = any_condition_fails(conditions)
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_input, RESULTS.successful)
    result = update_result(result, invalid, RESULTS.invalid_parameters)

    raw = adjoint.run(integrator, dynamics, currents, interval, state, cfg, surrogate)

    if few_currents:
        nonfinite_current = ~nonfinite & bad_current
    else:
        # The currents cannot overflow if |x| |W| summed over inputs stays finite
        # (a few scalars); only then are all T x n of them checked.
        bound = jnp.max(jnp.abs(inputs)) * jnp.max(jnp.sum(jnp.abs(weight), axis=1))
        # (`unvmap_all`: under `vmap` the branch stays a branch, taken for the whole
        # batch, instead of becoming a select that always checks.) That branch
        # computes the currents again rather than reading them: the run writes
        # its counts over them (see `run_batch_major`), which XLA does in place only
        # where nothing else reads them.
        nonfinite_current = ~nonfinite & lax.cond(
            eqxi.unvmap_all(jnp.isfinite(bound)),
            lambda: vary_like(jnp.zeros((), bool), currents),
            lambda: ~jnp.all(jnp.isfinite(input_currents(inputs, weight))),
        )
    result = update_result(result, nonfinite_current, RESULTS.nonfinite_current)
    assert raw.nonfinite_state is not None
    bad_state = jnp.any(jnp.isnan(raw.spike_times)) | jnp.any(raw.nonfinite_state)
    result = update_result(result, bad_state, RESULTS.nonfinite_state)
    if raw.counters.num_invalid_resets is not None:
        bad_reset = jnp.any(raw.counters.num_invalid_resets > 0)
        result = update_result(result, bad_reset, RESULTS.invalid_reset)
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
    # Counts are stored in the float dtype: one too large to hold exactly (at the
    # limit itself: a larger one may have rounded down to it). Looked for only
    # where some neuron's spikes in all reach the limit; under `vmap`, where any
    # sample's do. Only in float16 and bfloat16: in float32 an interval of 2^24
    # spikes is past what the closed-form walk counts precisely (reported as
    # such), and the check cost `forward` 5-15 % at 64 x 256 x 100 (it needs the
    # spike totals, which `forward` does not compute otherwise).
    limit = exact_integer_limit(dtype)
    total = raw.num_spikes
    if limit <= 2048 and limit <= jnp.iinfo(total.dtype).max:
        many = jnp.any(total >= limit)
        too_many = lax.cond(
            eqxi.unvmap_any(many),
            lambda: many & jnp.any(raw.counts >= jnp.asarray(limit, raw.counts.dtype)),
            # (Under `jax.shard_map`, varying as the counts do.)
            lambda: vary_like(jnp.zeros((), bool), raw.counts, total),
        )
        result = update_result(result, too_many, RESULTS.count_precision_lost)
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
        sol = raise_on_failure(sol, dynamics, conditions, nonfinite)
    return sol


def integrate_events(
    dynamics: AbstractExactFlowDynamics,
    weight: Float[Array, "n_neurons n_inputs"],
    state: State,
    *,
    spikes: SpikeTrain | None = None,
    t_end=None,
    inputs: Float[Array, "time n_inputs"] | None = None,
    interval=None,
    recurrent_weight: Float[Array, "n_neurons n_neurons"] | None = None,
    delay: float = 0.0,
    root_finder: BracketedNewton | None = None,
    max_spikes: int = 64,
    max_events: int | None = None,
    after_max_spikes: str = "fail",
    throw: bool = True,
    context: str = "",
) -> Solution:
    """Simulate a population event by event (see `snode_jax._events`): driven by
    input `spikes` over `[0, t_end]`, or by held inputs over consecutive intervals
    (as [`integrate`][]), and by its own spikes through `recurrent_weight` after
    `delay` ms (a Python number, held fixed: not differentiated).

    Spike times get exact gradients with respect to the weights, the model
    parameters, the initial state and the input spike times (reverse mode). Counts
    are exact integers (stored in the float dtype) without a surrogate gradient.
    Invalid values found at run time are reported in the solution's `result`, and
    with `throw=True` (the default) raise; `throw=False` returns the failed run.

    `after_max_spikes`: `"fail"` (default), a neuron that would fire once more than
    `max_spikes` stops the run with `RESULTS.spike_buffer_full`; `"silence"`, it
    fires no more and the run goes on (neurons that fire at most `max_spikes`
    times, such as the single-spike neurons of time-to-first-spike networks). Only
    without recurrence, where no other neuron can depend on the spikes it would
    have fired.
    """
    if (spikes is None) == (inputs is None):
        raise ValueError("Give input `spikes` or dense `inputs`, exactly one.")
    check_run_arrays(dynamics, weight, state, inputs, recurrent_weight)
    if spikes is not None:
        check_spike_train(
            spikes, jnp.shape(weight)[1], t_end, "spikes", jnp.result_type(weight)
        )
    if inputs is not None and jnp.shape(inputs)[0] == 0:
        raise ValueError(
            "Dense `inputs` need at least one interval, got shape (0, ...)."
        )
    check_event_max_spikes(check_max_spikes(max_spikes))
    if max_events is not None:
        max_events = check_positive_int("max_events", max_events, MAX_BUDGET)
    delay = check_delay(delay)
    if delay and recurrent_weight is None:
        raise ValueError(
            f"`delay` (got {delay!r}) is the delay of recurrent spikes: it needs a "
            "`recurrent_weight`."
        )
    silence = check_after_max_spikes(after_max_spikes)
    if silence and recurrent_weight is not None:
        raise ValueError(
            "`after_max_spikes='silence'` needs a layer without recurrence (a "
            "silenced neuron's missing spikes would change the others); got a "
            "`recurrent_weight`."
        )
    dtype = weight.dtype
    dynamics = dynamics.astype(dtype)
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), state)
    n, n_inputs = weight.shape
    root_finder = BracketedNewton() if root_finder is None else root_finder
    leaves = [dynamics.parameters(), weight, state, recurrent_weight]
    conditions = initial_conditions(dynamics, state)
    bad_spikes = bad_current = jnp.zeros((), bool)
    if spikes is not None:
        t_end = jnp.asarray(t_end, dtype)
        input_times, input_sources, bad_spikes = sorted_events(
            spikes, t_end, n_inputs, dtype
        )
        boundaries = jnp.zeros((1,), dtype)
        currents = jnp.zeros((1, n), dtype)
        conditions["0 < t_end < inf"] = jnp.isfinite(t_end) & (t_end > 0)
    else:
        assert inputs is not None
        inputs = inputs.astype(dtype)
        lengths = jnp.broadcast_to(jnp.asarray(interval, dtype), (inputs.shape[0],))
        ends = jnp.cumsum(lengths)
        boundaries = jnp.concatenate([jnp.zeros((1,), dtype), ends[:-1]])
        t_end = ends[-1]
        currents = input_currents(inputs, weight)
        # (Told apart from a state that became NaN or inf: the currents drive it.)
        bad_current = ~jnp.all(jnp.isfinite(currents))
        input_times = jnp.full((1,), jnp.inf, dtype)
        input_sources = jnp.zeros((1,), jnp.int32)
        leaves.append(inputs)
        conditions["0 < interval < inf"] = jnp.all(lengths > 0) & jnp.all(
            jnp.isfinite(lengths)
        )
        # (Its boundaries are running sums of the lengths, ending at `t_end`.)
        conditions["the run's end time finite in its dtype"] = jnp.isfinite(t_end)
    nonfinite = any_nonfinite(leaves)
    schedule = EventSchedule(input_times, input_sources, boundaries, currents, t_end)
    if max_events is None:
        budget = (
            default_max_events_feedforward
            if recurrent_weight is None
            else default_max_events
        )
        # (At most the int32 loop bound: a run that needs more reports it.)
        max_events = min(
            budget(input_times.shape[0], boundaries.shape[0], n, max_spikes),
            MAX_BUDGET,
        )
    if recurrent_weight is None:
        # No coupling between the neurons: each keeps its own clock between inputs.
        run = simulate_feedforward(
            dynamics,
            weight,
            schedule,
            state,
            root_finder=root_finder,
            max_spikes=max_spikes,
            max_events=max_events,
            silence=silence,
        )
    else:
        run = simulate_events(
            dynamics,
            weight,
            recurrent_weight.astype(dtype),
            delay,
            schedule,
            state,
            root_finder=root_finder,
            max_spikes=max_spikes,
            max_events=max_events,
        )
    invalid = any_condition_fails(conditions)
    result = RESULTS.where(nonfinite, RESULTS.nonfinite_input, RESULTS.successful)
    result = update_result(result, invalid, RESULTS.invalid_parameters)
    result = update_result(result, bad_spikes, RESULTS.invalid_input_spikes)
    result = update_result(result, bad_current, RESULTS.nonfinite_current)
    bad_state = jnp.any(jnp.isnan(run.spike_times)) | any_nonfinite(run.final_state)
    result = update_result(result, bad_state, RESULTS.nonfinite_state)
    result = update_result(result, run.invalid_reset, RESULTS.invalid_reset)
    result = update_result(result, run.search_failed, RESULTS.crossing_search_failed)
    result = update_result(result, run.buffer_full, RESULTS.spike_buffer_full)
    result = update_result(result, run.unfinished, RESULTS.max_events_reached)
    limit = exact_integer_limit(dtype)
    if limit <= jnp.iinfo(run.counts.dtype).max:  # (else no count reaches it)
        too_many = jnp.any(run.counts > limit)
        result = update_result(result, too_many, RESULTS.count_precision_lost)
    sol = Solution(
        counts=run.counts.astype(dtype),
        spike_times=run.spike_times,
        num_spikes=run.num_spikes,
        final_state=run.final_state,
        interval_states=None,
        stats=dict(num_events=run.num_events, max_events=jnp.asarray(max_events)),
        result=result,
        interval=t_end if inputs is None else jnp.asarray(interval, dtype),
        duration=t_end,
    )
    if throw:
        sol = raise_on_failure(sol, dynamics, conditions, nonfinite, context)
    return sol


def check_delay(delay) -> float:
    """The delay of recurrent spikes as a Python float: a number, finite and >= 0
    (it is fixed for the run, not traced or differentiated)."""
    check_real_number("delay", delay)
    if np.ndim(delay) != 0:
        raise TypeError(
            f"`delay` must be one number >= 0 (ms) for every recurrent connection, "
            f"got shape {np.shape(delay)}."
        )
    return check_real_float("delay", delay, " (ms)", zero=True)


def check_max_spikes(max_spikes) -> int:
    """`max_spikes` as an int in `[0, 2**31 - 1]` (a Python or NumPy int, or a
    concrete 0-d integer array), else `TypeError`/`ValueError`."""
    if (
        isinstance(max_spikes, (np.ndarray, jax.Array))
        and max_spikes.ndim == 0
        and jnp.issubdtype(max_spikes.dtype, jnp.integer)
        and is_concrete(max_spikes)
    ):
        max_spikes = int(max_spikes)
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, (int, np.integer)):
        raise TypeError(f"`max_spikes` must be an int >= 0, got {max_spikes!r}.")
    if max_spikes < 0:
        raise ValueError(f"`max_spikes` must be an int >= 0, got {max_spikes!r}.")
    if max_spikes > MAX_BUDGET:
        raise ValueError(
            f"`max_spikes` must be at most {MAX_BUDGET} (spike slots are counted "
            f"in int32), got {max_spikes!r}."
        )
    return int(max_spikes)


def check_event_max_spikes(max_spikes) -> None:
    """An event-driven run needs a slot for every spike it delivers."""
    if max_spikes < 1:
        raise ValueError(
            "An event-driven run records every spike to deliver it: "
            f"`max_spikes` must be >= 1, got {max_spikes!r}."
        )


AFTER_MAX_SPIKES = ("fail", "silence")


def check_after_max_spikes(after_max_spikes) -> bool:
    """Whether `after_max_spikes` asks neurons to fall silent after `max_spikes`
    spikes (`"silence"`) rather than to stop the run (`"fail"`)."""
    if (
        not isinstance(after_max_spikes, str)
        or after_max_spikes not in AFTER_MAX_SPIKES
    ):
        raise ValueError(
            f"`after_max_spikes` must be one of {AFTER_MAX_SPIKES}, got "
            f"{after_max_spikes!r}."
        )
    return after_max_spikes == "silence"


def sorted_events(spikes: SpikeTrain, t_end, n_inputs: int, dtype):
    """`(times, sources, invalid)`: the spikes in time order (`+inf` padding last,
    at least one entry), sources that are safe to gather with (padding's replaced),
    and whether any spike is invalid: NaN, negative or finite past `t_end` time, or
    a source outside `[0, n_inputs)` (reported by the caller, never clipped into
    range silently). A finite time beyond the range of `dtype` is invalid too: cast,
    it would read as `+inf`, the padding."""
    times = spikes.times.astype(dtype)
    overflow = jnp.any(jnp.isfinite(spikes.times) & ~jnp.isfinite(times))
    sources = widened_sources(spikes.sources)
    if times.shape[-1] == 0:
        times = jnp.full((1,), jnp.inf, dtype)
        sources = jnp.zeros((1,), jnp.int32)
    order = time_order(times)
    times = times[order]
    sources = sources[order]
    finite = jnp.isfinite(times)
    invalid = overflow | jnp.any(
        jnp.isnan(times)
        | (times < 0)
        | (finite & (times > t_end))
        | (finite & ((sources < 0) | (sources >= n_inputs)))
    )
    # Where `invalid` holds the run is reported as failed; these indices only keep
    # the gathers in bounds meanwhile.
    sources = jnp.where(finite & (sources >= 0) & (sources < n_inputs), sources, 0)
    return times, sources, invalid


def any_condition_fails(conditions: dict) -> Array:
    """Whether any of the named run-time `conditions` (boolean scalars) fails."""
    return ~jnp.all(jnp.stack([jnp.asarray(ok) for ok in conditions.values()]))


def raise_on_failure(sol, dynamics, conditions, nonfinite, context: str = ""):
    """`sol`, raising at run time on a failed named condition of the model (unless
    NaN/inf input is the cause, reported as such) or an unsuccessful `result`,
    with one check for all of them; every message starts with `context` (which
    run of several failed)."""
    name = type(dynamics).__name__
    conditions_failed = [
        f"Invalid parameters or initial state of {name} found at run time: "
        f"need {condition}."
        for condition in conditions
    ]
    messages = [
        context + message
        for message in conditions_failed + list(RESULTS._index_to_message)
    ]
    failed = jnp.stack([~jnp.asarray(ok) & ~nonfinite for ok in conditions.values()])
    pred = jnp.any(failed) | (sol.result != RESULTS.successful)
    # The first failed condition, else the result's own message.
    first = jnp.where(
        jnp.any(failed), jnp.argmax(failed), len(conditions_failed) + sol.result._value
    )
    # Under `vmap` the error shows the largest index over the batch: the messages
    # are listed in reverse, so that it is the first failed condition of any
    # sample (then the result), and a sample that did not fail takes -1.
    index = jnp.where(pred, len(messages) - 1 - first, -1)
    # Under `jax.shard_map`, every device raises if any does.
    index = max_across_devices(index)
    pred = index >= 0
    # The check is threaded on a scalar zero (see `tie_to`).
    token = eqx.branched_error_if(jnp.zeros((), jnp.int32), pred, index, messages[::-1])
    return tie_to(sol, token)
