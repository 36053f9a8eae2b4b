"""The tangents of a closed-form run (`_tangents.py`) bound as a primitive of their
own: linear in the tangents, and under `jax.vmap` folded into the neuron axis."""

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.extend.core
import jax.interpreters.ad as ad
import jax.interpreters.batching as batching
import jax.interpreters.mlir as mlir
import jax.numpy as jnp
from jax.core import ShapedArray

from ._fold import fold_lanes, unfold_lanes, unfold_rows
from ._tangents import tangents_in_closed_form

# `closed_form_tangents` is bound as a primitive of its own, so that it has a
# batching rule that folds the batch into the neuron axis (as `run_folded` does for
# the forward run): a vmapped batch's tangents are then one computation over
# `(time, B * n)`, chunked for all `B * n` neurons, a parameter the batch shares
# gets its cotangent from one reduction, and the spike times are gathered without an
# index per sample. (A `jax.custom_batching.custom_vmap` would fold it too, but JAX
# cannot transpose one: reverse mode would fail wherever it is not vmapped.) Its
# other rules are those of `tangents_in_closed_form` itself: linear in the tangents
# (the same primitive, bound on new tangents; transposed by
# `jax.linear_transpose`), differentiated as plain JAX in the primals (second
# order).
#
# The arguments are `(primals, tangents, options)`: `primals` = `(dynamics,
# currents, interval, starts, counts, num_spikes, surrogate)` (the surrogate may
# hold arrays), `tangents` = `(t_dynamics, t_currents, t_interval, t_state)` (no
# symbolic zeros) and `options` = `(cfg, chunk)` (Python values).


_tangents_p = jax.extend.core.Primitive("snode_jax_closed_form_tangents")
_tangents_p.multiple_results = True


def closed_form_tangents(
    dynamics,
    currents,
    interval,
    tangents,
    starts,
    counts,
    num_spikes,
    cfg,
    surrogate,
    chunk,
):
    """`(t_counts, t_times, t_final, t_states)`: the tangents of the run's soft
    counts, spike times, final state and interval states (see
    [`tangents_in_closed_form`][]); under `jax.vmap`, of the batch folded into the
    neuron axis."""
    primals = (dynamics, currents, interval, starts, counts, num_spikes, surrogate)
    return _bind(primals, tangents, (cfg, chunk))


def _bind(primals, tangents, options):
    return eqxi.filter_primitive_bind(_tangents_p, primals, tangents, options)


def _is_none(x):
    return x is None


def _abstract(primals, tangents, options):
    shapes = jax.eval_shape(
        lambda p, t: tangents_in_closed_form(p, t, options), primals, tangents
    )
    return jax.tree.map(_aval, shapes)


def _aval(s: jax.ShapeDtypeStruct) -> ShapedArray:
    # Under `jax.shard_map`, with the mesh axes the value varies over.
    mat = s.manual_axis_type
    if mat is None or not mat.varying:
        return ShapedArray(s.shape, s.dtype)
    return ShapedArray(s.shape, s.dtype, sharding=s.sharding, manual_axis_type=mat)


def _jvp(args, d_args):
    primals, tangents, options = args
    d_primals, d_tangents, _ = d_args
    out = _bind(primals, tangents, options)
    # Linear in the tangents.
    d_tangents = jax.tree.map(
        eqxi.materialise_zeros, tangents, d_tangents, is_leaf=_is_none
    )
    d_out = _bind(primals, d_tangents, options)
    # The rest (second order), as plain JAX.
    d_primals = jax.tree.map(
        lambda p, d: d if eqx.is_inexact_array(p) else None,
        primals,
        d_primals,
        is_leaf=_is_none,
    )
    if any(d is not None for d in jax.tree.leaves(d_primals, is_leaf=_is_none)):
        _, more = eqx.filter_jvp(
            lambda p: tangents_in_closed_form(p, tangents, options),
            (primals,),
            (d_primals,),
        )
        d_out = jax.tree.map(jnp.add, d_out, more)
    return out, d_out


def _varies(aval) -> bool:
    return bool(aval.manual_axis_type.varying)


def _transpose(inputs, cts_out):
    primals, tangents, options = inputs
    undefined = lambda x: isinstance(x, ad.UndefinedPrimal)
    assert not any(undefined(x) for x in jax.tree.leaves(primals, is_leaf=undefined))
    # The tangents given (not transposed) add a constant: left out.
    example = jax.tree.map(
        lambda t: (
            jax.ShapeDtypeStruct(
                t.aval.shape,
                t.aval.dtype,
                sharding=t.aval.sharding if _varies(t.aval) else None,
                manual_axis_type=t.aval.manual_axis_type if _varies(t.aval) else None,
            )
            if undefined(t)
            else jnp.zeros_like(t)
        ),
        tangents,
        is_leaf=undefined,
    )
    transposed = jax.linear_transpose(
        lambda t: tangents_in_closed_form(primals, t, options), example
    )
    (cts,) = transposed(cts_out)
    cts = jax.tree.map(
        lambda t, ct: ct if undefined(t) else None, tangents, cts, is_leaf=undefined
    )
    return (
        jax.tree.map(lambda _: None, primals),
        cts,
        jax.tree.map(lambda _: None, options),
    )


