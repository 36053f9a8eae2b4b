"""Explicit Runge-Kutta pairs with dense output, stepping a whole population."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ._solver import AbstractStepper


class AbstractRungeKutta(AbstractStepper):
    """An explicit Runge-Kutta pair with an embedded error estimate, acting on a
    whole population at once (each neuron with its own `t0`, `t1`).

    These pairs are written out here, stages unrolled and zero coefficients
    skipped, because diffrax's own solvers stepped per neuron (`jax.vmap` over
    `diffrax.Tsit5().step`, which runs its stages in a checkpointed loop over a
    stage buffer) cost up to 11x more per step on CPU: AdEx float64, 16384 neurons,
    Tsit5 465 us vs 1932 us per step; Izhikevich float32 109 us vs 1198 us; only
    AdEx at 256 neurons in float64 is near par (1.0-1.2x). See
    `bench/bench_rk_step.py` and bench/RESULTS.md. diffrax's solvers are accepted
    too (`solver=diffrax.Tsit5()`, `Dopri8()`, `Kvaerno5()`, ...), see
    [`DiffraxStepper`][].
    """

    c: ClassVar[np.ndarray]
    a: ClassVar[tuple[tuple[float, ...], ...]]
    b: ClassVar[np.ndarray]
    b_error: ClassVar[np.ndarray]
    order: ClassVar[int]
    # Weights for the solution at mid-step: a quartic dense output through y0, y1,
    # y_mid, f0, f1 (Shampine 1986). Without them, cubic Hermite. Either way the last
    # stage must be f(t + h, y1) (first same as last), as in Bosh3 and Dopri5.
    c_mid: ClassVar[np.ndarray | None] = None

    def error_order(self):
        return self.order

    def step(self, dynamics, t0, t1, y0, current):
        t, y, h = t0, y0, t1 - t0
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

            def cubic(y0, y1, f0, f1):  # Hermite
                a = 2 * (y0 - y1) + f0 + f1
                b = 3 * (y1 - y0) - 2 * f0 - f1
                return (a, b, f0, y0)

            per_leaf = jax.tree.map(cubic, y, y1, f0, f1)
        else:
            y_mid = jax.tree.map(jnp.add, y, combine(self.c_mid))

            def quartic(y0, y1, ym, f0, f1):  # through y_mid too
                a = 2 * (f1 - f0) - 8 * (y1 + y0) + 16 * ym
                b = 5 * f0 - 3 * f1 + 18 * y0 + 14 * y1 - 32 * ym
                c = f1 - 4 * f0 - 11 * y0 - 5 * y1 + 16 * ym
                return (a, b, c, f0, y0)

            per_leaf = jax.tree.map(quartic, y, y1, y_mid, f0, f1)
        # The dense output: the polynomial's coefficients in the fraction of the
        # step (highest degree first), each a pytree of the state's structure (a
        # tuple of them per state leaf would be confused with a state that is a
        # tuple itself).
        n_coefficients = 4 if self.c_mid is None else 5
        dense = jax.tree.transpose(
            jax.tree.structure(y), jax.tree.structure((0,) * n_coefficients), per_leaf
        )
        return y1, combine(self.b_error), (t0, t1, dense)

    def evaluate(self, dynamics, dense, s):
        # The polynomial's coefficients (highest degree first), each a pytree of
        # the state's structure whose leaves have the neuron axis first.
        t0, t1, coeffs = dense
        span = t1 - t0
        fraction = jnp.clip((s - t0) / jnp.where(span > 0, span, 1), 0, 1)

        def horner(*leaf_coeffs):
            shape = fraction.shape + (1,) * (leaf_coeffs[0].ndim - 1)
            s = jnp.reshape(fraction, shape)
            out = leaf_coeffs[0]
            for c in leaf_coeffs[1:]:
                out = out * s + c
            return out

        return jax.tree.map(horner, *coeffs)

    def end_directions(self, dynamics, dense, t0, t1):
        # The polynomial's derivative in the fraction at 0 (its linear coefficient,
        # `h f0`) and at 1 (the sum of degree times coefficient, `h f1`): the time
        # derivatives times the step, read off without evaluating anything.
        _, _, coeffs = dense
        degree = len(coeffs) - 1

        def at_end(*leaf_coeffs):
            out = leaf_coeffs[-2]
            for k, c in enumerate(leaf_coeffs[:-2]):
                out = out + (degree - k) * c
            return out

        return coeffs[-2], jax.tree.map(at_end, *coeffs)


class Bosh3(AbstractRungeKutta):
    """Bogacki-Shampine 3(2) pair."""

    c = np.array([0.0, 1 / 2, 3 / 4, 1.0])
    a = ((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9))
    b = np.array([2 / 9, 1 / 3, 4 / 9, 0.0])
    b_error = b - np.array([7 / 24, 1 / 4, 1 / 3, 1 / 8])
    order = 3


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
    order = 5
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
    order = 5
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
