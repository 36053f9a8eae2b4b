"""Trainable spiking layers built on the integration loop."""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import (
    MAX_BUDGET,
    SIZE_REASON,
    as_jax_array,
    check_bool,
    check_finite,
    check_fits,
    check_float_dtype,
    check_interval,
    check_parameters_fit,
    check_positive_int,
    check_real,
    check_weight_array,
)
from ._controller import PredictiveController, controller_from_settings
from ._custom_types import Counts, State
from ._dynamics import (
    AbstractDynamics,
    AbstractExactFlowDynamics,
    check_model_outputs,
)
from ._integrate import (
    check_after_max_spikes,
    check_delay,
    check_event_max_spikes,
    check_max_spikes,
    integrate,
    integrate_events,
)
from ._lif import ODELIFDynamics
from ._root_find import BracketedNewton
from ._runge_kutta import AbstractRungeKutta, Dopri5
from ._save import check_save_times, integrate_events_saving, integrate_saving
from ._solution import Solution
from ._solver import Exact, ExactFlow, check_solver
from ._spike_train import SpikeTrain, check_event_dynamics, check_spike_train
from ._surrogate import AbstractSurrogate, ArctanSurrogate


class SpikingODELayer(eqx.Module):
    """A layer of spiking neurons whose membranes are integrated as ODEs.

    Input `x_k` is held constant over interval `k` (length `interval` ms) and drives
    the neurons with the current `weight @ x_k`. Every threshold crossing is located
    inside the solver step (to machine precision for the LIF), the neuron is reset at
    that instant and integration continues, so spike counts and times are those of
    the continuous-time model, not of a time grid.

    **Arguments:**

    - `n_inputs`, `n_neurons`: layer sizes (positive ints).
    - `dynamics`: the neuron model; default `ODELIFDynamics()`.
    - `dt_init`: the first step of each interval (ms), for solvers that control their
        step size (default 0.1). Each interval starts afresh because its input jumps.
    - `dt_min`: the smallest step the controller may take (ms, default 0.001);
        `0 < dt_min <= dt_init`. A step at `dt_min` is accepted whatever its error
        (counted in `sol.stats["num_dt_min_steps"]`, not reported in `result`):
        where such steps are taken the run is only as accurate as they are (AdEx
        over 50 ms intervals with `dt_min = dt_init = 2` put spikes 0.11 ms off;
        at 60, past the interval, counts went wrong). Crossings themselves are
        located by a search with its own, much tighter, tolerance, on the steps
        taken.
    - `dt_max`: the largest controlled step (ms); default unbounded.
    - `solver`: default the best the model allows: [`Exact`][] for models with a
        closed-form flow (the LIF, CubaLIF), else [`Dopri5`][]. [`Tsit5`][] and
        [`Bosh3`][] too; and any diffrax solver with an error estimate
        (`diffrax.Tsit5()`, `Dopri8()`, the implicit `Kvaerno5()`, ...), stepped
        per neuron (slower per step than this library's own pairs).
    - `rtol`, `atol`: error tolerances of a Runge-Kutta solver (default 1e-6, 1e-8).
    - `stepsize_controller`: a [`PredictiveController`][] holding all of the above
        step settings at once (then give none of `dt_init`, `dt_min`, `dt_max`,
        `rtol`, `atol`).
    - `max_steps`: step budget per neuron per interval (the closed-form LIF path
        takes one step per spike plus one; it walks an interval longer than 30
        times the smallest `tau_mem` in equal pieces, with this budget for each).
    - `max_root_iters`: iteration budget of the crossing search (default 200); or
    - `root_finder`: a [`BracketedNewton`][] (then no `max_root_iters`).
    - `surrogate`: the surrogate derivative given to spike counts (their values stay
        exact): [`ArctanSurrogate`][] (default), [`SigmoidSurrogate`][] or
        [`FastSigmoidSurrogate`][]. Spike times and voltages are differentiated
        exactly and do not use it.
    - `dtype`: floating dtype of `weight` and of the model's parameters (the layer
        holds `dynamics.astype(dtype)`); default JAX's default float. Float64
        needs JAX's 64-bit mode (`jax.config.update("jax_enable_x64", True)`);
        without it, it is refused rather than run in float32.
    - `key`: PRNG key for the weight, drawn from `N(0, 2 / n_inputs)`.

    **Raises:**

    `ValueError`/`TypeError` for non-positive sizes or step bounds, `dt_min > dt_init`,
    a solver the model cannot use, dynamics parameters whose shape is neither
    scalar nor `(n_neurons,)`, or dynamics parameters beyond the range of `dtype`
    (or, rounded to it, failing the model's conditions: a positive `tau_mem` that
    is 0 in float32).
    """

    weight: Float[Array, "n_neurons n_inputs"]
    dynamics: AbstractDynamics
    solver: Exact | ExactFlow | AbstractRungeKutta | diffrax.AbstractAdaptiveSolver
    stepsize_controller: PredictiveController
    root_finder: BracketedNewton
    surrogate: AbstractSurrogate
    recurrent_weight: Float[Array, "n_neurons n_neurons"] | None
    n_inputs: int = eqx.field(static=True)
    n_neurons: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    delay: float = eqx.field(static=True)

    def __init__(
        self,
        n_inputs: int,
        n_neurons: int,
        dynamics: AbstractDynamics | None = None,
        dt_init: float | None = None,
        dt_min: float | None = None,
        *,
        dt_max: float | None = None,
        solver=None,
        rtol: float | None = None,
        atol: float | None = None,
        stepsize_controller: PredictiveController | None = None,
        max_steps: int = 4096,
        max_root_iters: int | None = None,
        root_finder: BracketedNewton | None = None,
        surrogate: AbstractSurrogate | None = None,
        recurrent: bool = False,
        delay: float = 0.0,
        dtype=None,
        key: PRNGKeyArray,
    ):
        self.n_inputs = check_positive_int(
            "n_inputs", n_inputs, MAX_BUDGET, SIZE_REASON
        )
        self.n_neurons = check_positive_int(
            "n_neurons", n_neurons, MAX_BUDGET, SIZE_REASON
        )
        self.stepsize_controller = controller_from_settings(
            stepsize_controller, dt_init, dt_min, dt_max, rtol, atol
        )
        self.max_steps = check_positive_int("max_steps", max_steps, MAX_BUDGET)
        if root_finder is None:
            iters = 200 if max_root_iters is None else max_root_iters
            root_finder = BracketedNewton(
                max_steps=check_positive_int("max_root_iters", iters, MAX_BUDGET)
            )
        elif max_root_iters is not None:
            raise ValueError(
                "Give `max_root_iters` or `root_finder`, not both: got "
                f"max_root_iters={max_root_iters!r} and root_finder={root_finder!r}."
            )
        if not isinstance(root_finder, BracketedNewton):
            raise TypeError(
                f"`root_finder` must be a BracketedNewton, got {root_finder!r}."
            )
        self.root_finder = root_finder
        if dynamics is None:
            dynamics = ODELIFDynamics()
        if not isinstance(dynamics, AbstractDynamics):
            raise TypeError(
                "`dynamics` must be an AbstractDynamics (such as ODELIFDynamics), "
                f"got {type(dynamics).__name__}."
            )
        dynamics.check_n_neurons(self.n_neurons)
        if solver is None:
            exact = isinstance(dynamics, AbstractExactFlowDynamics)
            solver = Exact() if exact else Dopri5()
        check_solver(dynamics, solver)
        self.solver = solver
        if surrogate is None:
            surrogate = ArctanSurrogate()
        if not isinstance(surrogate, AbstractSurrogate):
            raise TypeError(
                "`surrogate` must be an AbstractSurrogate (ArctanSurrogate, "
                f"SigmoidSurrogate, FastSigmoidSurrogate), got {surrogate!r}."
            )
        self.surrogate = surrogate
        dtype = check_float_dtype(dtype)
        check_parameters_fit(dynamics, dtype)
        # The parameters as arrays of the layer's dtype. (Python numbers would be
        # weakly typed: an optimizer's first update returns them strongly typed,
        # and its state follows a step later, so a jitted training step compiled
        # three times over.)
        self.dynamics = dynamics.astype(dtype)
        std = float(np.sqrt(2.0 / self.n_inputs))  # a Python float keeps `dtype`
        w_key, r_key = jax.random.split(key)
        self.weight = std * jax.random.normal(
            w_key if recurrent else key, (self.n_neurons, self.n_inputs), dtype
        )
        check_bool("recurrent", recurrent)
        delay = check_delay(delay)
        if delay and not recurrent:
            raise ValueError(
                f"`delay` (got {delay!r}) is the delay of recurrent spikes: it needs "
                "`recurrent=True`."
            )
        self.delay = delay
        self.recurrent_weight = None
        if recurrent:
            check_event_dynamics(dynamics, "`recurrent=True`")
            std_rec = float(np.sqrt(1.0 / self.n_neurons))
            self.recurrent_weight = std_rec * jax.random.normal(
                r_key, (self.n_neurons, self.n_neurons), dtype
            )

    # The step settings, as the layer's arguments name them.
    @property
    def dt_init(self) -> float:
        return self.stepsize_controller.dt0

    @property
    def dt_min(self) -> float:
        return self.stepsize_controller.dtmin

    @property
    def dt_max(self) -> float:
        return self.stepsize_controller.dtmax

    @property
    def rtol(self) -> float:
        return self.stepsize_controller.rtol

    @property
    def atol(self) -> float:
        return self.stepsize_controller.atol

    @property
    def max_root_iters(self) -> int:
        return self.root_finder.max_steps

    # -- helpers -------------------------------------------------------------------

    @property
    def dtype(self):
        return self.weight.dtype

    def _check_arrays(self) -> None:
        """The layer's arrays against its sizes (one swapped in with `eqx.tree_at`
        is not checked by `__init__`): `weight` real floating `(n_neurons,
        n_inputs)`, `recurrent_weight` `(n_neurons, n_neurons)` in its dtype, and
        the model's per-neuron parameters one per neuron."""
        check_weight_array(
            "weight",
            self.weight,
            (self.n_neurons, self.n_inputs),
            "n_neurons, n_inputs",
        )
        if self.recurrent_weight is not None:
            check_weight_array(
                "recurrent_weight",
                self.recurrent_weight,
                (self.n_neurons, self.n_neurons),
                "n_neurons, n_neurons",
                self.weight.dtype,
            )
        self.dynamics.check_n_neurons(self.n_neurons)

    def _check_inputs(self, inputs) -> Array:
        inputs = as_jax_array("inputs", inputs)
        expected = f"(time, n_inputs) = (T, {self.n_inputs})"
        if inputs.ndim != 2 or inputs.shape[1] != self.n_inputs or inputs.shape[0] < 1:
            raise ValueError(
                f"`inputs` must have shape {expected} with T >= 1, got shape "
                f"{inputs.shape}. For a batch, use jax.vmap over the leading axis."
            )
        check_finite("inputs", inputs)
        # The layer's dtype (that of `weight`) sets the precision of the simulation.
        cast = inputs.astype(self.dtype)
        check_fits("inputs", inputs, cast)
        return cast

    def _check_state(self, state):
        init = self.init_state()
        if jax.tree.structure(state) != jax.tree.structure(init):
            raise ValueError(
                f"`state` must be a {type(init).__name__} (from `init_state()`), got "
                f"{state!r}{_state_fields_differ(state, init)}."
            )
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            check_real("state", leaf)
            if jnp.shape(leaf) != (self.n_neurons,):
                raise ValueError(
                    f"`state` arrays must have shape ({self.n_neurons},), got "
                    f"{jnp.shape(leaf)}."
                )
            # (Concrete values only: under `jit` the run reports them.)
            name = f"state{jax.tree_util.keystr(path)}"
            check_finite(name, leaf)
            check_fits(name, leaf, jnp.asarray(leaf).astype(self.dtype))
        return state

    def _run(
        self, inputs, interval, state, max_spikes, throw, keep=True, save_times=None
    ) -> Solution:
        throw = check_bool("throw", throw)
        self._check_arrays()
        inputs = self._check_inputs(inputs)
        check_interval(interval, inputs.shape[0], self.dtype)
        # (Arrays of the layer's dtype: an int, a NumPy float64 or a float64 array
        # as `interval`, or a number swapped into the model with `eqx.tree_at`,
        # would each have compiled the run once more, a number once per value.)
        interval = jnp.asarray(interval, self.dtype)
        dynamics = self.dynamics.astype(self.dtype)
        state = self.init_state() if state is None else self._check_state(state)
        if save_times is not None:
            duration = jnp.sum(jnp.broadcast_to(interval, (inputs.shape[0],)))
            return _integrate_saving_jit(
                dynamics,
                self.solver,
                self.weight,
                inputs,
                interval,
                state,
                check_save_times(save_times, duration),
                stepsize_controller=self.stepsize_controller,
                root_finder=self.root_finder,
                max_steps=self.max_steps,
                max_spikes=max_spikes,
                surrogate=self.surrogate,
                throw=throw,
            )
        return _integrate_jit(
            dynamics,
            self.solver,
            self.weight,
            inputs,
            interval,
            state,
            stepsize_controller=self.stepsize_controller,
            root_finder=self.root_finder,
            max_steps=self.max_steps,
            max_spikes=max_spikes,
            keep_interval_states=keep,
            surrogate=self.surrogate,
            throw=throw,
        )

    # -- public API ----------------------------------------------------------------

    def init_state(self) -> State:
        """The resting state of the layer's neurons."""
        state = self.dynamics.init_state(self.n_neurons, self.dtype)
        for leaf in jax.tree.leaves(state):
            if jnp.shape(leaf) != (self.n_neurons,):
                raise ValueError(
                    f"`{type(self.dynamics).__name__}.init_state` must give every "
                    f"state array shape (n_neurons,) = ({self.n_neurons},) (one value "
                    f"per neuron), got shape {jnp.shape(leaf)}."
                )
        check_model_outputs(self.dynamics, state)
        return state

    def simulate(
        self,
        inputs: Float[Array, "time n_inputs"] | SpikeTrain,
        interval: float | Float[Array, ""] | None = None,
        max_spikes: int = 64,
        *,
        t_end: float | Float[Array, ""] | None = None,
        state: State | None = None,
        max_events: int | None = None,
        save_times: Float[Array, " save"] | None = None,
        after_max_spikes: str = "fail",
        throw: bool = True,
    ) -> Solution:
        """Simulate the layer and record spike times.

        **Arguments:**

        - `inputs`: either dense inputs of shape `(T, n_inputs)`, row `k` held over
            interval `k`; or a [`SpikeTrain`][] of input spikes (then give `t_end`,
            not `interval`): a spike of input `i` at time `s` adds `weight[:, i]` to
            the state at exactly `s` (the model's `jump`: to the membrane of the
            LIF, to the synaptic current of the CubaLIF). A jump that lifts the
            membrane to or above threshold fires the neuron at that instant.
        - `interval`: length of each interval of dense inputs (ms), `> 0`; or one
            length per interval, shape `(T,)` (intervals of different lengths).
        - `max_spikes`: spike times stored per neuron (counts are exact regardless
            on dense inputs; an event-driven run, which needs the times to deliver
            them, stops when a neuron would exceed it).
        - `t_end`: with a `SpikeTrain`, the end of the simulation (ms, `> 0`); input
            spikes must lie in `[0, t_end]` (`+inf` is padding).
        - `state`: initial state; default the resting state.
        - `max_events`: event budget of an event-driven run (spike-train inputs or
            a recurrent layer); default a bound only a full spike buffer can reach.
        - `save_times`: times (ms, ascending, in `[0, duration]`) at which to return
            the neuron state, as `sol.saved_states` (leading axis: the save times)
            next to `sol.save_times`; default None (not computed). At a spike time
            of a neuron its state just after the reset (states are
            right-continuous, like `interval_states`). Differentiable, and usable
            under `jit` and `vmap` (traced values outside the range, or not
            ascending, are reported as `RESULTS.invalid_save_times`). On dense
            inputs the intervals are split at the save times and the layer runs
            once more over the finer schedule (exact for the closed forms; within
            the solver's tolerance on the Runge-Kutta path, whose second run
            restarts its steps at each save time); on the event-driven engine the
            recorded spikes are replayed on the exact flow (one pass over input
            spikes, spikes and save times; a recurrent layer then needs
            `delay > 0`, and reports `RESULTS.delay_below_resolution` where a
            spike's time plus `delay` rounds to that time, before a save time).
        - `after_max_spikes`: what a neuron's `max_spikes + 1`-th spike does on
            the event-driven engine. `"fail"` (default): the run stops there with
            `RESULTS.spike_buffer_full`. `"silence"`: the neuron fires no more (its
            membrane goes on integrating, without threshold) and the run goes on,
            as for the single-spike neurons of time-to-first-spike networks
            (`max_spikes=1`): such a layer's first spike times, and their
            gradients, are those of the unlimited neuron, at the cost of one
            iteration per spike kept instead of per spike fired. `counts` and
            `num_spikes` then count the spikes fired. Only for `SpikeTrain` inputs
            to a layer without recurrence (where no neuron can depend on the spikes
            a silenced one would have fired).
        - `throw`: raise if the result is not successful (step or event budget or
            spike buffer exhausted, NaN/inf input, invalid parameters or input
            spikes). With `False`, inspect `sol.result` instead. (Concrete values
            are checked before the run whatever `throw` says: see Raises.)

        **Returns:**

        A [`Solution`][]: `counts`, `spike_times` (ms from the start, ascending,
        `+inf` padded), `final_state`, `interval_states` (None on the event-driven
        engine below: pass the interval ends as `save_times` for those states),
        `stats`, `result`; `sol.spike_train()` is the input of a next layer.

        Spike-train inputs and recurrent layers run on the event-driven engine:
        events in exact global time order; all jumps due at one instant (input
        spikes at equal times, recurrent deliveries) are applied together, then
        every neuron at or above threshold fires and resets (one whose flow reached
        threshold at that instant counts as there, unless a jump at that instant
        took it below); a recurrent spike of neuron `k` adds
        `recurrent_weight[:, k]` after `delay` ms (with zero delay at the same
        instant, so such cascades run to completion there, a neuron firing again
        if lifted back to threshold). The model must have an exact flow
        ([`AbstractExactFlowDynamics`][]: the LIF, the CubaLIF).

        **Raises:**

        `ValueError` for a bad shape, `interval`, `t_end`, `max_spikes`, input
        spike, or NaN/inf inputs or `state` (for concrete values, whatever
        `throw` says: traced ones are reported in `result`); with `throw=True`, a
        runtime error carrying the `RESULTS` message (or the failed condition of
        the model) if the simulation failed. Wrap calls in `eqx.filter_jit`
        rather than `jax.jit`: under `jax.jit` the message arrives buried in an
        `INTERNAL: CpuCallback error` traceback, under `eqx.filter_jit` it prints
        cleanly.
        """
        return self._simulate(
            inputs,
            interval,
            max_spikes,
            t_end=t_end,
            state=state,
            max_events=max_events,
            save_times=save_times,
            after_max_spikes=after_max_spikes,
            throw=throw,
        )

    def _simulate(
        self,
        inputs,
        interval,
        max_spikes,
        *,
        t_end=None,
        state=None,
        max_events=None,
        save_times=None,
        after_max_spikes="fail",
        throw=True,
        context="",
    ) -> Solution:
        """[`simulate`][]; a failure's message starts with `context` (on the
        event-driven engine: which layer of a network failed)."""
        throw = check_bool("throw", throw)
        max_spikes = check_max_spikes(max_spikes)
        if check_after_max_spikes(after_max_spikes) and not (
            isinstance(inputs, SpikeTrain) and self.recurrent_weight is None
        ):
            got = "a recurrent layer" if self.recurrent_weight is not None else ""
            if not isinstance(inputs, SpikeTrain):
                got += (" with " if got else "") + "dense inputs"
            raise ValueError(
                "`after_max_spikes='silence'` applies to SpikeTrain inputs of a "
                f"layer without recurrence; got {got}."
            )
        if isinstance(inputs, SpikeTrain) or self.recurrent_weight is not None:
            return self._run_events(
                inputs,
                interval,
                t_end,
                state,
                int(max_spikes),
                max_events,
                throw,
                save_times,
                after_max_spikes,
                context,
            )
        for name, value in (("t_end", t_end), ("max_events", max_events)):
            if value is not None:
                raise ValueError(
                    f"`{name}` (got {value!r}) applies to event-driven runs only "
                    "(SpikeTrain inputs or a recurrent layer); dense inputs run for "
                    "the sum of their intervals."
                )
        if interval is None:
            raise ValueError("Dense `inputs` need `interval` (ms).")
        return self._run(
            inputs, interval, state, int(max_spikes), throw, save_times=save_times
        )

    def _run_events(
        self,
        inputs,
        interval,
        t_end,
        state,
        max_spikes,
        max_events,
        throw,
        save_times=None,
        after_max_spikes="fail",
        context="",
    ) -> Solution:
        self._check_arrays()
        dynamics = check_event_dynamics(
            self.dynamics,
            "spike-train inputs" if isinstance(inputs, SpikeTrain) else "recurrence",
        )
        # (Arrays of the layer's dtype, as in `_run`.)
        dynamics = dynamics.astype(self.dtype)
        check_event_max_spikes(max_spikes)
        if max_events is not None:
            max_events = check_positive_int("max_events", max_events, MAX_BUDGET)
        state = self.init_state() if state is None else self._check_state(state)
        recurrent_weight = self.recurrent_weight
        if isinstance(inputs, SpikeTrain):
            if interval is not None:
                raise ValueError(
                    f"`interval` (got {interval!r}) is for dense inputs; a SpikeTrain "
                    "runs over `[0, t_end]`: give `t_end`."
                )
            if t_end is None:
                raise ValueError("A SpikeTrain input needs `t_end` (ms, > 0).")
            check_spike_train(inputs, self.n_inputs, t_end, dtype=self.dtype)
            # An array, not a static argument: another `t_end` reuses the compiled
            # run.
            t_end_array = jnp.asarray(t_end, self.dtype)
            if save_times is not None:
                if recurrent_weight is not None and self.delay <= 0:
                    raise ValueError(_ZERO_DELAY_SAVE)
                return _integrate_events_saving_jit(
                    dynamics,
                    self.weight,
                    state,
                    check_save_times(save_times, t_end_array),
                    spikes=inputs,
                    t_end=t_end_array,
                    recurrent_weight=recurrent_weight,
                    delay=self.delay,
                    root_finder=self.root_finder,
                    max_spikes=max_spikes,
                    max_events=max_events,
                    after_max_spikes=after_max_spikes,
                    throw=throw,
                    context=context,
                )
            return _integrate_events_jit(
                dynamics,
                self.weight,
                state,
                spikes=inputs,
                t_end=t_end_array,
                recurrent_weight=recurrent_weight,
                delay=self.delay,
                root_finder=self.root_finder,
                max_spikes=max_spikes,
                max_events=max_events,
                after_max_spikes=after_max_spikes,
                throw=throw,
                context=context,
            )
        if t_end is not None:
            raise ValueError(
                f"`t_end` (got {t_end!r}) is for SpikeTrain inputs; dense inputs run "
                "for the sum of their intervals."
            )
        if interval is None:
            raise ValueError("Dense `inputs` need `interval` (ms).")
        inputs = self._check_inputs(inputs)
        check_interval(interval, inputs.shape[0], self.dtype)
        interval = jnp.asarray(interval, self.dtype)  # (as in `_run`)
        if save_times is not None:
            if self.delay <= 0:
                raise ValueError(_ZERO_DELAY_SAVE)
            duration = jnp.sum(jnp.broadcast_to(interval, (inputs.shape[0],)))
            return _integrate_events_saving_jit(
                dynamics,
                self.weight,
                state,
                check_save_times(save_times, duration),
                inputs=inputs,
                interval=interval,
                recurrent_weight=recurrent_weight,
                delay=self.delay,
                root_finder=self.root_finder,
                max_spikes=max_spikes,
                max_events=max_events,
                throw=throw,
                context=context,
            )
        return _integrate_events_jit(
            dynamics,
            self.weight,
            state,
            inputs=inputs,
            interval=interval,
            recurrent_weight=recurrent_weight,
            delay=self.delay,
            root_finder=self.root_finder,
            max_spikes=max_spikes,
            max_events=max_events,
            throw=throw,
            context=context,
        )

    def forward(
        self,
        inputs: Float[Array, "time n_inputs"],
        interval: float | Float[Array, ""],
        *,
        state: State | None = None,
        throw: bool = True,
    ) -> Counts:
        """Spike counts per interval, from rest (or `state`). Needs no spike buffer:
        the counts are exact at any firing rate.

        **Returns:** counts of shape `(T, n_neurons)`, exact integers stored in the
        layer's float dtype so that they carry the surrogate gradient.

        **Raises:** with `throw=True` (the default), a runtime error where the run
        fails (see `RESULTS`). With `throw=False` the counts of a failed run come
        back as computed, with nothing to say it failed: use `simulate(...,
        max_spikes=0, throw=False)`, whose `result` says (there
        `spike_buffer_full` is no failure: it reports any spike, which a buffer of
        none cannot hold, and only where nothing else failed; the counts are
        exact).

        A recurrent layer records its spikes to deliver them: use `simulate`.
        """
        if isinstance(inputs, SpikeTrain) or self.recurrent_weight is not None:
            raise TypeError(
                "`forward` takes dense inputs into a feed-forward layer; for "
                "SpikeTrain inputs or a recurrent layer use `simulate` (its "
                "`counts` and `spike_times`)."
            )
        return self._run(inputs, interval, state, None, throw, keep=False).counts

    __call__ = forward

    def step(
        self,
        state: State,
        x: Float[Array, " n_inputs"],
        interval: float | Float[Array, ""],
        *,
        throw: bool = True,
    ) -> tuple[State, Float[Array, " n_neurons"]]:
        """Advance `state` by one interval of constant input `x` (pure).

        **Returns:** `(new_state, counts)`, counts of shape `(n_neurons,)`.
        (`state` is required: `init_state()` is the resting state.)

        **Raises:** as `forward` (with `throw=False`, a failed step is not
        reported).
        """
        if self.recurrent_weight is not None:
            raise TypeError(
                "`step` advances a feed-forward layer; a recurrent layer's spikes in "
                "flight are not part of its state: use `simulate`."
            )
        if state is None:
            raise TypeError(
                "`state` of `step` must be a state of the layer's model (the "
                "resting state is `init_state()`), got None."
            )
        self._check_arrays()  # (before `check_interval` takes the weight's dtype)
        x = as_jax_array("x", x)
        if x.shape != (self.n_inputs,):
            raise ValueError(
                f"`x` must have shape (n_inputs,) = ({self.n_inputs},), got {x.shape}."
            )
        check_finite("x", x)
        check_fits("x", x, x.astype(self.dtype))
        check_interval(interval, dtype=self.dtype)  # (one interval: a scalar)
        sol = self._run(x[None], interval, state, None, throw, keep=False)
        return sol.final_state, sol.counts[0]


