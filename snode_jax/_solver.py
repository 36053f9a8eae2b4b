"""Solvers for one step of the membrane dynamics, and the adaptive step."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._custom_types import NeuronFloat, State
from ._dynamics import AbstractClosedFormDynamics, AbstractDynamics


class AbstractSolver(eqx.Module):
    """Advances a population's state by one step of per-neuron size `h` (ms)."""

    @abc.abstractmethod
    def step(
        self, dynamics: AbstractDynamics, t: NeuronFloat, y: State, current, h
    ) -> tuple[State, State | None, PyTree[Array]]:
        """Returns `(y1, y_error, dense)`: the state at `t + h`, the error estimate
        (`None` for an exact step) and what [`AbstractSolver.evaluate_dense`][] needs
        to give the solution anywhere inside the step: a pytree whose every leaf has
        the neuron axis first (crossings are located on subsets of neurons)."""

    @abc.abstractmethod
    def evaluate_dense(
        self, dynamics: AbstractDynamics, dense: PyTree[Array], fraction: NeuronFloat
    ) -> State:
        """The dense output at `t + fraction * h`, `fraction` in `[0, 1]` per neuron."""


class Exact(AbstractSolver):
    """Steps with the model's closed-form flow: no error, steps span the interval.

    **Arguments:**

    - `closed_form_events`: for models that give their crossings in closed form
        ([`AbstractClosedFormDynamics`][], such as the LIF), walk from spike to spike
        without any root finding (the default). With `False`, crossings are found by
        [`bisect_crossing`][] on the exact flow instead.
    """

    closed_form_events: bool = eqx.field(static=True, default=True)

    def step(self, dynamics, t, y, current, h):
        del t
        return dynamics.exact_flow(y, current, h), None, (y, current, h)

    def evaluate_dense(self, dynamics, dense, fraction):
        y, current, h = dense
        return dynamics.exact_flow(y, current, fraction * h)


class AbstractRungeKutta(AbstractSolver):
    """An explicit Runge-Kutta pair with an embedded error estimate."""

    c: ClassVar[np.ndarray]
    a: ClassVar[tuple[tuple[float, ...], ...]]
    b: ClassVar[np.ndarray]
    b_error: ClassVar[np.ndarray]
    error_order: ClassVar[int]
    # Weights for the solution at mid-step: a quartic dense output through y0, y1,
    # y_mid, f0, f1 (Shampine 1986). Without them, cubic Hermite. Either way the last
    # stage must be f(t + h, y1) (first same as last), as in Bosh3 and Dopri5.
    c_mid: ClassVar[np.ndarray | None] = None

    def step(self, dynamics, t, y, current, h):
        ks = []
        for i, ci in enumerate(map(float, self.c)):
            yi = y
            for aij, kj in zip(self.a[i - 1] if i else (), ks):
                if aij != 0:
                    yi = jax.tree.map(lambda acc, k: acc + (h * float(aij)) * k, yi, kj)
            ks.append(dynamics.vector_field(t + ci * h, yi, current))

        def combine(weights):
            out = None
            for w, k in zip(weights, ks):
                if w == 0:
                    continue
                term = jax.tree.map(lambda kk: (h * float(w)) * kk, k)
                out = term if out is None else jax.tree.map(jnp.add, out, term)
            return out

        y1 = jax.tree.map(jnp.add, y, combine(self.b))
        f0 = jax.tree.map(lambda k: h * k, ks[0])
        f1 = jax.tree.map(lambda k: h * k, ks[-1])
        if self.c_mid is None:

            def cubic(y0, y1, f0, f1):
                a = 2 * (y0 - y1) + f0 + f1
                b = 3 * (y1 - y0) - 2 * f0 - f1
                return (a, b, f0, y0)

            dense = jax.tree.map(cubic, y, y1, f0, f1)
        else:
            y_mid = jax.tree.map(jnp.add, y, combine(self.c_mid))

            def quartic(y0, y1, ym, f0, f1):
                a = 2 * (f1 - f0) - 8 * (y1 + y0) + 16 * ym
                b = 5 * f0 - 3 * f1 + 18 * y0 + 14 * y1 - 32 * ym
                c = f1 - 4 * f0 - 11 * y0 - 5 * y1 + 16 * ym
                return (a, b, c, f0, y0)

            dense = jax.tree.map(quartic, y, y1, y_mid, f0, f1)
        return y1, combine(self.b_error), dense

    def evaluate_dense(self, dynamics, dense, fraction):
        # Per state leaf, a tuple of polynomial coefficients (highest degree first),
        # each with the neuron axis first.
        def horner(coeffs):
            s = jnp.reshape(fraction, fraction.shape + (1,) * (coeffs[0].ndim - 1))
            out = coeffs[0]
            for c in coeffs[1:]:
                out = out * s + c
            return out

        return jax.tree.map(horner, dense, is_leaf=lambda x: isinstance(x, tuple))