def _batch(args, axes):
    primals, tangents, options = args
    front = lambda x, a: x if a is None else jnp.moveaxis(x, a, 0)
    primals = jax.tree.map(front, primals, axes[0])
    tangents = jax.tree.map(front, tangents, axes[1])
    # (Batch axes are None at unbatched leaves: the structure is the arguments'.)
    p_b = jax.tree.map(lambda _, a: a is not None, primals, axes[0])
    t_b = jax.tree.map(lambda _, a: a is not None, tangents, axes[1])
    size = next(
        x.shape[0]
        for x, b in zip(
            jax.tree.leaves((primals, tangents)), jax.tree.leaves((p_b, t_b))
        )
        if b
    )
    out = _folded(primals, tangents, options, p_b, t_b, size)
    return out, jax.tree.map(lambda _: 0, out)


def _folded(primals, tangents, options, p_b, t_b, size):
    """The tangents of a batch of `size` runs (batched leaves at axis 0): folded
    into the neuron axis, or vmapped where it cannot be (see below)."""
    dynamics, currents, interval, starts, counts, num_spikes, surrogate = primals
    t_dyn, t_cur, t_int, t_state = tangents
    dyn_b, cur_b, itv_b, starts_b, counts_b, num_b, surrogate_b = p_b
    t_dyn_b, t_cur_b, t_int_b, t_state_b = t_b
    per_neuron = dynamics.per_neuron_mask()
    shared_batched = jax.tree.map(
        lambda b, tb, p: (b or tb) and not p, dyn_b, t_dyn_b, per_neuron
    )
    # Not folded: a batched interval (shared by all neurons of a run), a batched
    # model parameter that is not per neuron, a batched surrogate (one per run),
    # or a batch of tangents of one run (`jax.jacfwd`: its interval states are not
    # batched; folding would copy the run for each tangent).
    unfoldable = (itv_b, t_int_b, shared_batched, surrogate_b)
    if any(jax.tree.leaves(unfoldable)) or not any(jax.tree.leaves(starts_b)):
        axes = jax.tree.map(lambda b: 0 if b else None, (p_b, t_b))
        return jax.vmap(
            lambda p, t: tangents_in_closed_form(p, t, options), in_axes=axes
        )(primals, tangents)
    n = currents.shape[-1]
    fold = lambda x, batched: fold_lanes(x, batched, size, n)

    def fold_parameter(p, t, pb, tb, lane):
        # A per-neuron parameter and its tangent as one value per lane (a scalar
        # stays one where neither it nor its tangent is batched).
        if not lane:
            return p, t
        whole = pb or tb
        return (
            fold_lanes(p, pb, size, n, scalar=whole),
            fold_lanes(t, tb, size, n, scalar=whole),
        )

    pairs = jax.tree.map(fold_parameter, dynamics, t_dyn, dyn_b, t_dyn_b, per_neuron)
    is_pair = lambda x: isinstance(x, tuple)
    folded_primals = (
        jax.tree.map(lambda pt: pt[0], pairs, is_leaf=is_pair),
        fold(currents, cur_b),
        interval,
        jax.tree.map(fold, starts, starts_b),
        fold(counts, counts_b),
        fold(num_spikes, num_b),
        surrogate,
    )
    folded_tangents = (
        jax.tree.map(lambda pt: pt[1], pairs, is_leaf=is_pair),
        fold(t_cur, t_cur_b),
        t_int,
        jax.tree.map(fold, t_state, t_state_b),
    )
    t_counts, t_times, t_final, t_states = _bind(
        folded_primals, folded_tangents, options
    )
    unfold = lambda x: unfold_lanes(x, size, n)
    return (
        unfold(t_counts),
        unfold_rows(t_times, size, n),
        jax.tree.map(unfold, t_final),
        jax.tree.map(unfold, t_states),
    )


_tangents_p.def_impl(eqxi.filter_primitive_def(tangents_in_closed_form))
_tangents_p.def_abstract_eval(eqxi.filter_primitive_def(_abstract))
ad.primitive_jvps[_tangents_p] = eqxi.filter_primitive_jvp(_jvp)
ad.primitive_transposes[_tangents_p] = eqxi.filter_primitive_transpose(
    _transpose, materialise_zeros=True
)
batching.primitive_batchers[_tangents_p] = eqxi.filter_primitive_batching(_batch)
mlir.register_lowering(
    _tangents_p,
    mlir.lower_fun(
        eqxi.filter_primitive_def(tangents_in_closed_form), multiple_results=True
    ),
)
