"""Small array helpers shared by the modules: finiteness, running sums and maxima,
time ordering, input currents, tangents and selections on PyTrees."""

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.core import Tracer
from jaxtyping import Array


def all_finite(y):
    """Per neuron (the leading axis of every leaf): every state component is
    finite."""
    leaves = jax.tree.leaves(y)
    out = jnp.ones(jnp.shape(leaves[0])[:1], bool)
    for leaf in leaves:
        f = jnp.isfinite(leaf)
        out = out & jnp.all(f.reshape(f.shape[:1] + (-1,)), axis=1)
    return out


def _varying_axes(x) -> frozenset:
    """The manual mesh axes (of an enclosing `jax.shard_map`) over which `x`'s
    values differ; empty outside `shard_map` and for non-arrays."""
    if not isinstance(x, (jax.Array, Tracer)):
        return frozenset()
    return jax.typeof(x).manual_axis_type.varying


def vary_like(tree, *refs):
    """`tree` with each array leaf cast (`lax.pcast`) to vary over every manual
    mesh axis over which some array leaf of `refs` varies.

    Under `jax.shard_map` (whose `check_vma=True` is the default), a loop's carry
    must enter varying over the same mesh axes as its body returns it; values built
    from shapes alone (zeros, the resting state) vary over none until mixed with the
    inputs. Outside `shard_map` this returns `tree` itself."""
    axes = frozenset().union(*map(_varying_axes, jax.tree.leaves(refs)))
    if not axes:
        return tree

    def cast(x):
        missing = tuple(sorted(axes - _varying_axes(x)))
        if not missing or not isinstance(x, (jax.Array, Tracer)):
            return x
        return lax.pcast(x, missing, to="varying")

    return jax.tree.map(cast, tree)


def max_across_devices(x):
    """`x` (an integer or boolean array) maximised (`lax.pmax`; for booleans, or'ed)
    over the mesh axes of an enclosing `jax.shard_map` over which it varies, so
    that a run-time check made on it raises on every device if on any: a device
    that raised alone would leave the others waiting in a later collective.
    Outside `shard_map`, `x`."""
    axes = tuple(sorted(_varying_axes(x)))
    if not axes:
        return x
    if x.dtype == jnp.bool_:
        return lax.pmax(x.astype(jnp.int32), axes) > 0
    return lax.pmax(x, axes)


def sum_where_invariant(cts, primals):
    """`cts`, the cotangents of `primals` from a custom VJP rule, each summed
    (`lax.psum`) over the mesh axes (of an enclosing `jax.shard_map`) over which it
    varies and its primal does not: a value every device holds alike is used by
    each, and its cotangent is the sum of theirs. Outside `shard_map`, `cts`."""

    def total(ct, p):
        extra = tuple(sorted(_varying_axes(ct) - _varying_axes(p)))
        return lax.psum(ct, extra) if extra else ct

    return jax.tree.map(total, cts, primals, is_leaf=lambda x: x is None)


def tie_to(tree, token):
    """`tree` with every array made to depend on `token`, a scalar zero returned by
    a run-time check (`eqx.error_if` on a zero rather than on `tree`): each array
    leaf minus the zero (or, for booleans, or'ed with it), which fuses into whatever
    produces it. Threading the tree itself through the check's branch would copy
    every array, and under `jax.shard_map` would fail wherever the tree varies over
    the mesh (the check's error branch returns values that vary over none)."""

    def tie(a):
        if not isinstance(a, (jax.Array, Tracer)):
            return a
        if a.dtype == jnp.bool_:
            return a | (token != 0)
        return a - token.astype(a.dtype)  # x - 0 is x, -0.0 included

    return jax.tree.map(tie, tree)


def running_sum(x, axis: int = 0):
    """`jnp.cumsum` of an integer array, as a parallel prefix scan: XLA on CPU
    lowers `cumsum` to a window reduction whose cost grows with the square of the
    length of `axis` (measured on CPU: 4x slower over 1967 spike slots of 256
    neurons, 2x over 1600 intervals)."""
    assert jnp.issubdtype(jnp.result_type(x), jnp.integer)
    return lax.associative_scan(jnp.add, x, axis=axis)


