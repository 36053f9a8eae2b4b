"""Elementary functions where XLA's own are slow: `log` (and `log1p` from it) in
float64 on CPU.

XLA:CPU vectorises its float32 logarithm but evaluates the float64 one a value at
a time. The closed-form LIF takes a logarithm per neuron and interval where it is
refractory, and two per slot where it records spike times; with the formula below,
written in vector operations, its float64 `simulate` took 0.77-0.86x the time
(`bench/bench_log.py`, in `bench/RESULTS.md`).
"""

import jax
import jax.lax as lax
import jax.numpy as jnp

# fdlibm's `__ieee754_log` (e_log.c, Sun Microsystems 1993): x = 2**k (1 + f) with
# sqrt(2) / 2 <= 1 + f < sqrt(2); s = f / (2 + f); log(1 + f) = 2 atanh(s)
# = f - s (f - R), with R(s**2) the minimax polynomial below. Error under 1 ulp.
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_LN2_HI = 6.93147180369123816490e-01  # ln 2, its leading 32 bits
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_TINY = 2.2250738585072014e-308  # the smallest normal float64
_TWO54 = 18014398509481984.0


def _log_float64(x):
    # Subnormals are scaled into the normal range first (XLA:CPU flushes them to
    # zero anyway, and so does its `log`).
    sub = x < _TINY
    xs = jnp.where(sub, x * _TWO54, x)
    bits = lax.bitcast_convert_type(xs, jnp.int64)
    hx = (bits >> 32).astype(jnp.int32)  # sign, exponent, top 20 mantissa bits
    k = (hx >> 20) - 1023 - jnp.where(sub, 54, 0)
    hx = hx & 0x000FFFFF
    # Normalise the mantissa into [sqrt(2) / 2, sqrt(2)), moving one power of two
    # into `k` where it is at least sqrt(2) (0x6A09E is sqrt(2)'s top 20 bits).
    i = (hx + 0x95F64) & 0x100000
    k = k + (i >> 20)
    high = (hx | (i ^ 0x3FF00000)).astype(jnp.int64) << 32
    m = lax.bitcast_convert_type(high | (bits & 0xFFFFFFFF), jnp.float64)
    f = m - 1.0
    s = f / (2.0 + f)
    dk = k.astype(jnp.float64)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    r = t2 + t1
    # fdlibm's sum for mantissas away from 1 (it has a second one near 1). This
    # one alone stayed under one ulp there too (0.87 ulp at most over some 100
    # million values chosen to find the worst; tests/test_math.py checks 650
    # thousand), in fewer operations.
    hfsq = 0.5 * f * f
    out = dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)
    out = jnp.where(x == 0, -jnp.inf, out)
    out = jnp.where(x == jnp.inf, jnp.inf, out)
    return jnp.where((x < 0) | jnp.isnan(x), jnp.nan, out)


def _vectorised(x, formula, xla_own):
    """`formula(x)` for a float64 `x` on CPU; `xla_own(x)` on other backends, for
    other dtypes and for weakly typed Python numbers (which stay weak)."""
    x = jnp.asarray(x)
    if x.dtype != jnp.float64 or getattr(x, "weak_type", False):
        return xla_own(x)
    return lax.platform_dependent(x, cpu=formula, default=xla_own)


@jax.custom_jvp
def log(x):
    """`jnp.log`, evaluated in vector operations for float64 on CPU (within one
    ulp; XLA's own elsewhere, for other dtypes and for weakly typed Python
    numbers). Its derivative is `1 / x`."""
    return _vectorised(x, _log_float64, jnp.log)


@log.defjvp
def _log_jvp(primals, tangents):
    # Differentiated, the value is XLA's own (it differs by an ulp at most): with
    # the formula, the refractory LIF's float64 gradient took 1.06-1.12x the time
    # (`value_and_grad` of a spike-time loss at 64 x 256 x 100; its program held
    # the formula 10 times, `simulate`'s 4).
    (x,), (dx,) = primals, tangents
    return jnp.log(x), dx / x


def _log1p_float64(x):
    # Goldberg's formula (1991, "What every computer scientist should know about
    # floating-point arithmetic", theorem 4): log(w) * x / (w - 1), w = 1 + x,
    # cancels the rounding of `w` to first order (within a few ulp), exact where
    # `w` rounds to 1. `w` passes an optimisation barrier: XLA would otherwise
    # simplify `(1 + x) - 1` to `x`, and the formula to `log(1 + x)`.
    w = lax.optimization_barrier(1 + x)
    near = w == 1
    return jnp.where(near, x, log(w) * (x / jnp.where(near, 1, w - 1)))


@jax.custom_jvp
def log1p(x):
    """`jnp.log1p`, evaluated in vector operations for float64 on CPU (from
    [`log`][]; within a few ulp), XLA's own elsewhere. Accurate where `x` is
    small: for the logarithm of a ratio close to 1, written as one plus a
    difference computed without cancellation. For `x > -1`. Its derivative is
    `1 / (1 + x)`."""
    return _vectorised(x, _log1p_float64, jnp.log1p)


@log1p.defjvp
def _log1p_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return log1p(x), dx / (1 + x)


def relax(v, v_inf, x):
    """`v_inf + (v - v_inf) e^{-x}` (`x >= 0`): the value that relaxes from `v`
    towards `v_inf` over `x` time constants, to the precision of `v`, `v_inf` and
    the change. For `x` below `ln 2` as `v + (v - v_inf) (e^{-x} - 1)` (`expm1`):
    written with the rounded factor `e^{-x}`, a relative error of about
    `eps / (2x)` in the change, the same for every step of that length, adds up
    over many short steps. For longer `x` as written: there the change is most of
    `v - v_inf`, which the `expm1` form would take from a difference of two
    values of about that size."""
    e = jnp.exp(-x)
    near = v + (v - v_inf) * jnp.expm1(-x)
    far = v_inf + (v - v_inf) * e
    return jnp.where(e > 0.5, near, far)
