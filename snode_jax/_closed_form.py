"""The closed-form event walk: each neuron steps from spike to spike through an
interval of held input, for models whose crossings are known in closed form."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._crossing import first_lanes, take_lanes
from ._dynamics import AbstractClosedFormDynamics
from ._misc import vary_like
from ._records import Counters, IntervalOutcome, set_entries
from ._scan import AbstractIntegrator

# Crossings handled before entering the loop: at typical rates most intervals hold at
# most this many spikes per neuron, and an unconditional multiply-compare is cheaper
# than a loop iteration.
_PEEL = 3

# Spikes per neuron per iteration of the walk's loop, once it is entered.
_UNROLL = 4

# The largest piece count of one interval (an int32 loop bound). A float32 array:
# compared with a float16 count, a Python float would be cast to float16 (inf,
# with NumPy's overflow warning at trace time).
_MAX_PIECES = np.float32(2.0**31 - 1)

# The pass over a record's slots goes on with only the neurons that have spikes
# left once they fit in 1/_FEW_DIVISOR of the population (at least _MIN_FEW; in a
# smaller population it runs on all of them throughout).
_FEW_DIVISOR = 8
_MIN_FEW = 64


def _walk(
    dynamics: AbstractClosedFormDynamics,
    constants,
    y,
    current,
    max_steps: int,
    n_pieces,
    counters: Counters,
    exhausted,
) -> IntervalOutcome:
    """Walk from event to event through one interval using the model's closed form:
    through `n_pieces` equal pieces (of the length `constants` are for), each from
    the end of the one before. Its outcome's `counters` and `exhausted` are the
    run's so far (`counters`, `exhausted`) with the interval's added.

    Each neuron takes one step per spike plus one to the end of each piece (its
    budget is `max_steps` per piece); deciding whether a spike happens costs a
    multiply and a compare.
    """
    ev = dynamics.interval_start(y, current, constants)
    # Zeros made from the state (not from a shape), so that under `jax.shard_map`
    # they vary across devices as the loops' carries do.
    first_pending = dynamics.crossing_pending(ev)
    zeros = jnp.zeros_like(first_pending, jnp.int32)

    def body(carry):
        ev, pending, count = carry
        ev = dynamics.fire(ev, pending)
        count = count + pending
        # A neuron has used `count + 1` steps once it moves on to its next segment.
        pending = dynamics.crossing_pending(ev) & (count + 1 < max_steps)
        return ev, pending, count

    def peeled(ev, pending):
        # The first `_PEEL` spikes of a budget of more than `_PEEL + 1` steps (a
        # static bound: the budget cannot run out), as `body` takes them, but
        # from a chain of unconditional fires: `ev` fired `k` times, and whether
        # that still has a crossing pending. A neuron takes the first of them
        # that does not (where `body` stops firing it), `_PEEL` if each does.
        # Fewer operations per neuron than fires under a mask (the count is a
        # select, not a sum of masks): XLA's CPU backend then runs each of the
        # fused loops over the neurons this makes on one thread, where it split
        # them into a task per core, whose hand-off took longer than the work
        # (2-core x86; bench/RESULTS.md, "Fewer operations per interval").
        always = jnp.ones_like(pending)
        fired, pendings = [ev], [pending]
        for k in range(_PEEL):
            fired.append(dynamics.fire(fired[-1], always))
            if k < _PEEL - 1:
                pendings.append(dynamics.crossing_pending(fired[-1]))
        ev, count = fired[_PEEL], jnp.full_like(zeros, _PEEL)
        for k in reversed(range(_PEEL)):
            ev = jax.tree.map(
                lambda a, b, k=k: a if a is b else jnp.where(pendings[k], a, b),
                ev,
                fired[k],
            )
            count = jnp.where(pendings[k], count, k)
        return ev, count

    # (What is left pending after these steps is decided again below, from the
    # state: their own pending mask is not needed.)
    pending = first_pending & (max_steps > 1)
    if max_steps > _PEEL + 1:  # most intervals need no loop at all
        ev, count = peeled(ev, pending)
    else:
        carry = (ev, pending, zeros)
        for _ in range(_PEEL):
            carry = body(carry)
        ev, _, count = carry

    # A loop is entered only when some neuron has more spikes in the interval's
    # first piece, or the interval has more pieces. (The integrator is never
    # vmapped, see `run_folded`: their conditions are the population's, not batched.)
    def spikes(carry):
        # The rest of a piece's spikes, `_UNROLL` per iteration for each neuron
        # that has them pending (`carry`'s count is the piece's): one pass over the
        # neurons' state per iteration, and the steps of a neuron with nothing
        # pending change nothing.
        def steps(c):
            for _ in range(_UNROLL):
                c = body(c)
            return c

        return lax.while_loop(lambda c: jnp.any(c[1]), steps, carry)

    nothing = jnp.zeros_like(first_pending)

    def one_piece(carry):
        ev, _, count = spikes(carry)
        return ev, count, nothing

    def pieces(carry):
        # Piece after piece, every neuron in the same one: its spikes, then, but
        # after the last, whether it leaves a crossing pending (its budget ran
        # out), and the next piece, whose count starts again. The per-piece work
        # is done once per piece, not once per spike. (How precisely the interval
        # counted is judged below from its whole count: the rounding at each
        # spike carries into the next piece.)
        def step(c):
            piece, ev, pending, in_piece, count, exhausted = c
            ev, _, in_piece = spikes((ev, pending, in_piece))
            count = count + in_piece
            turn = piece < n_pieces - 1
            exhausted = exhausted | (turn & dynamics.crossing_pending(ev))
            following = dynamics.next_piece(ev, current, constants)
            # (Entries that are scalars are fixed by the interval's constants
            # alone; so are those `next_piece` keeps.)
            ev = jax.tree.map(
                lambda a, b: b if a is b or not jnp.ndim(b) else jnp.where(turn, a, b),
                following,
                ev,
            )
            pending = turn & dynamics.crossing_pending(ev) & (max_steps > 1)
            in_piece = jnp.where(turn, 0, in_piece)
            return piece + 1, ev, pending, in_piece, count, exhausted

        ev, pending, in_piece = carry
        c = (jnp.zeros((), n_pieces.dtype), ev, pending, in_piece, zeros, nothing)
        c = lax.while_loop(lambda c: c[0] < n_pieces, step, c)
        _, ev, _, _, count, exhausted = c
        # Whether a piece before the last left a crossing pending.
        return ev, count, exhausted

    # The loops run in a loop that runs at most once, not in a branch of a
    # conditional: a branch that passes the carry through would copy it in every
    # interval, and a loop that does not run leaves its carry in place. It runs
    # where some neuron has a crossing left after the first spikes (more spikes,
    # or a budget run out) or a count that may be off (see `count_uncertain`):
    # the run's flags and counts of those are updated there alone. (Whether it
    # runs is reduced to one flag before it: its carry holds no array of them.)
    def needed(c):
        return c[0]

    def loops(c):
        go, ev, count, imprecise, exhausted = c
        # (As the steps before left it: the budget cannot have run out where
        # they were peeled.)
        pending = dynamics.crossing_pending(ev) & (count + 1 < max_steps)
        ev, count, ran_out = lax.cond(
            n_pieces > 1, pieces, one_piece, (ev, pending, count)
        )
        exhausted = exhausted | ran_out | dynamics.crossing_pending(ev)
        uncertain = dynamics.count_uncertain(ev, count).astype(jnp.int32)
        # (False, typed as the flag: under `jax.shard_map` it varies.)
        return go & False, ev, count, imprecise + uncertain, exhausted

    flagged = dynamics.crossing_pending(ev) | dynamics.count_uncertain(ev, count)
    go = (n_pieces > 1) | jnp.any(flagged)
    imprecise = counters.num_imprecise_intervals
    assert imprecise is not None
    c = (go, ev, count, imprecise, exhausted)
    _, ev, count, imprecise, exhausted = lax.while_loop(needed, loops, c)
    counters = Counters(
        counters.num_steps + count + n_pieces,
        counters.num_crossings + count,
        num_imprecise_intervals=imprecise,
    )
    no_fail = jnp.zeros(count.shape, bool)
    return IntervalOutcome(
        dynamics.interval_end(ev), count, None, counters, exhausted, no_fail
    )


class SlotMarks(eqx.Module):
    """The closed-form walk's spike record. Slot `j` of a neuron is for its spike
    `j`; the walk writes only to the slot of each interval's first spike (of that
    neuron), what the interval started from: its start time, its length (where
    intervals differ in length), the current and the start state. The times of all
    spikes are computed after the run ([`_slot_times`][]), from each interval's
    closed form ([`AbstractClosedFormDynamics.replay_interval`][], the times the
    derivatives are taken of): spike `m` of an interval at `first + m * period`.

    One scatter per interval, however many spikes it holds; the closed form is
    evaluated per slot (up to the largest spike count), not per neuron and interval.
    The record holds `2 + leaves` values per slot (`3 + leaves` where intervals
    differ in length), where a buffer of times holds one.

    **Fields:**

    - `marks`: `(width, max_spikes, n_neurons)`; a slot's start time is `-1` where
        no interval's first spike went. (Each entry of a slot is one contiguous row
        of the neurons: the pass over the slots reads them, and writes the times,
        without strides.)
    - `num`: `(n_neurons,)` spikes so far (may exceed `max_spikes`).
    - `uniform`: all intervals have the same length (not stored per slot).
    """

    marks: Float[Array, "width max_spikes n_neurons"]
    num: Int[Array, " n_neurons"]
    uniform: bool = eqx.field(static=True)

    @staticmethod
    def empty(state, max_spikes: int, dtype, uniform: bool) -> "SlotMarks":
        leaves = jax.tree.leaves(state)
        n = leaves[0].shape[0]
        width = (2 if uniform else 3) + len(leaves)
        marks = jnp.full((width, max_spikes, n), -1, dtype)
        return SlotMarks(marks, jnp.zeros((n,), jnp.int32), uniform)

    def mark(self, count, y, current, t_start, length) -> "SlotMarks":
        """Record an interval that started at `t_start` from `y` with `current` and
        held `count` spikes per neuron."""
        _, cap, n = self.marks.shape
        num = self.num + count
        if cap == 0:
            return SlotMarks(self.marks, num, self.uniform)
        dtype = self.marks.dtype
        columns = [t_start] + ([] if self.uniform else [length]) + [current]
        columns = [jnp.broadcast_to(c, (n,)).astype(dtype) for c in columns]
        row = jnp.stack(columns + jax.tree.leaves(y))  # (width, n)
        keep = (count > 0) & (self.num < cap)
        neurons = jnp.arange(n, dtype=jnp.int32)
        # The slot's entries (the leading axis) are written whole.
        marks = set_entries(self.marks, self.num, neurons, keep, row, leading=1)
        return SlotMarks(marks, num, self.uniform)


def _slot_times(dynamics, record: SlotMarks, state, interval):
    """Every recorded spike's time, `(n_neurons, max_spikes)`, `+inf` padded, for a
    run from `state` over intervals of length `interval`.

    One pass over the slots, up to the largest spike count: a slot where some
    neuron's interval starts takes the closed form (two logarithms per neuron); a
    slot that only continues intervals, a multiply-add. Once the neurons with
    spikes left fit in an eighth of the population, the rest of the pass runs on
    them alone."""
    _, cap, n = record.marks.shape
    dtype = record.marks.dtype
    if cap == 0:
        return vary_like(jnp.zeros((n, 0), dtype), record.marks, record.num, state)
    treedef = jax.tree.structure(state)
    first_leaf = 2 if record.uniform else 3

    def slots(dyn, lanes, carry, more, marks, subset=None):
        """The pass over the slots of the model `dyn` (`lanes` lanes of it: all,
        or with `subset` = `(take, index)` those that `take` indexes, written
        back at `index`, where `n` is padding) from `carry` = `(j, head, first,
        period)` while `more(j)`, writing each slot's times over its start times
        in `marks` (`(width, cap, n)`): `(carry, marks)` after it."""

        def interval_times(here):
            # The interval's first spike (absolute) and period. A count of 2, for
            # which both are the model's values (see `IntervalReplay`), whatever
            # the count.
            length = interval if record.uniform else here[1]
            y = jax.tree.unflatten(
                treedef, [here[first_leaf + i] for i in range(treedef.num_leaves)]
            )
            count = jnp.full((lanes,), 2, jnp.int32)
            rep = dyn.replay_interval(y, here[first_leaf - 1], length, count)
            return here[0] + rep.first, rep.period

        def fill(c):
            # Slot `j` of every lane: it holds a spike of the latest interval whose
            # first spike went to it or to a slot before it (the intervals of a
            # neuron take consecutive slots, in order), spike `j - head` of that
            # interval. Its time overwrites the slot's start time, in place. (A
            # loop over the slots, not a gather over all of them at once: fused
            # with a gather, XLA does not vectorise the closed form's logarithms.)
            (j, head, first, period), marks = c
            here = lax.dynamic_index_in_dim(marks, j, 1, keepdims=False)
            if subset is not None:
                here = here[:, subset[0]]
            starts_here = here[0] >= 0
            new_first, new_period = lax.cond(
                jnp.any(starts_here), interval_times, lambda _: (first, period), here
            )
            head = jnp.where(starts_here, j, head)
            first = jnp.where(starts_here, new_first, first)
            period = jnp.where(starts_here, new_period, period)
            times = first + (j - head).astype(dtype) * period
            if subset is None:
                zero = jnp.zeros((), jnp.int32)
                at = (zero, j, zero)
                marks = lax.dynamic_update_slice(marks, times[None, None], at)
            else:  # (padding is dropped)
                marks = marks.at[0, j, subset[1]].set(times, mode="drop")
            return (j + 1, head, first, period), marks

        return lax.while_loop(lambda c: more(c[0][0]), fill, (carry, marks))

    # Slots past every neuron's count are not visited (they are padded below).
    num = record.num
    top = jnp.minimum(jnp.max(num), cap)
    zero = jnp.zeros((n,), dtype)
    rest = vary_like((jnp.zeros((n,), jnp.int32), zero, zero), record.marks, state)
    carry = (jnp.zeros((), jnp.int32),) + rest
    few = n // _FEW_DIVISOR
    if few < _MIN_FEW:  # (a small population: all lanes throughout)
        _, marks = slots(dynamics, n, carry, lambda j: j < top, record.marks)
    else:
        # Every lane while more than `few` have spikes in slot `j` or after
        # (fewer and fewer: the counts spread out), then only those.
        many = lambda j: (j < top) & (jnp.sum(num > j) > few)
        carry, marks = slots(dynamics, n, carry, many, record.marks)
        index = first_lanes(num > carry[0], few)  # index n: padding
        take = jnp.minimum(index, n - 1)
        part = (carry[0],) + tuple(x[take] for x in carry[1:])
        dyn = take_lanes(dynamics, take)
        _, marks = slots(dyn, few, part, lambda j: j < top, marks, (take, index))
    times = marks[0]
    slot = jnp.arange(cap)[None, :]
    return jnp.where(slot < num[:, None], times.T, jnp.inf)


class ClosedFormWalk(AbstractIntegrator):
    """Integrates an [`AbstractClosedFormDynamics`][] (the LIF) by walking from spike
    to spike in closed form: no step control, no root finding. An interval much
    longer than the model's time scale is walked in equal pieces, so that the closed
    form's decay factors stay representable.

    **Arguments:**

    - `max_steps`: steps per neuron per interval, or per piece of an interval walked
        in pieces (one per spike plus one).
    - `span`: the longest piece; by default the model's `max_event_span()` over
        the population run. (Set by [`ClosedFormWalk.for_tile`][].)
    """

    max_steps: int = 4096
    span: Float[Array, ""] | None = None
    tiled: ClassVar[bool] = True

    def for_tile(self, dynamics):
        # The pieces are those of the whole population, not of the tile (whose
        # smallest `tau_mem` may be larger): every neuron takes the same steps,
        # and has the same budget, as when its population is run at once.
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        return ClosedFormWalk(self.max_steps, dynamics.max_event_span())

    def _span(self, dynamics):
        return dynamics.max_event_span() if self.span is None else self.span

    def zero_counters(self, n: int) -> Counters:
        z = jnp.zeros((n,), jnp.int32)
        return Counters(z, z, num_imprecise_intervals=z)

    def conditions(self, dynamics, interval):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        # The piece count is an int32 loop bound.
        pieces = jnp.max(interval / self._span(dynamics))
        name = type(dynamics).__name__
        return {f"interval < 2**31 * {name}.max_event_span()": pieces < _MAX_PIECES}

    def prepare(self, dynamics, interval):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        n_pieces = jnp.ceil(interval / self._span(dynamics))
        # An invalid interval (reported in `result`) takes a single piece; so does
        # one of too many pieces (reported too, see `conditions`).
        ok = jnp.isfinite(n_pieces) & (n_pieces > 1) & (n_pieces < _MAX_PIECES)
        n_pieces = jnp.where(ok, n_pieces, 1)
        piece = interval / n_pieces
        constants = dynamics.interval_constants(piece)
        return n_pieces.astype(jnp.int32), piece, constants

    def new_buffer(self, state, max_spikes, dtype, uniform):
        return SlotMarks.empty(state, max_spikes, dtype, uniform)

    def spike_times(self, dynamics, buffer, state, interval):
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        assert isinstance(buffer, SlotMarks)
        return _slot_times(dynamics, buffer, state, interval), buffer.num

    def interval(self, dynamics, constants, y, current, t_start, interval, buffer):
        # (Zeros made from the state: under `jax.shard_map` they vary as it does.)
        zero = jnp.zeros_like(jax.tree.leaves(y)[0], jnp.int32)
        counters = Counters(zero, zero, num_imprecise_intervals=zero)
        return self.accumulate(
            dynamics, constants, y, current, t_start, interval, buffer, counters,
            zero > 0,
        )  # fmt: skip

    def accumulate(
        self, dynamics, constants, y, current, t_start, interval, buffer, counters,
        exhausted,
    ):  # fmt: skip
        assert isinstance(dynamics, AbstractClosedFormDynamics)
        # The walk counts; the buffer is marked afterwards, outside its branches and
        # loops (a buffer carried through them is copied each time).
        n_pieces, _, consts = constants
        out = _walk(
            dynamics, consts, y, current, self.max_steps, n_pieces, counters,
            exhausted,
        )  # fmt: skip
        if buffer is None:
            return out
        assert isinstance(buffer, SlotMarks)
        buffer = buffer.mark(out.count, y, current, t_start, interval)
        return eqx.tree_at(lambda o: o.buffer, out, buffer, is_leaf=lambda x: x is None)
