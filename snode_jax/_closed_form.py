"""The closed-form event walk: each neuron steps from spike to spike through an
interval of held input, for models whose crossings are known in closed form."""

import dataclasses

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp

from ._dynamics import AbstractClosedFormDynamics
from ._records import Counters, IntervalOutcome, SpikeBuffer
from ._scan import AbstractIntegrator

# Crossings handled before entering the loop: at typical rates most intervals hold at
# most this many spikes per neuron, and an unconditional multiply-compare is cheaper
# than a loop iteration.
_PEEL = 3

# The largest piece count of one interval (an int32 loop bound).
_MAX_PIECES = 2.0**31 - 1


def _walk(
    dynamics: AbstractClosedFormDynamics,
    constants,
    y,
    current,
    max_steps: int,
) -> IntervalOutcome:
    """Walk from event to event through one piece using the model's closed form.

    Each neuron takes one step per spike plus one to the end; deciding whether a
    spike happens costs a multiply and a compare.
    """
    ev = dynamics.interval_start(y, current, constants)
    zeros = jnp.zeros(current.shape, jnp.int32)

    def body(carry):
        ev, pending, count = carry
        ev = dynamics.fire(ev, pending)
        count = count + pending
        # A neuron has used `count + 1` steps once it moves on to its next segment.
        pending = dynamics.crossing_pending(ev) & (count + 1 < max_steps)
        return ev, pending, count

    pending = dynamics.crossing_pending(ev) & (max_steps > 1)
    carry = (ev, pending, zeros)
    for _ in range(_PEEL):  # most intervals need no loop at all
        carry = body(carry)
    # The loop is entered only when some neuron has more spikes in the interval.
    # (The integrator is never vmapped, see `run_folded`, so this is a real branch.)
    ev, _, count = lax.cond(
        jnp.any(carry[1]),
        lambda c: lax.while_loop(lambda c: jnp.any(c[1]), body, c),
        lambda c: c,
        carry,
    )
    exhausted = dynamics.crossing_pending(ev)
    imprecise = dynamics.count_uncertain(ev, count).astype(jnp.int32)
    counters = Counters(count + 1, count, num_imprecise_intervals=imprecise)
    no_fail = jnp.zeros(count.shape, bool)
    return IntervalOutcome(
        dynamics.interval_end(ev), count, None, counters, exhausted, no_fail
    )


def _record(dynamics, y, current, t_start, interval, count, buffer: SpikeBuffer):
    """Append the interval's `count` spikes per neuron to `buffer`: spike `m` at
    `first + m * period` of the interval's closed form
    ([`AbstractClosedFormDynamics.replay_interval`][], the times the derivatives
    are taken of). Most neurons fire at most `_PEEL` times in an interval; the loop
    over further spikes runs only as long as some neuron has more."""
    rep = dynamics.replay_interval(y, current, interval, count)

    def spike(m, buffer):
        time = t_start + rep.first + m.astype(rep.first.dtype) * rep.period
        return buffer.record(count > m, time)

    for m in range(_PEEL):
        buffer = spike(jnp.asarray(m), buffer)
    _, buffer = lax.while_loop(
        lambda c: c[0] < jnp.max(count),
        lambda c: (c[0] + 1, spike(c[0], c[1])),
        (jnp.asarray(_PEEL), buffer),
    )
    return buffer


class ClosedFormWalk(AbstractIntegrator):
    """Integrates an [`AbstractClosedFormDynamics`][] (the LIF) by walking from spike
    to spike in closed form: no step control, no root finding. An interval much
    longer than the model's time scale is walked in equal pieces, so that the closed
    form's decay factors stay representable.

    **Arguments:**

    - `max_steps`: steps per neuron per interval (one per spike plus one).
    """

    max_steps: int = 4096
    # Whether intervals are walked in pieces: decided per interval (None), or
    # fixed for a run of equal intervals (see `variants`).
    pieces: bool | None = eqx.field(static=True, default=None)

    def zero_counters(self, n: int) -> Counters:
        z = jnp.zeros((n,), jnp.int32)
        return Counters(z, z, num_imprecise_intervals=z)

    def conditions(self, dynamics, interval):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        # The piece count is an int32 loop bound.
        pieces = jnp.max(interval / dynamics.max_event_span())
        name = type(dynamics).__name__
        return {f"interval < 2**31 * {name}.max_event_span()": pieces < _MAX_PIECES}

    def prepare(self, dynamics, interval):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        n_pieces = jnp.ceil(interval / dynamics.max_event_span())
        # An invalid interval (reported in `result`) takes a single piece; so does
        # one of too many pieces (reported too, see `conditions`).
        ok = jnp.isfinite(n_pieces) & (n_pieces > 1) & (n_pieces < _MAX_PIECES)
        n_pieces = jnp.where(ok, n_pieces, 1)
        piece = interval / n_pieces
        constants = dynamics.interval_constants(piece)
        return n_pieces.astype(jnp.int32), piece, constants

    def variants(self, constants):
        if self.pieces is not None:
            return None
        n_pieces = constants[0]
        return (
            n_pieces == 1,
            dataclasses.replace(self, pieces=False),
            dataclasses.replace(self, pieces=True),
        )

    def interval(self, dynamics, constants, y, current, t_start, interval, buffer):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        # The walk counts; the spike times are written afterwards, outside its
        # branches and loops (a buffer carried through them is copied each time).
        out = self._count(dynamics, constants, y, current)
        if buffer is None:
            return out
        buffer = _record(dynamics, y, current, t_start, interval, out.count, buffer)
        return eqx.tree_at(lambda o: o.buffer, out, buffer, is_leaf=lambda x: x is None)

    def _count(self, dynamics, constants, y, current) -> IntervalOutcome:
        n_pieces, _, consts = constants

        def one_piece(y):
            return _walk(dynamics, consts, y, current, self.max_steps)

        def pieces(_):
            def body(_, acc: IntervalOutcome):
                out = one_piece(acc.y)
                return IntervalOutcome(
                    out.y,
                    acc.count + out.count,
                    None,
                    acc.counters + out.counters,
                    acc.exhausted | out.exhausted,
                    acc.root_fail | out.root_fail,
                )

            return lax.fori_loop(1, n_pieces, body, one_piece(y))

        if self.pieces is None:
            return lax.cond(n_pieces == 1, lambda _: one_piece(y), pieces, None)
        return pieces(None) if self.pieces else one_piece(y)