def _state_fields_differ(state, init) -> str:
    """Where `state` is of the model's state class but its fields are not set as
    `init` (the model's initial state) sets them, which: a field that is `None`
    in one and an array in the other (the same class serves models with and
    without a refractory period)."""
    if type(state) is not type(init) or not dataclasses.is_dataclass(state):
        return ""
    differ = [
        f"`{f.name}` is {'None' if getattr(state, f.name) is None else 'set'} "
        f"where this layer's model needs "
        f"{'None' if getattr(init, f.name) is None else 'an array'}"
        for f in dataclasses.fields(state)
        if (getattr(state, f.name) is None) != (getattr(init, f.name) is None)
    ]
    if not differ:  # (another structure within a field)
        ours, theirs = jax.tree.structure(state), jax.tree.structure(init)
        differ = [f"its structure is {ours}, not {theirs}"]
    return f" ({'; '.join(differ)})"


_integrate_jit = eqx.filter_jit(integrate)
_integrate_events_jit = eqx.filter_jit(integrate_events)
_integrate_saving_jit = eqx.filter_jit(integrate_saving)
_integrate_events_saving_jit = eqx.filter_jit(integrate_events_saving)

_ZERO_DELAY_SAVE = (
    "`save_times` on a recurrent layer needs `delay > 0` (got delay=0.0): with zero "
    "delay, spikes cascade within one instant in an order the spike record does "
    "not keep, so the state there cannot be replayed from it."
)
