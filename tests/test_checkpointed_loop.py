"""`checkpointed_while_loop` (the recurrent event engine's loop) against JAX's own
reverse mode through the same iterations written as a masked `lax.scan`: values and
gradients, for trip counts at and around the segment boundaries, a loop cut short
by its budget, one that does not run, a log rebuilt from the end state, and a
batch whose samples run for different numbers of iterations."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snode_jax._misc import tangent
from snode_jax._reverse import checkpointed_while_loop, segment_length

LOG = 40


class Carry(eqx.Module):
    x: jax.Array  # (3,), differentiated
    k: jax.Array  # iterations so far
    log: jax.Array  # (LOG,): x[0] of every iteration, appended
    num_logged: jax.Array


def make(p, derivatives):
    a, b, limit, scale = p["a"], p["b"], p["limit"], p["scale"]

    def cond(s):
        return (s.k < limit) & (jnp.sum(s.x) < 50.0)

    def body(s):
        # Reads the log (the value appended three iterations ago, once there is one).
        back = jnp.where(s.num_logged >= 3, s.log[jnp.maximum(s.num_logged - 3, 0)], 0)
        x = scale * jnp.tanh(a @ s.x + b * back) + 0.3 * s.x + 0.2
        if derivatives:
            # Zero in value, with a derivative: the body whose VJP is taken must
            # be the one made with `derivatives` (the runs leave it out).
            x = x + tangent(b * s.x[1] ** 2)
        log = s.log.at[s.num_logged].set(x[0], mode="drop")
        return Carry(x, s.k + 1, log, s.num_logged + 1)

    return cond, body


def strip(s):
    return dataclasses.replace(s, log=None)


def restore(s, end):
    kept = jnp.arange(LOG) < s.num_logged
    return dataclasses.replace(s, log=jnp.where(kept, end.log, jnp.nan))


def start(x0):
    return Carry(x0, jnp.int32(0), jnp.zeros((LOG,)), jnp.int32(0))


def reference(p, x0, max_steps):
    """The same loop as a scan of `max_steps` masked iterations."""
    cond, body = make(p, True)

    def step(s, _):
        return jax.tree.map(lambda n, o: jnp.where(cond(s), n, o), body(s), s), None

    return jax.lax.scan(step, start(x0), None, length=max_steps)[0]


def loss(end):
    return jnp.sum(end.x**2) + jnp.sum(jnp.sin(end.log)) + end.k


def params(limit):
    k = jax.random.split(jax.random.key(1), 2)
    return {
        "a": 0.8 * jax.random.normal(k[0], (3, 3), jnp.float64),
        "b": jnp.float64(0.5),
        "limit": jnp.int32(limit),
        "scale": 1.5,  # not an array: held
    }


X0 = jnp.array([0.1, -0.2, 0.3], jnp.float64)
MAX = 30
SEG = segment_length(MAX)  # 6


def ours(p, x0, max_steps=MAX):
    return checkpointed_while_loop(
        make, p, start(x0), max_steps, strip=strip, restore=restore
    )


def grads(f, p, x0):
    diff, rest = eqx.partition(p, eqx.is_inexact_array)
    value, (g_p, g_x) = jax.value_and_grad(
        lambda d, x: loss(f(eqx.combine(d, rest), x)), argnums=(0, 1)
    )(diff, x0)
    return value, g_p, g_x


@pytest.mark.parametrize("limit", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, MAX - 1, MAX])
def test_gradient_matches_scan_reference(limit):
    p = params(limit)
    end = eqx.filter_jit(ours)(p, X0)
    want = reference(p, X0, MAX)
    assert int(end.k) == limit  # the loop ran as many iterations as asked
    for a, b in zip(jax.tree.leaves(end), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    v, g_p, g_x = eqx.filter_jit(lambda p, x: grads(ours, p, x))(p, X0)
    v_ref, g_p_ref, g_x_ref = grads(lambda p, x: reference(p, x, MAX), p, X0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-14)
    np.testing.assert_allclose(g_x, g_x_ref, rtol=1e-11, atol=1e-13)
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    if limit > 0:
        assert float(jnp.abs(g_p["a"]).sum()) > 0


def test_budget_cuts_the_loop_and_its_gradient():
    # The loop would run 25 iterations; a budget of 8 stops it there.
    p = params(25)
    end = ours(p, X0, 8)
    assert int(end.k) == 8
    v, g_p, g_x = eqx.filter_jit(lambda p, x: grads(lambda p, x: ours(p, x, 8), p, x))(
        p, X0
    )
    v_ref, g_p_ref, g_x_ref = grads(lambda p, x: reference(p, x, 8), p, X0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-14)
    np.testing.assert_allclose(g_x, g_x_ref, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(g_p["a"], g_p_ref["a"], rtol=1e-11, atol=1e-13)


def test_vmapped_batch_with_different_trip_counts():
    # Each sample stops at its own limit: 0 to 30 iterations in one batch.
    p = params(MAX)
    x0s = jnp.stack([X0 * s for s in (1.0, 4.0, -3.0, 2.0)])
    limits = jnp.array([MAX, 11, 0, 17], jnp.int32)

    def batched(f):
        def total(diff, rest, xs):
            def one(x, lim):
                q = eqx.combine(diff, rest)
                return loss(f(dict(q, limit=lim), x))

            return jnp.sum(jax.vmap(one)(xs, limits))

        diff, rest = eqx.partition(p, eqx.is_inexact_array)
        return jax.value_and_grad(total, argnums=(0, 2))(diff, rest, x0s)

    trips = jax.vmap(lambda x, lim: ours(dict(p, limit=lim), x).k)(x0s, limits)
    assert len(set(np.asarray(trips).tolist())) == 4, trips
    v, (g_p, g_x) = jax.jit(lambda: batched(ours))()
    v_ref, (g_p_ref, g_x_ref) = batched(lambda q, x: reference(q, x, MAX))
    np.testing.assert_allclose(v, v_ref, rtol=1e-14)
    np.testing.assert_allclose(g_x, g_x_ref, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(g_p["a"], g_p_ref["a"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(g_p["b"], g_p_ref["b"], rtol=1e-11, atol=1e-13)


def test_under_shard_map_with_replicated_parameters():
    # Inside `jax.shard_map` (check_vma=True) with the start sharded and the
    # parameters replicated: the loop's carry varies, the parameters do not, and
    # their cotangent is returned as their type asks (summed over devices; one
    # device here, so equal to the unsharded gradient).
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:1]), ("b",))
    p = params(MAX)
    diff, rest = eqx.partition(p, eqx.is_inexact_array)
    x0s = jnp.stack([X0, 2.0 * X0])

    def total(d, xs):
        q = eqx.combine(d, rest)
        return jnp.sum(jax.vmap(lambda x: loss(ours(q, x)))(xs))

    def sharded_grad(xs):
        return jax.grad(total)(diff, xs)

    got = jax.jit(
        jax.shard_map(sharded_grad, mesh=mesh, in_specs=P("b"), out_specs=P())
    )(x0s)
    want = jax.grad(
        lambda d: jnp.sum(
            jax.vmap(lambda x: loss(reference(eqx.combine(d, rest), x, MAX)))(x0s)
        )
    )(diff)
    np.testing.assert_allclose(got["a"], want["a"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(got["b"], want["b"], rtol=1e-11, atol=1e-13)
