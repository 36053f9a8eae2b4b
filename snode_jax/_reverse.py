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

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from ._misc import first_order_only, sum_where_invariant, vary_like, where_tree


def segment_length(max_steps: int) -> int:
    """Iterations per segment: about the square root of the budget, so that the
    checkpoints (one per segment) and the records of one segment take about the
    same memory."""
    return math.isqrt(max_steps - 1) + 1 if max_steps > 1 else 1


def _stacked(tree, size: int):
    """Zeros for `size` copies of each leaf of `tree` (arrays or shapes), stacked
    on a new leading axis."""
    return jax.tree.map(lambda x: jnp.zeros((size, *x.shape), x.dtype), tree)


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
    restore=lambda st, end: st,
    expand=lambda rec, end: rec,
    forward=None,
    buffers=None,
):
    """`(ct_params, ct_x0, end, total, buffers)`: the cotangents of `params` and
    of the differentiable start `x0` of the loop `while running(st): st, rec =
    advance(st)` from `init`, given `ct_end` for the last iteration's `x_next` and
    `out_cotangent(rec)` for each iteration's `out` (see the module docstring);
    also the loop's end state, its number of iterations, and the records and
    checkpoints as written (see `buffers`).

    `end_cotangent(end)`, if given, is `(d_params, d_x)`: more cotangent from the
    end state (added once). `checkpoint` and `restore` strip what a checkpoint need
    not keep and put it back, and `expand` does so for a record; both are given the
    loop's end state (of the first pass, from `init`). The loop runs at most
    `max_steps` iterations.

    `forward`, if given, is `(ckpts, end, total)` from a pass that has already run
    the loop from `init` (see [`checkpointed_pass`][]): the first pass is skipped,
    and every segment, the last included, is rerun from its checkpoint.

    `buffers`, if given, is `(recs, ckpts)` from [`segment_buffers`][] (`ckpts`
    `None` with `forward`), the records and checkpoints to write into (by
    default, zeros); they come back as written (`ckpts` `None` with `forward`).
    A caller that runs this loop again and again (once per interval of a scan) can
    carry them over instead of filling new ones with zeros every time: every entry
    is written before it is read, so what an earlier use left there is never seen.
    """
    seg = segment_length(max_steps)
    num_segments = -(-max_steps // seg)
    if buffers is None:
        recs, ckpts = segment_buffers(
            advance, init, max_steps, checkpoint, forward is None
        )
    else:
        recs, ckpts = buffers
    if forward is not None:
        ckpts, end, total = forward

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
            if forward is None:  # (else the checkpoints are known)
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

    def sweep(lo, hi, recs, cts, end):
        """Pulls the cotangents back through iterations `hi - 1` down to `lo`."""

        def body(c):
            i, ct_x, ct_p = c
            go = i >= lo
            rec = jax.tree.map(lambda a: a[jnp.where(go, i % seg, seg)], recs)
            rec = expand(rec, end)
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
        ckpt = jax.tree.map(lambda a: a[j], ckpts)
        start = where_tree(first, init, restore(ckpt, end))
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
        cts = sweep(lo, hi, recs, cts, end)
        return jnp.zeros((), bool), j - 1, total, end, recs, ckpts, cts

    zero = jnp.zeros((), jnp.int32)
    cts = (ct_end, jax.tree.map(jnp.zeros_like, params))
    if forward is None:
        first, j, total, end = jnp.ones((), bool), zero, zero, init
    else:
        first, j = jnp.zeros((), bool), (total - 1) // seg
    # (Under `jax.shard_map`, the carry varies as the loop's inputs do; `first`,
    # set to false by every iteration, varies over nothing.)
    rest = vary_like((j, total, end, recs, ckpts, cts), init, params, ct_end)
    carry = (first,) + rest
    _, _, total, end, recs, ckpts, (ct_x0, ct_params) = lax.while_loop(
        lambda c: eqxi.unvmap_any(c[1] >= 0), outer_body, carry
    )
    return ct_params, ct_x0, end, total, (recs, None if forward else ckpts)


def segment_buffers(advance, init, max_steps: int, checkpoint, checkpoints=True):
    """Zeros for the records and (with `checkpoints`) the checkpoints that
    [`reverse_segments`][] keeps for the loop of `advance` from `init` (arrays or
    shapes): `(recs, ckpts)`."""
    seg = segment_length(max_steps)
    num_segments = -(-max_steps // seg)
    _, rec_shape = jax.eval_shape(advance, init)
    # One more record slot than the segment's iterations: where a loop does not
    # move (see below), its record goes there.
    recs = _stacked(rec_shape, seg + 1)
    ckpts = None
    if checkpoints:
        ckpts = _stacked(jax.eval_shape(checkpoint, init), num_segments)
    return recs, ckpts


def checkpointed_pass(body, running, init, max_steps: int, checkpoint=lambda st: st):
    """`(ckpts, end, total)`: the loop `while running(st): st = body(st)` from
    `init` (at most `max_steps` iterations), its end state and number of
    iterations, with the checkpoints [`reverse_segments`][] keeps (`checkpoint` of
    the state at the start of each segment), for its `forward` argument. The
    iterations run in an inner loop, one per segment, as a plain loop does: the
    checkpoints are written once per segment."""
    seg = segment_length(max_steps)
    num_segments = -(-max_steps // seg)
    ckpts = _stacked(checkpoint(init), num_segments)

    def segment(c):
        i, st, ckpts = c
        k = i // seg
        ckpts = jax.tree.map(lambda a, x: a.at[k].set(x), ckpts, checkpoint(st))
        stop = jnp.minimum((k + 1) * seg, max_steps)
        i, st = lax.while_loop(
            lambda c: (c[0] < stop) & running(c[1]),
            lambda c: (c[0] + 1, body(c[1])),
            (i, st),
        )
        return i, st, ckpts

    # (Under `jax.shard_map`, the carry varies as the inputs do.)
    carry = vary_like((jnp.zeros((), jnp.int32), init, ckpts), init)
    total, end, ckpts = lax.while_loop(
        lambda c: (c[0] < max_steps) & running(c[1]), segment, carry
    )
    return ckpts, end, total


def _split(tree):
    """`(diff, fixed, other)`: the inexact arrays of `tree`, its other arrays, and
    what is not an array (each a copy of `tree` with `None` elsewhere)."""
    arrays, other = eqx.partition(tree, eqx.is_array)
    diff, fixed = eqx.partition(arrays, eqx.is_inexact_array)
    return diff, fixed, other


def _float0_zeros(tree):
    return jax.tree.map(lambda x: np.zeros(np.shape(x), jax.dtypes.float0), tree)


def checkpointed_while_loop(
    make,
    params,
    init,
    max_steps: int,
    *,
    strip=lambda st: st,
    restore=lambda stripped, end: stripped,
):
    """The state after `while cond(st): st = body(st)` from `init`, where `(cond,
    body) = make(params, derivatives)`, after at most `max_steps` iterations.

    `derivatives` is true only for the body whose VJP the backward pass takes;
    every run of the loop (forward, and the backward pass's reruns) uses the body
    made with `False`, which may leave out what is zero in value and only carries
    derivatives, and must give the same values.

    Reverse-mode differentiable in the inexact arrays of `params` and `init` (a
    custom VJP; other leaves are held): differentiated, the forward pass keeps a
    checkpoint every `S` iterations (`S` about `sqrt(max_steps)`,
    [`checkpointed_pass`][]); the backward pass reruns the segments between them,
    last to first, and pulls the cotangents back one iteration at a time through
    the VJP of `body` ([`reverse_segments`][]), keeping about `2 sqrt(max_steps)`
    states, each
    stripped by `strip` (`restore(stripped, end)` rebuilds it, given the loop's end
    state, for example from logs that the loop only appends to). Under `jax.vmap`
    each sample's loop moves only while it runs. Under `jax.shard_map` the loops
    hold no collective, and each device runs its own number of iterations. `make`
    must close over no traced value. No forward mode.

    (Equinox's checkpointed while loop builds its checkpoint buffers from shapes,
    which vary over no mesh axis of an enclosing `jax.shard_map`; this loop's carry
    varies as its inputs do.)"""
    p_diff, p_fixed, p_other = _split(params)
    s_diff, s_fixed, s_other = _split(init)

    def loop(p_diff, s_diff, p_fixed, s_fixed, keep_checkpoints=False):
        cond, body = make(eqx.combine(p_diff, p_fixed, p_other), False)
        st = eqx.combine(s_diff, s_fixed, s_other)
        # (Under `jax.shard_map`, the carry varies as the inputs do.)
        i, st = vary_like((jnp.zeros((), jnp.int32), st), st, p_diff, p_fixed)
        if keep_checkpoints:
            # The backward pass's checkpoints, so that it need not run the loop
            # again to find them.
            ckpts, end, total = checkpointed_pass(body, cond, st, max_steps, strip)
            return eqx.filter(end, eqx.is_array), (ckpts, total)

        def step(c):
            return c[0] + 1, body(c[1])

        _, end = lax.while_loop(
            lambda c: (c[0] < max_steps) & cond(c[1]), step, (i, st)
        )
        return eqx.filter(end, eqx.is_array)

    @jax.custom_vjp
    def run(p_diff, s_diff, p_fixed, s_fixed):
        return loop(p_diff, s_diff, p_fixed, s_fixed)

    def run_fwd(p_diff, s_diff, p_fixed, s_fixed):
        # (Run on tangents only where a gradient is differentiated again.)
        args = first_order_only((p_diff, s_diff, p_fixed, s_fixed))
        end, (ckpts, total) = loop(*args, keep_checkpoints=True)
        return end, (args, (ckpts, end, total))

    def run_bwd(res, ct_end):
        (p_diff, s_diff, p_fixed, s_fixed), (ckpts, end, total) = res
        cond, body = make(eqx.combine(p_diff, p_fixed, p_other), False)
        point = lambda st: eqx.filter(st, eqx.is_inexact_array)

        def advance(st):
            return body(st), strip(st)

        def linearised(p, x, st):
            _, body_p = make(eqx.combine(p, p_fixed, p_other), True)
            return point(body_p(eqx.combine(x, st))), ()

        ct_p, ct_s, _, _, _ = reverse_segments(
            advance,
            cond,
            linearised,
            point,
            lambda st: (),
            p_diff,
            eqx.combine(s_diff, s_fixed, s_other),
            point(ct_end),
            max_steps,
            checkpoint=strip,
            restore=restore,
            expand=restore,
            forward=(ckpts, eqx.combine(end, s_other), total),
        )
        return (
            sum_where_invariant(ct_p, p_diff),
            sum_where_invariant(ct_s, s_diff),
            _float0_zeros(p_fixed),
            _float0_zeros(s_fixed),
        )

    run.defvjp(run_fwd, run_bwd)
    return eqx.combine(run(p_diff, s_diff, p_fixed, s_fixed), s_other)
