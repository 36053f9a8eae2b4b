"""`_math.log`: fdlibm's logarithm in vector operations for float64 on CPU; and
`_math.log1p` from it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snode_jax._math import log, log1p

_log = jax.jit(log)


# x86's 80-bit long double has 11 more bits than float64: against it the error
# bound is fdlibm's, under one ulp; against NumPy's float64 log (itself within
# half an ulp), 1.5.
_EXTENDED = np.finfo(np.longdouble).nmant >= 60
_BOUND = 1.0 if _EXTENDED else 1.5


def _ulps(got, x, exact=np.log):
    """Error of `got` in units in the last place of `exact(x)` (log(x))."""
    ref = exact(x.astype(np.longdouble if _EXTENDED else np.float64))
    spacing = np.spacing(np.abs(ref.astype(np.float64)))
    return np.abs(got.astype(ref.dtype) - ref) / spacing


@pytest.mark.parametrize(
    "sample",
    [
        lambda rng: np.exp(rng.uniform(-700.0, 700.0, 200_000)),  # every exponent
        lambda rng: rng.uniform(0.5, 2.0, 200_000),  # across sqrt(2): renormalised
        lambda rng: 1.0 + rng.uniform(-1e-6, 1e-6, 50_000),  # log near 0
        lambda rng: rng.uniform(1.0, 50.0, 200_000),  # the LIF's ratios
    ],
    ids=["all_exponents", "mantissas", "near_one", "lif_ratios"],
)
def test_within_one_ulp(sample):
    x = sample(np.random.default_rng(0))
    got = np.asarray(_log(jnp.asarray(x, jnp.float64)))
    assert np.max(_ulps(got, x)) < _BOUND


def test_special_values_as_xla():
    # Zero, infinity, negatives and NaN as `jnp.log` gives them; so are the
    # subnormals, which XLA:CPU flushes to zero (-inf), whichever rule applies.
    x = jnp.asarray(
        [0.0, -0.0, 5e-324, 1e-310, 2.2250738585072014e-308, 1.0, np.inf, -1.0]
        + [-np.inf, np.nan, 1.7976931348623157e308, np.nextafter(1.0, 0.0)],
        jnp.float64,
    )
    np.testing.assert_array_equal(np.asarray(_log(x)), np.asarray(jnp.log(x)))
    assert np.asarray(_log(x))[0] == -np.inf
    assert np.isnan(np.asarray(_log(x))[7])


def test_derivatives_and_transforms():
    x = jnp.asarray([0.3, 1.0, 7.5, 1e100], jnp.float64)
    grads = jax.jit(jax.vmap(jax.grad(log)))(x)
    np.testing.assert_allclose(np.asarray(grads), 1.0 / np.asarray(x), rtol=1e-15)
    second = jax.vmap(jax.grad(jax.grad(log)))(x)
    np.testing.assert_allclose(
        np.asarray(second), -1.0 / np.asarray(x) ** 2, rtol=1e-15
    )
    _, tangent = jax.jvp(log, (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(np.asarray(tangent), 1.0 / np.asarray(x), rtol=1e-15)
    batched = jax.vmap(log)(x.reshape(2, 2))
    np.testing.assert_array_equal(np.asarray(batched).ravel(), np.asarray(_log(x)))


def test_derivative_off_the_domain_as_xla():
    # At zero and below, the derivative is still 1 / x, as `jnp.log`'s.
    x = jnp.asarray([-2.0, -0.0, 0.0, 0.5], jnp.float64)
    ours = jax.vmap(jax.grad(log))(x)
    xlas = jax.vmap(jax.grad(jnp.log))(x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(xlas))


def test_differentiated_value_is_xlas():
    # Under differentiation the value comes from XLA's own log (the formula made
    # the refractory LIF's float64 gradient slower, see `_math._log_jvp`).
    x = jnp.asarray(np.random.default_rng(1).uniform(0.5, 40.0, 1000))
    value, _ = jax.jit(lambda x: jax.jvp(log, (x,), (jnp.ones_like(x),)))(x)
    np.testing.assert_array_equal(np.asarray(value), np.asarray(jax.jit(jnp.log)(x)))


def test_weak_python_numbers_stay_weak():
    # A Python float is XLA's own log, weakly typed: it does not promote float32.
    y = jnp.ones(3, jnp.float32)
    assert (log(2.0) * y).dtype == jnp.float32
    assert jax.jit(log)(2.0).weak_type
    np.testing.assert_array_equal(np.asarray(log(2.0)), np.asarray(jnp.log(2.0)))


def test_other_dtypes_are_xlas_own():
    x = jnp.linspace(0.1, 9.0, 101, dtype=jnp.float32)
    got = _log(x)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(jnp.log)(x)))


_XLA_LOG = re.compile(r"\s(log|log-plus-one)\(")


def test_cpu_float64_program_has_no_xla_log():
    # The point of the function: on CPU XLA evaluates its own float64 `log` one
    # value at a time. The compiled program holds none (a float32 one does).
    if jax.default_backend() != "cpu":
        pytest.skip("the vector formula is used on CPU only")
    x64 = jnp.ones((8,), jnp.float64)
    x32 = jnp.ones((8,), jnp.float32)
    assert not _XLA_LOG.search(_log.lower(x64).compile().as_text())
    assert _XLA_LOG.search(_log.lower(x32).compile().as_text())


# -- log1p -----------------------------------------------------------------------

_log1p = jax.jit(log1p)


@pytest.mark.parametrize(
    "sample",
    [
        lambda rng: np.exp(rng.uniform(-700.0, 0.0, 100_000)),  # tiny to 1
        lambda rng: rng.uniform(-0.5, 50.0, 100_000),  # the LIF's rises
        lambda rng: np.exp(rng.uniform(-40.0, 600.0, 100_000)),  # large
    ],
    ids=["small", "lif_rises", "large"],
)
def test_log1p_within_a_few_ulp(sample):
    # Compiled (the formula's correction is what XLA would simplify away: then
    # 1e-6 came out 1e-11 relative off, some 10^5 ulp).
    x = sample(np.random.default_rng(2))
    got = np.asarray(_log1p(jnp.asarray(x, jnp.float64)))
    assert np.max(_ulps(got, x, np.log1p)) < 4


def test_log1p_derivatives_and_other_dtypes():
    x = jnp.asarray([1e-12, 3e-6, 0.5, 40.0], jnp.float64)
    grads = jax.jit(jax.vmap(jax.grad(log1p)))(x)
    np.testing.assert_allclose(np.asarray(grads), 1.0 / (1.0 + np.asarray(x)), 1e-15)
    exact = jax.jit(lambda x: log1p(x) - x)(jnp.asarray([1e-300, 0.0]))
    np.testing.assert_array_equal(np.asarray(exact), 0.0)  # 1 + x rounds to 1
    x32 = jnp.asarray([1e-7, 3e-3, 2.0], jnp.float32)
    got = _log1p(x32)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(jnp.log1p)(x32)))
    if jax.default_backend() == "cpu":
        assert not _XLA_LOG.search(_log1p.lower(x).compile().as_text())