class Bosh3(AbstractRungeKutta):
    """Bogacki-Shampine 3(2) pair."""

    c = np.array([0.0, 1 / 2, 3 / 4, 1.0])
    a = ((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9))
    b = np.array([2 / 9, 1 / 3, 4 / 9, 0.0])
    b_error = b - np.array([7 / 24, 1 / 4, 1 / 3, 1 / 8])
    error_order = 3


class Dopri5(AbstractRungeKutta):
    """Dormand-Prince 5(4) pair."""

    c = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
    a = (
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    )
    b = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
    b_error = b - np.array(
        [
            5179 / 57600,
            0.0,
            7571 / 16695,
            393 / 640,
            -92097 / 339200,
            187 / 2100,
            1 / 40,
        ]
    )
    error_order = 5
    c_mid = np.array(
        [
            6025192743 / 30085553152 / 2,
            0,
            51252292925 / 65400821598 / 2,
            -2691868925 / 45128329728 / 2,
            187940372067 / 1594534317056 / 2,
            -1776094331 / 19743644256 / 2,
            11237099 / 235043384 / 2,
        ]
    )


class Tsit5(AbstractRungeKutta):
    """Tsitouras 5(4) pair (Tsitouras 2011): seven stages, first same as last, the
    same cost per step as Dopri5 with smaller error coefficients (diffrax's
    default). Dense output: the quartic through the step's ends, slopes and its
    own continuous extension at mid-step."""

    c = np.array([0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0])
    a = (
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (
            5.325864828439257,
            -11.748883564062828,
            7.4955393428898365,
            -0.09249506636175525,
        ),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        (
            0.09646076681806523,
            0.01,
            0.4798896504144996,
            1.379008574103742,
            -3.290069515436081,
            2.324710524099774,
        ),
    )
    b = np.array([*a[-1], 0.0])  # first same as last: the last stage is at y1
    b_error = np.array(
        [
            0.0017800110522257773,
            0.0008164344596567463,
            -0.007880878010261994,
            0.1447110071732629,
            -0.5823571654525552,
            0.45808210592918686,
            -0.015151515151515152,
        ]
    )
    error_order = 5
    c_mid = np.array(
        [
            0.10741235230096871,
            0.01135625,
            0.39560903056045305,
            -0.34475214352593553,
            1.3161853649581645,
            -1.0170608542936508,
            0.03125,
        ]
    )


class StepProposal(eqx.Module):
    """What [`adaptive_step`][] returns.

    **Fields:**

    - `y1`: the proposed state at `t + h`.
    - `error_norm`: per neuron, the scaled error `||err / (atol + rtol |y|)||_rms`
        (0 for an exact step); the step is acceptable when it is `<= 1`.
    - `exact`: True when the step came from a closed-form flow.
    - `accept`: per neuron, whether the step is accepted (error within tolerance, or
        the step is already at `dt_min`).
    - `at_dt_min`: per neuron, whether it was accepted only because `h <= dt_min`.
    - `h_next`: per neuron, the next step size (ms); `inf` for an exact flow, meaning
        "to the end of the interval".
    - `dense`: the dense output of the step, for `solver.evaluate_dense`.
    """

    y1: State
    error_norm: Float[Array, " n_neurons"]
    exact: bool = eqx.field(static=True)
    accept: Bool[Array, " n_neurons"]
    at_dt_min: Bool[Array, " n_neurons"]
    h_next: Float[Array, " n_neurons"]
    dense: PyTree[Array]


def _rms_norm(error: State, y0: State, y1: State, rtol, atol) -> NeuronFloat:
    def leaf(e, a, b):
        scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
        sq = (e / scale) ** 2
        return jnp.reshape(sq, sq.shape[:1] + (-1,))

    parts = jax.tree.leaves(jax.tree.map(leaf, error, y0, y1))
    total = sum(jnp.sum(p, axis=1) for p in parts)
    return jnp.sqrt(total / sum(p.shape[1] for p in parts))


