"""Reverse mode through a loop whose decisions are held fixed: rerun it without
derivatives, then pull the cotangents back one iteration at a time.

A loop `while running(st): st, rec = advance(st)` whose derivative (its decisions
held fixed) is, iteration by iteration, `x_next, out = linearised(params, x, rec)`,
with `x = point(rec)` the differentiable part of the state it started from and
`out` what the iteration writes out (a spike time). The backward pass needs one
iteration's VJP per iteration, not the loop's: [`reverse_segments`][] reruns the
loop, keeping a checkpoint every `S` iterations (`S` about `sqrt(max_steps)`) and
the records of the current segment, and sweeps the segments last to first, each
earlier one rerun from its checkpoint. Rerun and sweep are one loop body each, in
one outer loop over the segments, so the program holds one copy of each whatever
the number of iterations. Memory: about `2 sqrt(max_steps)` states and records.
"""

import math

import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp

from ._misc import vary_like, where_tree


def segment_length(max_steps: int) -> int:
    """Iterations per segment: about the square root of the budget, so that the
    checkpoints (one per segment) and the records of one segment take about the
    same memory."""
    return math.isqrt(max_steps - 1) + 1 if max_steps > 1 else 1


def reverse_segments(
    advance,
    running,
    linearised,
    point,
    out_cotangent,
    params,
    init,
    ct_end,
    max_steps: int,
    *,
    end_cotangent=None,
    checkpoint=lambda st: st,
    restore=lambda st: st,
):
    """`(ct_params, ct_x0, end, total)`: the cotangents of `params` and of the
    differentiable start `x0` of the loop `while running(st): st, rec =
    advance(st)` from `init`, given `ct_end` for the last iteration's `x_next` and
    `out_cotangent(rec)` for each iteration's `out` (see the module docstring);
    also the loop's end state and its number of iterations.

    `end_cotangent(end)`, if given, is `(d_params, d_x)`: more cotangent from the
    end state (added once). `checkpoint` and `restore` strip what a checkpoint need
    not keep and put it back. The loop runs at most `max_steps` iterations.
    """
    seg = segment_length(max_steps)
    num_segments = -(-max_steps // seg)
    _, rec_shape = jax.eval_shape(advance, init)
    stacked = lambda size: lambda x: jnp.zeros((size, *x.shape), x.dtype)
    # One more record slot than the segment's iterations: where a loop does not
    # move (see below), its record goes there.
    recs = jax.tree.map(stacked(seg + 1), rec_shape)
    ckpts = jax.tree.map(stacked(num_segments), checkpoint(init))

    # Under `jax.vmap` each loop runs while any sample needs it (`unvmap_any`) and
    # each sample's carry moves only where it runs (`go`), its writes sent to the
    # spare slot otherwise; a batched condition would select every carry,
    # checkpoints and records included, in every iteration.

    def rerun(i, limit, st, recs, ckpts):
        """Iterations `i` up to `limit` (or the loop's end) from `st`, keeping a
        checkpoint at the start of each segment and every iteration's record."""

        def moves(i, st):
            return (i < limit) & running(st)

        def body(c):
            i, st, recs, ckpts = c
            go = moves(i, st)
            k, slot = jnp.minimum(i // seg, num_segments - 1), i % seg
            ckpts = jax.tree.map(
                lambda a, x: a.at[k].set(jnp.where(go & (slot == 0), x, a[k])),
                ckpts,
                checkpoint(st),
            )
            new, rec = advance(st)
            slot = jnp.where(go, slot, seg)
            recs = jax.tree.map(lambda a, x: a.at[slot].set(x), recs, rec)
            return i + go, where_tree(go, new, st), recs, ckpts

        cond = lambda c: eqxi.unvmap_any(moves(c[0], c[1]))
        carry = (i, st, recs, ckpts)
        return lax.while_loop(cond, body, vary_like(carry, carry, params))

    def sweep(lo, hi, recs, cts):
        """Pulls the cotangents back through iterations `hi - 1` down to `lo`."""

        def body(c):
            i, ct_x, ct_p = c
            go = i >= lo
            rec = jax.tree.map(lambda a: a[jnp.where(go, i % seg, seg)], recs)
            _, vjp = jax.vjp(lambda p, x: linearised(p, x, rec), params, point(rec))
            d_p, d_x = vjp((ct_x, out_cotangent(rec)))
            ct_p = where_tree(go, jax.tree.map(jnp.add, ct_p, d_p), ct_p)
            return i - go, where_tree(go, d_x, ct_x), ct_p

        cond = lambda c: eqxi.unvmap_any(c[0] >= lo)
        return lax.while_loop(cond, body, (hi - 1, *cts))[1:]

    def outer_body(c):
        first, j, total, end, recs, ckpts, cts = c
        # The first pass runs the whole loop from `init`; later ones rerun
        # segment `j` from its checkpoint. (A sample that is through, `j < 0`,
        # runs neither.)
        start = where_tree(first, init, restore(jax.tree.map(lambda a: a[j], ckpts)))
        i0 = jnp.where(first, 0, j * seg)
        limit = jnp.where(first, max_steps, jnp.where(j >= 0, (j + 1) * seg, i0))
        i_end, st, recs, ckpts = rerun(i0, limit, start, recs, ckpts)
        total = jnp.where(first, i_end, total)
        end = where_tree(first, st, end)
        j = jnp.where(first, (total - 1) // seg, j)
        if end_cotangent is not None:
            d_p, d_x = end_cotangent(st)
            ct_x, ct_p = cts
            ct_x = jax.tree.map(lambda a, b: jnp.where(first, a + b, a), ct_x, d_x)
            ct_p = jax.tree.map(lambda a, b: jnp.where(first, a + b, a), ct_p, d_p)
            cts = (ct_x, ct_p)
        lo = jnp.maximum(j, 0) * seg
        hi = jnp.where(j >= 0, jnp.minimum(total, (j + 1) * seg), lo)
        cts = sweep(lo, hi, recs, cts)
        return jnp.zeros((), bool), j - 1, total, end, recs, ckpts, cts

    zero = jnp.zeros((), jnp.int32)
    cts = (ct_end, jax.tree.map(jnp.zeros_like, params))
    # (Under `jax.shard_map`, the carry varies as the loop's inputs do; `first`,
    # set to false by every iteration, varies over nothing.)
    rest = vary_like((zero, zero, init, recs, ckpts, cts), init, params, ct_end)
    carry = (jnp.ones((), bool),) + rest
    _, _, total, end, _, _, (ct_x0, ct_params) = lax.while_loop(
        lambda c: eqxi.unvmap_any(c[1] >= 0), outer_body, carry
    )
    return ct_params, ct_x0, end, total
