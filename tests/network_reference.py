"""Event-by-event reference simulator for networks of spiking neurons.

Written independently of the library, in NumPy/SciPy float64. Input and recurrent
spikes are instantaneous jumps; between events every neuron follows the closed-form
flow of its linear ODE, and the first upward threshold crossing is located by
`scipy.optimize.brentq` (to about 1e-14 relative) on a bracket found analytically.

Models (`u = v - v_rest`):

- `"lif"` (delta synapse): `du/dt = -u / tau_mem`; an input spike adds its weight
  to `v`.
- `"cuba"` (exponential synapse): `tau_syn di/dt = -i`, `du/dt = -u / tau_mem +
  i / C_mem`; an input spike adds its weight to `i`, `v` is continuous.

With `d = 1 / tau_mem - 1 / tau_syn` the CubaLIF flow over a time `t` is

    i(t) = i0 exp(-t / tau_syn)
    u(t) = u0 exp(-t / tau_mem) + (i0 / C_mem) phi(t),
    phi(t) = (exp(-t / tau_syn) - exp(-t / tau_mem)) / d      (t exp(-t / tau) if d = 0)

evaluated through `expm1`, so it is accurate for any ratio of the time constants,
including `tau_mem == tau_syn`. `u` has at most one interior extremum, where
`du/dt = 0`. `w = du/dt` obeys the same ODE with input `-i / tau_syn`, so
`w(t) = w0 exp(-t / tau_mem) - (i0 / (C_mem tau_syn)) phi(t)`, which vanishes at

    t_e = log1p(r d) / d      (t_e = r if d = 0),   r = w0 C_mem tau_syn / i0,

when `r > 0` and `1 + r d > 0`. On each side of `t_e` the membrane is monotone, so
the first upward crossing of the threshold in a window `[0, H]` is bracketed either
by `[0, min(t_e, H)]` or by `[t_e, H]`.

Order of events at one instant `t` (exact global time order):

1. every neuron is advanced to `t` by its flow;
2. all jumps due at `t` are added together (every input spike at exactly `t` and
   every recurrent delivery due at `t`);
3. every neuron whose membrane reached threshold by its flow at `t`, or that is now
   at or above threshold, fires at `t`: the spike is recorded and `v <- v_reset`
   (`i` is unchanged);
4. each spike of neuron `k` delivers `W_rec[j, k]` to every neuron `j` at `t +
   delay` (to `v` for the LIF, to `i` for the CubaLIF). With `delay == 0` these are
   due at `t` itself and steps 2-3 repeat at `t` until no neuron fires.

The simulation covers `[0, t_end]`: events at `t <= t_end` are processed and a
crossing at exactly `t_end` counts.
"""

import heapq
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

MODELS = ("lif", "cuba")
_EPS = np.finfo(np.float64).eps


class RunawayError(RuntimeError):
    """More events than `max_events` (for example a zero-delay excitatory loop)."""


@dataclass
class LayerResult:
    spike_times: list  # per neuron, a sorted 1-D float64 array (ms)
    final_v: np.ndarray  # (n,) at t_end
    final_i: np.ndarray  # (n,) at t_end (zeros for the LIF)
    num_events: int  # event instants processed (external jumps or crossings)

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(ts) for ts in self.spike_times], np.int64)

    def padded(self, max_spikes: int) -> np.ndarray:
        out = np.full((len(self.spike_times), max_spikes), np.inf)
        for j, ts in enumerate(self.spike_times):
            k = min(len(ts), max_spikes)
            out[j, :k] = ts[:k]
        return out

    def as_input(self):
        """This layer's spikes as `(times, sources)` (source = neuron index),
        sorted by time, ties by neuron."""
        times = np.concatenate([np.asarray(ts) for ts in self.spike_times] + [[]])
        sources = np.concatenate(
            [np.full(len(ts), j, np.int64) for j, ts in enumerate(self.spike_times)]
            + [np.zeros(0, np.int64)]
        )
        order = np.lexsort((sources, times))
        return times[order], sources[order]


# -- closed-form flow ----------------------------------------------------------------


def _phi(t, tau_mem, tau_syn):
    """(exp(-t/tau_syn) - exp(-t/tau_mem)) / (1/tau_mem - 1/tau_syn), stably."""
    d = 1.0 / tau_mem - 1.0 / tau_syn
    if d == 0.0:
        return t * math.exp(-t / tau_mem)
    if d > 0.0:  # tau_syn > tau_mem: factor out the slower decay, exp(-t/tau_syn)
        return math.exp(-t / tau_syn) * (-math.expm1(-d * t)) / d
    return math.exp(-t / tau_mem) * math.expm1(d * t) / d