def adaptive_step(
    dynamics: AbstractDynamics,
    solver: AbstractSolver,
    t: NeuronFloat,
    y: State,
    current: NeuronFloat,
    h: NeuronFloat,
    *,
    rtol: float,
    atol: float,
    dt_min: float,
    dt_max: float,
    h_prev: NeuronFloat | None = None,
    error_prev: NeuronFloat | None = None,
) -> StepProposal:
    """Propose one step of size `h` (ms) per neuron and the size of the next one.

    An exact solver returns the closed-form flow, `error_norm = 0` and
    `h_next = inf`. A Runge-Kutta pair returns its higher-order solution, the RMS
    norm of its embedded error estimate, and the next step from the standard
    controller `h * clip(0.9 * error_norm ** (-1 / error_order), 0.2, 10)`, kept
    within `[dt_min, dt_max]`. A step no larger than `dt_min` is accepted whatever its
    error (and flagged `at_dt_min`).

    Given the last accepted step (`h_prev`, `error_prev`), an accepted step's
    successor is also kept within the predictive (Gustafsson) controller's proposal
    `h * 0.9 (h / h_prev) (error_prev / error_norm^2) ** (1 / error_order)` (with
    `error_prev` floored at 1e-2), which assumes that `error_norm / h^error_order`
    keeps changing by the ratio it changed over the last step. On an accelerating
    upswing (AdEx, Izhikevich, QIF before a spike) the standard controller alone
    overshoots every other step; the predictive one avoids most of those rejections.
    The growth factor is computed in single precision (it is a heuristic).

    **Arguments:**

    - `dynamics`: the neuron model.
    - `solver`: an [`Exact`][] solver or a Runge-Kutta pair ([`Dopri5`][], [`Bosh3`][]).
    - `t`, `y`, `current`, `h`: per-neuron time (ms), state, input current and step.
    - `rtol`, `atol`: relative and absolute error tolerances.
    - `dt_min`, `dt_max`: step-size bounds (ms).
    - `h_prev`, `error_prev`: per neuron, the size and error norm of the last
        accepted step (`0` where there is none, e.g. after a reset), or both `None`
        for the standard controller alone.

    **Returns:**

    A [`StepProposal`][].
    """
    if (h_prev is None) != (error_prev is None):
        raise ValueError(
            "`h_prev` and `error_prev` are given together or not at all; got "
            f"h_prev={h_prev!r}, error_prev={error_prev!r}"
        )
    y1, y_error, dense = solver.step(dynamics, t, y, current, h)
    if y_error is None:
        zeros = jnp.zeros_like(h)
        true = jnp.ones(h.shape, bool)
        return StepProposal(
            y1,
            zeros,
            True,
            true,
            jnp.zeros(h.shape, bool),
            jnp.full_like(h, jnp.inf),
            dense,
        )
    assert isinstance(solver, AbstractRungeKutta)
    err = _rms_norm(y_error, y, y1, rtol, atol)
    at_min = h <= dt_min * (1 + 1e-6)
    ok = err <= 1
    accept = ok | at_min
    k = solver.error_order
    # The factor is a heuristic: its powers are taken as exp(log) in single
    # precision, several times cheaper on CPU than a double-precision power, per
    # neuron and step. (err = 0 gives growth 10, err = inf the floor 0.2.)
    log_err = jnp.log(err.astype(jnp.float32))
    exponent = -log_err / k
    if error_prev is not None:
        # Predictive (Gustafsson) control after an accepted step: if `err / h^k` keeps
        # changing by the ratio it changed since the last accepted step (as on an
        # accelerating upswing), the next step keeps its error within tolerance. The
        # smaller of the two proposals is taken.
        known = ok & (err > 0) & (error_prev > 0) & (h_prev > 0)
        e0 = jnp.maximum(jnp.where(known, error_prev, 1), 1e-2)
        ratio = h / jnp.where(known, h_prev, h)
        log_e0 = jnp.log(e0.astype(jnp.float32))
        predictive = jnp.log(ratio.astype(jnp.float32)) + (log_e0 - 2 * log_err) / k
        exponent = jnp.where(known, jnp.minimum(exponent, predictive), exponent)
    factor = jnp.clip(0.9 * jnp.exp(exponent), 0.2, 10.0)
    factor = jnp.where(jnp.isfinite(err), factor, 0.2).astype(h.dtype)
    h_next = jnp.clip(h * factor, dt_min, dt_max)
    return StepProposal(y1, err, False, accept, at_min & ~ok, h_next, dense)


def default_solver(dynamics: AbstractDynamics) -> AbstractSolver:
    """The best solver the model allows: its exact flow if it has one, else Dopri5."""
    if isinstance(dynamics, AbstractClosedFormDynamics) or dynamics.has_exact_flow:
        return Exact()
    return Dopri5()
