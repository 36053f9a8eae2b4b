"""Trainable spiking layers built on the integration loop."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._controller import PredictiveController
from ._custom_types import Counts, State
from ._dynamics import AbstractDynamics, AbstractExactFlowDynamics
from ._integrate import integrate
from ._lif import ODELIFDynamics
from ._misc import check_interval, check_positive_float, check_positive_int, is_concrete
from ._root_find import BracketedNewton
from ._runge_kutta import AbstractRungeKutta, Dopri5
from ._solution import Solution
from ._solver import Exact, ExactFlow, check_solver
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
        `0 < dt_min <= dt_init`. Spike-time precision does not depend on it:
        crossings are located by a search with its own, much tighter, tolerance.
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
        takes one step per spike plus one).
    - `max_root_iters`: iteration budget of the crossing search (default 200); or
    - `root_finder`: a [`BracketedNewton`][] (then no `max_root_iters`).
    - `surrogate`: the surrogate derivative given to spike counts (their values stay
        exact): [`ArctanSurrogate`][] (default), [`SigmoidSurrogate`][] or
        [`FastSigmoidSurrogate`][]. Spike times and voltages are differentiated
        exactly and do not use it.
    - `dtype`: floating dtype of `weight`; default JAX's default float.
    - `key`: PRNG key for the weight, drawn from `N(0, 2 / n_inputs)`.

    **Raises:**

    `ValueError`/`TypeError` for non-positive sizes or step bounds, `dt_min > dt_init`,
    a solver the model cannot use, or dynamics parameters whose shape is neither
    scalar nor `(n_neurons,)`.
    """

    weight: Float[Array, "n_neurons n_inputs"]
    dynamics: AbstractDynamics
    solver: Exact | ExactFlow | AbstractRungeKutta | diffrax.AbstractAdaptiveSolver
    stepsize_controller: PredictiveController
    root_finder: BracketedNewton
    surrogate: AbstractSurrogate
    n_inputs: int = eqx.field(static=True)
    n_neurons: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

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
        dtype=None,
        key: PRNGKeyArray,
    ):
        self.n_inputs = check_positive_int("n_inputs", n_inputs)
        self.n_neurons = check_positive_int("n_neurons", n_neurons)
        self.stepsize_controller = _controller(
            stepsize_controller, dt_init, dt_min, dt_max, rtol, atol
        )
        self.max_steps = check_positive_int("max_steps", max_steps)
        if root_finder is None:
            iters = 200 if max_root_iters is None else max_root_iters
            root_finder = BracketedNewton(
                max_steps=check_positive_int("max_root_iters", iters)
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
        self.dynamics = dynamics
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
        dtype = jnp.result_type(float) if dtype is None else dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"`dtype` must be a floating dtype, got {dtype!r}.")
        std = float(np.sqrt(2.0 / self.n_inputs))  # a Python float keeps `dtype`
        self.weight = std * jax.random.normal(
            key, (self.n_neurons, self.n_inputs), dtype
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

    def _check_inputs(self, inputs) -> Array:
        inputs = jnp.asarray(inputs)
        expected = f"(time, n_inputs) = (T, {self.n_inputs})"
        if inputs.ndim != 2 or inputs.shape[1] != self.n_inputs or inputs.shape[0] < 1:
            raise ValueError(
                f"`inputs` must have shape {expected} with T >= 1, got shape "
                f"{inputs.shape}. For a batch, use jax.vmap over the leading axis."
            )
        if is_concrete(inputs) and not np.all(np.isfinite(np.asarray(inputs))):
            raise ValueError(
                f"`inputs` must be finite, got NaN or inf in {inputs.shape}."
            )
        # The layer's dtype (that of `weight`) sets the precision of the simulation.
        return inputs.astype(self.dtype)

    def _check_state(self, state):
        expected = jax.tree.structure(self.init_state())
        if jax.tree.structure(state) != expected:
            raise ValueError(
                f"`state` must be a {type(self.init_state()).__name__} "
                f"(from `init_state()`), got {state!r}."
            )
        for leaf in jax.tree.leaves(state):
            if jnp.shape(leaf) != (self.n_neurons,):
                raise ValueError(
                    f"`state` arrays must have shape ({self.n_neurons},), got "
                    f"{jnp.shape(leaf)}."
                )
        return state

    def _run(self, inputs, interval, state, max_spikes, throw, keep=True) -> Solution:
        inputs = self._check_inputs(inputs)
        check_interval(interval, inputs.shape[0])
        state = self.init_state() if state is None else self._check_state(state)
        return _integrate_jit(
            self.dynamics,
            self.solver,
            self.weight,
            inputs,
            jnp.asarray(interval),
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
        return self.dynamics.init_state(self.n_neurons, self.dtype)

    def simulate(
        self,
        inputs: Float[Array, "time n_inputs"],
        interval: float | Float[Array, ""],
        max_spikes: int = 64,
        *,
        state: State | None = None,
        throw: bool = True,
    ) -> Solution:
        """Simulate the layer and record spike times.

        **Arguments:**

        - `inputs`: shape `(T, n_inputs)`; row `k` is held over interval `k`.
        - `interval`: length of each interval (ms), `> 0`; or one length per
            interval, shape `(T,)` (intervals of different lengths).
        - `max_spikes`: spike times stored per neuron (counts are exact regardless).
        - `state`: initial state; default the resting state.
        - `throw`: raise if the result is not successful (step budget or spike buffer
            exhausted, NaN/inf input, invalid parameters). With `False`, inspect
            `sol.result` instead.

        **Returns:**

        A [`Solution`][]: `counts`, `spike_times` (ms from the start, ascending,
        `+inf` padded), `final_state`, `interval_states`, `stats`, `result`.

        **Raises:**

        `ValueError` for a bad shape, `interval` or `max_spikes`; with `throw=True`, a
        runtime error carrying the `RESULTS` message (or the failed condition of the
        model) if the simulation failed. Wrap calls in `eqx.filter_jit` rather than
        `jax.jit`: under `jax.jit` the message arrives buried in an `INTERNAL:
        CpuCallback error` traceback, under `eqx.filter_jit` it prints cleanly.
        """
        if isinstance(max_spikes, bool) or not isinstance(
            max_spikes, (int, np.integer)
        ):
            raise TypeError(f"`max_spikes` must be an int >= 0, got {max_spikes!r}.")
        if max_spikes < 0:
            raise ValueError(f"`max_spikes` must be an int >= 0, got {max_spikes!r}.")
        return self._run(inputs, interval, state, int(max_spikes), throw)

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
        """
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
        """
        x = jnp.asarray(x)
        if x.shape != (self.n_inputs,):
            raise ValueError(
                f"`x` must have shape (n_inputs,) = ({self.n_inputs},), got {x.shape}."
            )
        sol = self._run(x[None], interval, state, None, throw, keep=False)
        return sol.final_state, sol.counts[0]


_integrate_jit = eqx.filter_jit(integrate)


def _controller(controller, dt_init, dt_min, dt_max, rtol, atol):
    """The layer's step controller, from its keyword settings or given whole."""
    given = dict(dt_init=dt_init, dt_min=dt_min, dt_max=dt_max, rtol=rtol, atol=atol)
    given = {k: v for k, v in given.items() if v is not None}
    if controller is not None:
        if given:
            raise ValueError(
                "Give the step settings either as `stepsize_controller` or as "
                f"keywords, not both: got stepsize_controller and {sorted(given)}."
            )
        if not isinstance(controller, PredictiveController):
            raise TypeError(
                "`stepsize_controller` must be a PredictiveController (a diffrax "
                "adaptive step-size controller with per-neuron steps), got "
                f"{type(controller).__name__}."
            )
        return controller
    dt_init = check_positive_float(
        "dt_init", 0.1 if dt_init is None else dt_init, " (ms)"
    )
    dt_min = check_positive_float(
        "dt_min", 0.001 if dt_min is None else dt_min, " (ms)"
    )
    if dt_min > dt_init:
        raise ValueError(
            f"`dt_min` must be <= `dt_init`, got dt_min={dt_min!r} and "
            f"dt_init={dt_init!r}."
        )
    if dt_max is None:
        dt_max = float("inf")
    else:
        dt_max = check_positive_float("dt_max", dt_max, " (ms)")
        if dt_max < dt_init:
            raise ValueError(
                f"`dt_max` must be >= `dt_init`, got dt_max={dt_max!r} and "
                f"dt_init={dt_init!r}."
            )
    return PredictiveController(
        rtol=check_positive_float("rtol", 1e-6 if rtol is None else rtol),
        atol=check_positive_float("atol", 1e-8 if atol is None else atol),
        dtmin=dt_min,
        dtmax=dt_max,
        dt0=dt_init,
    )