def running_max(x, axis: int = 0):
    """`lax.cummax` as a parallel prefix scan (see `running_sum`)."""
    return lax.associative_scan(jnp.maximum, x, axis=axis)


# Prefix lengths `time_order` sorts (besides the whole array): the smallest that
# holds every entry before the `+inf` padding is used. Shorter arrays are sorted
# whole: each prefix is one more branch to compile (about 0.2 s each, with its
# gradient), and a sort of a few hundred entries is cheap.
_SORT_PREFIXES = (64, 256, 1024, 4096)
_SORT_WHOLE_BELOW = 512


def time_order(times):
    """`jnp.argsort(times)` (stable, as int32) of a 1-D array of times padded with
    `+inf`, sorting only a prefix that holds its other entries: the entries first,
    in their order, then the padding, then a stable sort of the smallest of
    `_SORT_PREFIXES` (or the whole array) that holds the entries. Under `vmap` the
    prefix is the one that holds the entries of every run of the batch (of all
    batch axes together), so that the choice stays a branch instead of a select
    that runs every sort. Arrays shorter than `_SORT_WHOLE_BELOW` are sorted
    whole.

    XLA's CPU sort costs about as much per `+inf` as per spike: the spike train of a
    200-neuron layer with room for 8 spikes each has 1600 entries, of which a
    sample of a Yin-Yang network uses about 55. The order is that of
    `jnp.argsort`, except that NaN times (which the caller rejects) come before the
    padding instead of after it."""
    (n,) = times.shape
    if n < _SORT_WHOLE_BELOW:
        return jnp.argsort(times).astype(jnp.int32)
    prefixes = [p for p in _SORT_PREFIXES if p < n] + [n]
    pad = times == jnp.inf
    num = jnp.sum(~pad)
    position = jnp.where(
        pad,
        num + running_sum(pad.astype(jnp.int32)) - 1,
        running_sum((~pad).astype(jnp.int32)) - 1,
    )
    compact = (
        jnp.zeros((n,), jnp.int32)
        .at[position]
        .set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)
    )

    def sort_prefix(length):
        def sort():
            head = compact[:length]
            return jnp.concatenate([head[jnp.argsort(times[head])], compact[length:]])

        return sort

    # The smallest prefix that holds the entries of every run (`unvmap_any`, not
    # a maximum: a batch may be empty).
    branch = sum(eqxi.unvmap_any(num > p).astype(jnp.int32) for p in prefixes[:-1])
    return lax.switch(branch, [sort_prefix(p) for p in prefixes])


def any_nonfinite(tree) -> Array:
    """Whether any array leaf of `tree` holds a NaN or an inf (traced)."""
    out = jnp.zeros((), bool)
    for leaf in jax.tree.leaves(tree):
        out = out | ~jnp.all(jnp.isfinite(leaf))
    return out


def input_currents(inputs, weight):
    """`inputs @ weight.T` (rows: intervals), as one `dot_general` contracting the
    input axis of both. Written with the transpose, XLA's CPU backend copies the
    transposed weight into a loop fusion on every call: 4096 x 32 weights, one
    interval, 54 -> 27 us per call (measured with dispatch)."""
    return lax.dot_general(inputs, weight, (((inputs.ndim - 1,), (1,)), ((), ())))


def time_major_currents(inputs, weight) -> bool:
    """Whether a vmapped batch's currents are computed in time-major order (see
    [`run_currents`][]): when the inputs are the smaller array to transpose, fewer
    inputs than neurons (from their static shapes)."""
    return inputs.shape[-1] < weight.shape[0]


@jax.custom_batching.custom_vmap
def _run_currents(inputs, weight):
    return input_currents(inputs, weight)


@_run_currents.def_vmap
def _run_currents_batched(axis_size, in_batched, inputs, weight):
    inputs_batched, weight_batched = in_batched
    if inputs_batched and not weight_batched and time_major_currents(inputs, weight):
        # (B, T, k) -> (T, B, k) -> (T, B, n), handed on as (B, T, n).
        by_time = input_currents(jnp.swapaxes(inputs, 0, 1), weight)
        return jnp.swapaxes(by_time, 0, 1), True
    axes = (0 if inputs_batched else None, 0 if weight_batched else None)
    return jax.vmap(input_currents, in_axes=axes)(inputs, weight), True