def _flow(u0, i0, t, p):
    """(u, i) after a time `t` from (u0, i0); `p` is a dict of scalar parameters."""
    if t == 0.0:
        return u0, i0
    decay = math.exp(-t / p["tau_mem"])
    if i0 == 0.0:
        return u0 * decay, 0.0
    u = u0 * decay + (i0 / p["C_mem"]) * _phi(t, p["tau_mem"], p["tau_syn"])
    return u, i0 * math.exp(-t / p["tau_syn"])


def _extremum_time(u0, i0, p):
    """The one time t > 0 where du/dt = 0, or inf when there is none."""
    if i0 == 0.0:
        return math.inf
    tm, ts, cm = p["tau_mem"], p["tau_syn"], p["C_mem"]
    w0 = -u0 / tm + i0 / cm
    r = w0 * cm * ts / i0
    if not r > 0.0:
        return math.inf
    d = 1.0 / tm - 1.0 / ts
    if d == 0.0:
        return r
    if 1.0 + r * d <= 0.0:
        return math.inf
    return math.log1p(r * d) / d


def first_crossing(u0, i0, th, horizon, p):
    """First time t in [0, horizon] with u(t) >= th, starting from u0 < th, or inf.

    The membrane is monotone on [0, t_e] and on [t_e, inf), so the first crossing,
    if any, lies in the first of those pieces (cut at `horizon`) whose end is at or
    above threshold; brentq then finds it on a sign-changing bracket."""
    if not horizon > 0.0:
        return math.inf
    t_e = _extremum_time(u0, i0, p)
    pieces = [(0.0, horizon)] if t_e >= horizon else [(0.0, t_e), (t_e, horizon)]
    for a, b in pieces:
        fb = _flow(u0, i0, b, p)[0] - th
        if fb < 0.0:
            continue
        fa = _flow(u0, i0, a, p)[0] - th
        if fa >= 0.0:  # only at a == t_e reached from below: touched at t_e
            return a
        if fb == 0.0:
            return b

        def f(t):
            return _flow(u0, i0, t, p)[0] - th

        return brentq(f, a, b, xtol=1e-15, rtol=4 * _EPS, maxiter=500)
    return math.inf


# -- one layer -------------------------------------------------------------------------


def _per_neuron(value, n):
    return np.broadcast_to(np.asarray(value, np.float64), (n,)).copy()


def _check_inputs(times, sources, n_inputs, t_end):
    times = np.asarray(times, np.float64).reshape(-1)
    sources = np.asarray(sources).reshape(-1)
    if times.shape != sources.shape:
        raise ValueError("times and sources must have the same length")
    if np.isnan(times).any() or (times < 0).any():
        raise ValueError("times must be >= 0 and not NaN")
    finite = np.isfinite(times)
    if (times[finite] > t_end).any():
        raise ValueError("finite times must be <= t_end")
    src = sources[finite].astype(np.int64)
    if ((src < 0) | (src >= n_inputs)).any():
        raise ValueError("sources out of range")
    return times[finite], src


