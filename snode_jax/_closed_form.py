"""The closed-form event walk: each neuron steps from spike to spike through an
interval of held input, for models whose crossings are known in closed form."""

import jax.lax as lax
import jax.numpy as jnp

from ._dynamics import AbstractClosedFormDynamics
from ._records import Counters, IntervalOutcome
from ._scan import AbstractIntegrator

# Crossings handled before entering the loop: at typical rates most intervals hold at
# most this many spikes per neuron, and an unconditional multiply-compare is cheaper
# than a loop iteration.
_PEEL = 1

# The largest piece count of one interval (an int32 loop bound).
_MAX_PIECES = 2.0**31 - 1


def _walk(
    dynamics: AbstractClosedFormDynamics,
    constants,
    y,
    current,
    t_start,
    buffer,
    max_steps: int,
) -> IntervalOutcome:
    """Walk from event to event through one piece using the model's closed form.

    Each neuron takes one step per spike plus one to the end; deciding whether a
    spike happens costs a multiply and a compare.
    """
    ev = dynamics.interval_start(y, current, constants)
    zeros = jnp.zeros(current.shape, jnp.int32)

    def body(carry):
        ev, pending, count, buffer = carry
        if buffer is not None:
            buffer = buffer.record(pending, t_start + dynamics.crossing_time(ev))
        ev = dynamics.fire(ev, pending)
        count = count + pending
        # A neuron has used `count + 1` steps once it moves on to its next segment.
        pending = dynamics.crossing_pending(ev) & (count + 1 < max_steps)
        return ev, pending, count, buffer

    pending = dynamics.crossing_pending(ev) & (max_steps > 1)
    carry = (ev, pending, zeros, buffer)
    for _ in range(_PEEL):  # most intervals need no loop at all
        carry = body(carry)
    # The loop is entered only when some neuron has more spikes in the interval.
    # (The integrator is never vmapped, see `run_folded`, so this is a real branch.)
    ev, _, count, buffer = lax.cond(
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
        dynamics.interval_end(ev), count, buffer, counters, exhausted, no_fail
    )


class ClosedFormWalk(AbstractIntegrator):
    """Integrates an [`AbstractClosedFormDynamics`][] (the LIF) by walking from spike
    to spike in closed form: no step control, no root finding. An interval much
    longer than the model's time scale is walked in equal pieces, so that the closed
    form's decay factors stay representable.

    **Arguments:**

    - `max_steps`: steps per neuron per interval (one per spike plus one).
    """

    max_steps: int = 4096

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

    def interval(self, dynamics, constants, y, current, t_start, interval, buffer):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        n_pieces, piece, consts = constants
        dtype = current.dtype

        def one_piece(y, buffer, t0):
            return _walk(dynamics, consts, y, current, t0, buffer, self.max_steps)

        def pieces(_):
            def body(j, acc: IntervalOutcome):
                t0 = t_start + j.astype(dtype) * piece
                out = one_piece(acc.y, acc.buffer, t0)
                return IntervalOutcome(
                    out.y,
                    acc.count + out.count,
                    out.buffer,
                    acc.counters + out.counters,
                    acc.exhausted | out.exhausted,
                    acc.root_fail | out.root_fail,
                )

            first = one_piece(y, buffer, t_start)
            return lax.fori_loop(1, n_pieces, body, first)

        return lax.cond(
            n_pieces == 1, lambda _: one_piece(y, buffer, t_start), pieces, None
        )