@jax.custom_jvp
def run_currents(inputs, weight):
    """[`input_currents`][] for a run, `(T, n)`: under `jax.vmap` over the inputs
    (not the weight), with fewer inputs than neurons, the batch's currents are
    computed from the inputs transposed to time-major order, `(T, B, n_inputs)`,
    and handed on as `(B, T, n)` by a transpose that the folded run's own transpose
    to time-major order cancels (see `run_batch_major`): the smaller array is
    transposed, not the currents. Its derivatives are those of the product."""
    return _run_currents(inputs, weight)


def _run_currents_jvp(primals, tangents):
    # (`jax.custom_batching.custom_vmap` alone could not be transposed: reverse
    # mode goes through this rule, plain JAX in the tangents. A symbolic zero
    # tangent, an argument not differentiated, adds no product.)
    inputs, weight = primals
    t_inputs, t_weight = tangents
    out = run_currents(inputs, weight)
    terms = []
    if not isinstance(t_inputs, jax.custom_derivatives.SymbolicZero):
        terms.append(input_currents(t_inputs, weight))
    if not isinstance(t_weight, jax.custom_derivatives.SymbolicZero):
        terms.append(input_currents(inputs, t_weight))
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


run_currents.defjvp(_run_currents_jvp, symbolic_zeros=True)


def is_concrete(x) -> bool:
    """True when `x` holds a value now (not a tracer inside `jit`/`grad`/`vmap`)."""
    return not any(isinstance(leaf, Tracer) for leaf in jax.tree.leaves(x))


def tangent(x):
    """Zero in value, with the derivative of `x` (`x - stop_gradient(x)`)."""
    return x - lax.stop_gradient(x)


def expand(x, like):
    """Broadcast a per-neuron array against a state leaf with trailing axes."""
    return jnp.reshape(x, x.shape + (1,) * (jnp.ndim(like) - jnp.ndim(x)))


def where_tree(pred, on_true, on_false):
    """`jnp.where` leaf by leaf, broadcasting a per-neuron `pred` over leaves."""
    return jax.tree.map(
        lambda a, b: jnp.where(expand(pred, a), a, b), on_true, on_false
    )


_FIRST_ORDER_ONLY = (
    "This run's derivative is first-order reverse mode: its backward pass reruns or "
    "replays the forward run with the forward run's decisions held fixed (an "
    "adaptive-step run, `RerunAdjoint`; an event-driven run on spike trains or in a "
    "network) and has no derivative of its own, so a gradient through it cannot be "
    "differentiated again: `jax.hessian`, `jax.jvp` or `jax.grad` of such a "
    "gradient would give a wrong number. Take second derivatives by finite "
    "differences of the gradient, or on the closed-form path (the LIF with "
    "`Exact()` on dense inputs), whose derivatives have derivatives. (A gradient "
    "used inside a differentiated function but not differentiated itself, as in "
    "first-order MAML, is taken at `jax.lax.stop_gradient` of its arguments: "
    "`jax.grad(f)(jax.lax.stop_gradient(w))`.)"
)


@jax.custom_jvp
def _first_order(tree):
    return tree


@_first_order.defjvp
def _first_order_jvp(primals, tangents):
    del primals, tangents
    raise TypeError(_FIRST_ORDER_ONLY)


def first_order_only(tree):
    """`tree` as it is, where no derivative is taken through it. For the inputs of
    the forward function of a custom VJP whose backward pass is not
    differentiable: they carry tangents only where a gradient is differentiated
    again with respect to them (forward mode over it, or reverse), which then
    raises a `TypeError` at trace time instead of giving a wrong number. (The
    cotangents are not guarded: the backward pass is linear in them, and its
    derivative with respect to a loss's own parameters is right.)"""
    arrays, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(_first_order(arrays), static)