def simulate_layer(
    W,
    times,
    sources,
    t_end,
    model="lif",
    *,
    tau_mem=20.0,
    tau_syn=5.0,
    v_rest=0.0,
    v_threshold=1.0,
    v_reset=0.0,
    C_mem=1.0,
    W_rec=None,
    delay=0.0,
    max_events=100_000,
    simultaneous=True,
) -> LayerResult:
    """Simulate one layer of `n = W.shape[0]` neurons driven by input spikes.

    `W` is `(n, n_inputs)`; input spike `m` from source `sources[m]` at `times[m]`
    adds `W[:, sources[m]]`. `times` may be in any order; `+inf` entries are
    padding. `W_rec` (`(n, n)`, optional) is the recurrent weight, delivered with
    `delay` ms. Parameters are scalars or one per neuron. `tau_syn` is only used by
    `model="cuba"`. Raises `RunawayError` after `max_events` event instants (or
    firing passes within an instant).

    `simultaneous=False` is a deliberately wrong variant (jumps at the same instant
    are applied one spike at a time, firing after each), used to check that the
    tests can tell the difference.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    W = np.asarray(W, np.float64)
    n, n_inputs = W.shape
    t_end = float(t_end)
    delay = float(delay)
    if delay < 0:
        raise ValueError("delay must be >= 0")
    if W_rec is not None:
        W_rec = np.asarray(W_rec, np.float64)
        if W_rec.shape != (n, n):
            raise ValueError(f"W_rec must have shape {(n, n)}, got {W_rec.shape}")
    cuba = model == "cuba"
    tm = _per_neuron(tau_mem, n)
    ts = _per_neuron(tau_syn if cuba else 1.0, n)
    vr = _per_neuron(v_rest, n)
    th = _per_neuron(v_threshold, n)
    vreset = _per_neuron(v_reset, n)
    cm = _per_neuron(C_mem, n)
    params = [dict(tau_mem=tm[j], tau_syn=ts[j], C_mem=cm[j]) for j in range(n)]

    in_t, in_s = _check_inputs(times, sources, n_inputs, t_end)
    order = np.argsort(in_t, kind="stable")
    in_t, in_s = in_t[order], in_s[order]
    # Pending jumps, keyed by exact time: each entry is a list of (n,) vectors.
    pending: dict[float, list] = {}
    for t_s, s in zip(in_t, in_s):
        pending.setdefault(float(t_s), []).append(W[:, s])
    heap = list(pending)
    heapq.heapify(heap)

    u = np.zeros(n)  # v - v_rest
    i = np.zeros(n)
    spikes = [[] for _ in range(n)]
    t = 0.0
    num_events = 0
    # Absolute time of each neuron's next flow crossing in [t, t_end] (inf: none).
    # Valid until the neuron's state jumps or it is reset; then recomputed.
    t_cross = np.full(n, math.inf)
    changed = np.zeros(n, bool)

    def count_event():
        nonlocal num_events
        num_events += 1
        if num_events > max_events:
            raise RunawayError(f"more than max_events={max_events} events")

    def advance(dt):
        for j in range(n):
            u[j], i[j] = _flow(u[j], i[j], dt, params[j])

    def add_jump(vec):
        changed[vec != 0.0] = True
        if cuba:
            i[:] += vec
        else:
            u[:] += vec

    def fire_and_deliver(t_now, flow_fired):
        """Steps 3-4 at one instant, repeated while zero-delay deliveries make
        neurons fire."""
        fire = flow_fired | (u + vr >= th)
        while fire.any():
            for j in np.flatnonzero(fire):
                spikes[j].append(t_now)
            u[fire] = vreset[fire] - vr[fire]
            changed[fire] = True
            if W_rec is None:
                return
            jump = W_rec[:, fire].sum(axis=1)
            if delay > 0.0:
                t_arr = t_now + delay
                if t_arr <= t_end:
                    if t_arr not in pending:
                        pending[t_arr] = []
                        heapq.heappush(heap, t_arr)
                    pending[t_arr].append(jump)
                return
            add_jump(jump)
            count_event()  # each zero-delay pass counts, so a runaway loop stops
            fire = u + vr >= th

    while True:
        t_ext = heap[0] if heap else math.inf
        stop = min(t_ext, t_end)
        t_first = t_cross.min()  # step 1: the first flow crossing of any neuron
        if t_first <= stop:
            t_new = t_first
            flow_fired = t_cross <= t_new
        elif t_ext <= t_end:
            t_new = t_ext
            flow_fired = np.zeros(n, bool)
        else:  # nothing more happens up to t_end
            advance(t_end - t)
            t = t_end
            break
        advance(t_new - t)
        t = t_new
        jumps = []
        if t == t_ext:
            heapq.heappop(heap)
            jumps = pending.pop(t_ext)
        count_event()
        changed[:] = False
        if simultaneous:
            if jumps:  # step 2: all jumps due now, together
                add_jump(np.sum(jumps, axis=0))
            fire_and_deliver(t, flow_fired)
        else:  # wrong on purpose: one input spike's jump at a time
            fire_and_deliver(t, flow_fired)
            for vec in jumps:
                add_jump(vec)
                fire_and_deliver(t, np.zeros(n, bool))
        if t >= t_end:
            break
        for j in np.flatnonzero(changed):
            t_cross[j] = t + first_crossing(
                u[j], i[j], th[j] - vr[j], t_end - t, params[j]
            )
    # Spikes were appended in time order per neuron.
    return LayerResult(
        spike_times=[np.asarray(s, np.float64) for s in spikes],
        final_v=u + vr,
        final_i=i.copy(),
        num_events=num_events,
    )


def simulate_network(layers, times, sources, t_end, **common) -> list:
    """A feed-forward stack. `layers` is a list of dicts with the keyword arguments
    of `simulate_layer` (at least `W`; `model`, parameters, `W_rec`, `delay`
    optional); `common` holds defaults for all layers. Layer `k`'s spikes (source =
    neuron index) are layer `k + 1`'s input. Returns one `LayerResult` per layer."""
    results = []
    for spec in layers:
        kwargs = {**common, **spec}
        W = kwargs.pop("W")
        res = simulate_layer(W, times, sources, t_end, **kwargs)
        results.append(res)
        times, sources = res.as_input()
    return results
