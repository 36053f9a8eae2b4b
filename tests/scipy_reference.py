"""High-accuracy reference for spiking models without a closed form.

SciPy's `solve_ivp` (DOP853, rtol = atol = 1e-12 by default) with a terminal event at
the threshold, restarted after each reset, over piecewise-constant input. Written
independently of the library: the models' equations are restated here in NumPy.
"""

import numpy as np
from scipy.integrate import solve_ivp


def simulate_reference(
    rhs, threshold, reset, y0, currents, interval, rtol=1e-12, atol=1e-12
):
    """One neuron. `rhs(y, I)`, `threshold(y)` (spike at upward zero crossing),
    `reset(y)`; `currents` has one value per interval. Returns spike times (ms) and
    the state at the end of every interval."""
    y = np.asarray(y0, np.float64)
    times, ends = [], []
    for k, current in enumerate(currents):
        t, t_end = k * interval, (k + 1) * interval

        def event(_, yy):
            return threshold(yy)

        event.terminal = True
        event.direction = 1
        while t < t_end:
            sol = solve_ivp(
                lambda _, yy: rhs(yy, current),
                (t, t_end),
                y,
                method="DOP853",
                rtol=rtol,
                atol=atol,
                events=event,
            )
            if sol.status == 1:  # spike
                t = float(sol.t_events[0][0])
                times.append(t)
                y = reset(sol.y_events[0][0])
            else:
                y = sol.y[:, -1]
                t = t_end
        ends.append(y.copy())
    return np.asarray(times), np.asarray(ends)


def states_at_reference(
    rhs, threshold, reset, y0, currents, interval, save_times, rtol=1e-12, atol=1e-12
):
    """As `simulate_reference`, and the state at each of `save_times` (ascending, in
    `[0, len(currents) * interval]`), from each segment's dense output (DOP853's
    7th-order interpolant). A save time equal to a spike time gets the state after
    the reset. Returns `(spike_times, states)`, states of shape `(len(save_times),
    len(y0))`."""
    y = np.asarray(y0, np.float64)
    save_times = np.asarray(save_times, np.float64)
    states = np.full((len(save_times), len(y)), np.nan)
    times = []
    done = save_times <= 0
    states[done] = y

    def event(_, yy):
        return threshold(yy)

    event.terminal = True
    event.direction = 1
    for k, current in enumerate(currents):
        t, t_end = k * interval, (k + 1) * interval
        while t < t_end:
            sol = solve_ivp(
                lambda _, yy: rhs(yy, current),
                (t, t_end),
                y,
                method="DOP853",
                rtol=rtol,
                atol=atol,
                events=event,
                dense_output=True,
            )
            spiked = sol.status == 1
            t_stop = float(sol.t_events[0][0]) if spiked else t_end
            y_stop = sol.y_events[0][0] if spiked else sol.y[:, -1]
            if spiked:
                times.append(t_stop)
                y_stop = reset(y_stop)
            inside = ~done & (save_times < t_stop)
            for j in np.flatnonzero(inside):
                states[j] = sol.sol(save_times[j])
            at_stop = ~done & (save_times == t_stop)
            states[at_stop] = y_stop
            done = done | inside | at_stop
            t, y = t_stop, np.asarray(y_stop, np.float64)
    assert done.all(), "save times past the end"
    return np.asarray(times), states


def adex_rhs(p):
    def rhs(y, current):
        v, w = y
        drive = p["g_L"] * p["Delta_T"] * np.exp((v - p["V_T"]) / p["Delta_T"])
        dv = (-p["g_L"] * (v - p["E_L"]) + drive - w + current) / p["C"]
        dw = (p["a"] * (v - p["E_L"]) - w) / p["tau_w"]
        return [dv, dw]

    return (
        rhs,
        lambda y: y[0] - p["v_peak"],
        lambda y: np.array([p["v_reset"], y[1] + p["b"]]),
    )


def izhikevich_rhs(a, b, c, d, v_peak=30.0):
    def rhs(y, current):
        v, u = y
        return [0.04 * v * v + 5 * v + 140 - u + current, a * (b * v - u)]

    return rhs, lambda y: y[0] - v_peak, lambda y: np.array([c, y[1] + d])


def qif_rhs(tau, k, v_rest, v_c, v_reset, v_peak, R):
    def rhs(y, current):
        v = y[0]
        return [(k * (v - v_rest) * (v - v_c) + R * current) / tau]

    return rhs, lambda y: y[0] - v_peak, lambda y: np.array([v_reset])
