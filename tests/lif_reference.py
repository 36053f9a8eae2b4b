"""Closed-form solution of the LIF neuron with piecewise-constant input.

Written independently of the library: spike by spike, in the time domain, with
NumPy float64. Between spikes, with constant current `I`,
`v(t) = v_inf + (v0 - v_inf) exp(-t / tau)`, `v_inf = v_rest + I tau / C`; the next
spike (if `v_inf > v_threshold`) is at `t + tau log((v_inf - v) / (v_inf - theta))`.
A crossing exactly at the end of an interval belongs to that interval. With a
refractory period `t_ref`, `v` is held at `v_reset` for `t_ref` ms after each spike
(possibly into later intervals) and free evolution resumes at its end.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class LIFReference:
    counts: np.ndarray  # (T, n) int
    spike_times: list  # per neuron, a 1-D array of absolute times (ms)
    final_v: np.ndarray  # (n,)
    interval_v: np.ndarray  # (T, n) voltage at the end of each interval
    final_refractory: np.ndarray  # (n,) refractory time left at the end (ms)

    def padded_times(self, max_spikes: int) -> np.ndarray:
        out = np.full((len(self.spike_times), max_spikes), np.inf)
        for i, ts in enumerate(self.spike_times):
            out[i, : min(len(ts), max_spikes)] = ts[:max_spikes]
        return out


def lif_reference(
    weight,
    inputs,
    interval,
    tau_mem=20.0,
    v_rest=0.0,
    v_threshold=1.0,
    v_reset=0.0,
    C_mem=1.0,
    v0=None,
    t_ref=0.0,
    refractory0=None,
) -> LIFReference:
    weight = np.asarray(weight, np.float64)
    inputs = np.asarray(inputs, np.float64)
    n = weight.shape[0]
    T = inputs.shape[0]
    interval = float(interval)

    def per_neuron(p):
        return np.broadcast_to(np.asarray(p, np.float64), (n,)).copy()

    tau, vr, th, vres, cm, tr = map(
        per_neuron, (tau_mem, v_rest, v_threshold, v_reset, C_mem, t_ref)
    )
    v = vr.copy() if v0 is None else np.asarray(v0, np.float64).copy()
    rho = np.zeros(n) if refractory0 is None else np.asarray(refractory0, np.float64)
    currents = inputs @ weight.T
    counts = np.zeros((T, n), np.int64)
    times = [[] for _ in range(n)]
    interval_v = np.zeros((T, n))
    for k in range(T):
        v_inf = vr + currents[k] * tau / cm
        t = np.minimum(rho, interval)  # free evolution starts here
        blocked = rho >= interval
        rho = np.where(blocked, rho - interval, 0.0)
        while True:
            can = (v_inf > th) & (v < th) & ~blocked
            with np.errstate(divide="ignore", invalid="ignore"):
                t_cross = t + tau * np.log((v_inf - v) / (v_inf - th))
            fire = can & (t_cross <= interval)
            if not fire.any():
                break
            for i in np.flatnonzero(fire):
                times[i].append(k * interval + t_cross[i])
            counts[k, fire] += 1
            v = np.where(fire, vres, v)
            t = np.where(fire, t_cross + tr, t)
            newly_blocked = fire & (t >= interval)
            rho = np.where(newly_blocked, t - interval, rho)
            blocked = blocked | newly_blocked
        free = ~blocked
        v = np.where(free, v_inf + (v - v_inf) * np.exp(-(interval - t) / tau), v)
        interval_v[k] = v
    return LIFReference(counts, [np.asarray(ts) for ts in times], v, interval_v, rho)
