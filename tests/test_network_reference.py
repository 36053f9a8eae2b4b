"""Checks of the event-driven network reference itself (no library code involved):
hand-computed cases, and random small cases against SciPy's DOP853 integrator."""

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import lambertw

from .network_reference import (
    RunawayError,
    first_crossing,
    simulate_layer,
    simulate_network,
)

# -- an independent solve_ivp simulator ------------------------------------------------


def ivp_layer(
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
    rtol=1e-12,
    atol=1e-12,
):
    """The same model integrated numerically: DOP853 between jumps, one terminal
    event per neuron at its threshold, and the instant rule at every event."""
    W = np.asarray(W, np.float64)
    n = W.shape[0]
    cuba = model == "cuba"
    tm, ts, vr, th, vres, cm = (
        np.broadcast_to(np.asarray(p, np.float64), (n,))
        for p in (tau_mem, tau_syn, v_rest, v_threshold, v_reset, C_mem)
    )
    times = np.asarray(times, np.float64)
    sources = np.asarray(sources)
    jumps = {}
    for s_t, s in zip(times, sources):
        if np.isfinite(s_t):
            jumps.setdefault(float(s_t), []).append(W[:, s].copy())

    def rhs(_, y):
        v, i = y[:n], y[n:]
        dv = -(v - vr) / tm + (i / cm if cuba else 0.0)
        di = -i / ts if cuba else np.zeros(n)
        return np.concatenate([dv, di])

    def make_event(j):
        def event(_, y):
            return y[j] - th[j]

        event.terminal = True
        event.direction = 1
        return event

    events = [make_event(j) for j in range(n)]
    y = np.concatenate([vr.copy(), np.zeros(n)])
    spikes = [[] for _ in range(n)]

    def add(y, vec):
        if cuba:
            y[n:] += vec
        else:
            y[:n] += vec

    def fire(t, y, flow_fired):
        hit = flow_fired | (y[:n] >= th)
        passes = 0
        while hit.any():
            passes += 1
            assert passes < 1000, "runaway"
            for j in np.flatnonzero(hit):
                spikes[j].append(t)
            y[:n][hit] = vres[hit]
            if W_rec is None:
                return
            jump = np.asarray(W_rec)[:, hit].sum(axis=1)
            if delay > 0:
                if t + delay <= t_end:
                    jumps.setdefault(t + delay, []).append(jump)
                return
            add(y, jump)
            hit = y[:n] >= th

    t = 0.0
    while True:
        future = [s for s in jumps if s >= t]
        t_ext = min(future) if future else math.inf
        stop = min(t_ext, t_end)
        if stop > t:
            sol = solve_ivp(
                rhs, (t, stop), y, method="DOP853", rtol=rtol, atol=atol, events=events
            )
            if sol.status == 1:
                hit = np.array([len(e) > 0 for e in sol.t_events])
                t = min(float(sol.t_events[j][0]) for j in np.flatnonzero(hit))
                j0 = int(np.flatnonzero(hit)[0])
                y = sol.y_events[j0][0].copy()
                fire(t, y, hit)
                continue
            y = sol.y[:, -1].copy()
            t = stop
        if t == t_ext:
            add(y, np.sum(jumps.pop(t_ext), axis=0))
            fire(t, y, np.zeros(n, bool))
        if t >= t_end and not (t_ext == t_end and t_end in jumps):
            break
    return [np.asarray(s) for s in spikes], y[:n], y[n:]


def assert_same_spikes(ref, other, tol):
    assert len(ref) == len(other)
    for j, (a, b) in enumerate(zip(ref, other)):
        assert len(a) == len(b), f"neuron {j}: {len(a)} vs {len(b)} spikes"
        np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=f"neuron {j}")


def random_case(seed, n_inputs, n, n_spikes, t_end, mean, std):
    rng = np.random.default_rng(seed)
    W = rng.normal(mean, std, (n, n_inputs))
    times = rng.uniform(0.0, t_end, n_spikes)
    sources = rng.integers(0, n_inputs, n_spikes)
    return W, times, sources


# -- against solve_ivp -----------------------------------------------------------------

CUBA_TAUS = [(20.0, 5.0), (10.0, 10.0), (10.0, 5.0), (4.0, 15.0)]


@pytest.mark.parametrize("tau_mem, tau_syn", CUBA_TAUS)
@pytest.mark.parametrize("seed", [0, 1])
def test_cuba_matches_solve_ivp(seed, tau_mem, tau_syn):
    W, times, sources = random_case(seed, 3, 4, 14, 40.0, mean=2.0, std=1.5)
    kwargs = dict(model="cuba", tau_mem=tau_mem, tau_syn=tau_syn)
    ref = simulate_layer(W, times, sources, 40.0, **kwargs)
    assert ref.counts.sum() >= 4
    ivp, v, i = ivp_layer(W, times, sources, 40.0, **kwargs)
    assert_same_spikes(ref.spike_times, ivp, 1e-8)
    np.testing.assert_allclose(ref.final_v, v, atol=1e-9)
    np.testing.assert_allclose(ref.final_i, i, atol=1e-9)


def test_cuba_parameters_per_neuron_match_solve_ivp():
    W, times, sources = random_case(7, 3, 4, 14, 40.0, mean=2.0, std=1.0)
    kwargs = dict(
        model="cuba",
        tau_mem=[20.0, 10.0, 8.0, 5.0],
        tau_syn=[5.0, 10.0, 4.0, 9.0],
        v_rest=[0.0, -0.2, 0.1, 0.0],
        v_threshold=[1.0, 0.8, 1.2, 1.0],
        v_reset=[0.0, -0.5, 0.1, 0.3],
        C_mem=[1.0, 2.0, 0.5, 1.5],
    )
    ref = simulate_layer(W, times, sources, 40.0, **kwargs)
    assert (ref.counts > 0).sum() >= 3
    ivp, v, _ = ivp_layer(W, times, sources, 40.0, **kwargs)
    assert_same_spikes(ref.spike_times, ivp, 1e-8)
    np.testing.assert_allclose(ref.final_v, v, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_lif_matches_solve_ivp(seed):
    W, times, sources = random_case(seed, 3, 4, 20, 40.0, mean=0.5, std=0.4)
    ref = simulate_layer(W, times, sources, 40.0, model="lif", tau_mem=10.0)
    assert ref.counts.sum() >= 4
    ivp, v, _ = ivp_layer(W, times, sources, 40.0, model="lif", tau_mem=10.0)
    assert_same_spikes(ref.spike_times, ivp, 1e-8)
    np.testing.assert_allclose(ref.final_v, v, atol=1e-9)


@pytest.mark.parametrize(
    "model, delay, tau_syn, scale",
    [
        ("cuba", 0.7, 5.0, 0.08),
        ("cuba", 0.0, 20.0, 0.03),
        ("lif", 0.7, 5.0, 0.3),
        ("lif", 0.0, 5.0, 0.3),
    ],
)
def test_recurrent_matches_solve_ivp(model, delay, tau_syn, scale):
    rng = np.random.default_rng(3)
    mean = 0.35 if model == "cuba" else 0.4
    W, times, sources = random_case(3, 3, 4, 12, 30.0, mean=mean, std=0.3)
    W_rec = rng.normal(0.0, scale, (4, 4))
    kwargs = dict(model=model, tau_mem=20.0, tau_syn=tau_syn, W_rec=W_rec, delay=delay)
    ref = simulate_layer(W, times, sources, 30.0, **kwargs)
    assert ref.counts.sum() >= 4
    # The recurrence changes the result.
    alone = simulate_layer(W, times, sources, 30.0, **{**kwargs, "W_rec": None})
    assert any(
        len(a) != len(b) or not np.array_equal(a, b)
        for a, b in zip(ref.spike_times, alone.spike_times)
    )
    ivp, v, _ = ivp_layer(W, times, sources, 30.0, **kwargs)
    assert_same_spikes(ref.spike_times, ivp, 1e-8)
    np.testing.assert_allclose(ref.final_v, v, atol=1e-9)


def test_two_layer_network_matches_solve_ivp():
    W1, times, sources = random_case(11, 3, 4, 14, 40.0, mean=2.0, std=1.0)
    W2 = np.random.default_rng(12).normal(1.0, 0.5, (3, 4))
    layers = [
        dict(W=W1, model="cuba", tau_mem=20.0, tau_syn=5.0),
        dict(W=W2, model="lif", tau_mem=20.0),
    ]
    ref = simulate_network(layers, times, sources, 40.0)
    assert all(r.counts.sum() > 0 for r in ref)
    ivp1, _, _ = ivp_layer(W1, times, sources, 40.0, model="cuba", tau_syn=5.0)
    assert_same_spikes(ref[0].spike_times, ivp1, 1e-8)
    # The second layer sees the first layer's spikes, source = neuron index.
    t2 = np.concatenate(ivp1)
    s2 = np.concatenate([np.full(len(ts), j) for j, ts in enumerate(ivp1)])
    ivp2, _, _ = ivp_layer(W2, t2, s2, 40.0, model="lif")
    assert_same_spikes(ref[1].spike_times, ivp2, 1e-8)


# -- hand-computed cases ---------------------------------------------------------------


def test_lif_subthreshold_jump_decays():
    ref = simulate_layer([[0.7]], [2.0], [0], 10.0, model="lif", tau_mem=20.0)
    assert ref.counts.tolist() == [0]
    assert ref.final_v[0] == pytest.approx(0.7 * math.exp(-8.0 / 20.0), rel=1e-15)


def test_lif_jump_landing_exactly_on_threshold_fires():
    ref = simulate_layer([[1.0], [1.0 - 1e-12]], [2.0], [0], 10.0, model="lif")
    assert [list(ts) for ts in ref.spike_times] == [[2.0], []]
    assert ref.final_v[0] == 0.0


def test_lif_suprathreshold_jump_fires_at_input_time_and_resets():
    ref = simulate_layer([[3.0], [50.0]], [2.5], [0], 10.0, model="lif", v_reset=-0.25)
    assert [list(ts) for ts in ref.spike_times] == [[2.5], [2.5]]
    expected = -0.25 * math.exp(-7.5 / 20.0)
    np.testing.assert_allclose(ref.final_v, [expected, expected], rtol=1e-15)


def test_lif_second_jump_on_decayed_membrane():
    # v(3-) = 0.6 exp(-2/20) = 0.5429: +0.46 crosses, +0.45 does not.
    for w2, expected in [(0.46, [3.0]), (0.45, [])]:
        ref = simulate_layer([[0.6, w2]], [1.0, 3.0], [0, 1], 10.0, model="lif")
        assert list(ref.spike_times[0]) == expected


def test_simultaneous_inputs_sum_before_firing():
    W = [[0.6, 0.6], [1.2, -0.5], [-0.5, 1.2]]
    ref = simulate_layer(W, [2.0, 2.0], [0, 1], 10.0, model="lif")
    assert [list(ts) for ts in ref.spike_times] == [[2.0], [], []]
    np.testing.assert_allclose(ref.final_v[1:], 0.7 * math.exp(-8.0 / 20.0))
    # The deliberately wrong variant (one spike at a time) gets these wrong, so the
    # cases tell the rule apart.
    wrong = simulate_layer(W, [2.0, 2.0], [0, 1], 10.0, model="lif", simultaneous=False)
    assert wrong.counts.tolist() != ref.counts.tolist()


def test_input_order_and_padding_do_not_matter():
    W, times, sources = random_case(5, 3, 4, 20, 40.0, mean=0.5, std=0.4)
    ref = simulate_layer(W, times, sources, 40.0, model="lif")
    perm = np.random.default_rng(0).permutation(len(times))
    times2 = np.concatenate([times[perm], [np.inf, np.inf]])
    sources2 = np.concatenate([sources[perm], [99, -1]])  # padding: ignored
    other = simulate_layer(W, times2, sources2, 40.0, model="lif")
    assert_same_spikes(ref.spike_times, other.spike_times, 0.0)


def test_cuba_single_input_closed_form_state():
    tm, ts, w, s, T = 20.0, 5.0, 0.2, 3.0, 17.0
    ref = simulate_layer([[w]], [s], [0], T, model="cuba", tau_mem=tm, tau_syn=ts)
    assert ref.counts.tolist() == [0]
    t = T - s
    phi = (math.exp(-t / ts) - math.exp(-t / tm)) / (1 / tm - 1 / ts)
    assert ref.final_v[0] == pytest.approx(w * phi, rel=1e-13)
    assert ref.final_i[0] == pytest.approx(w * math.exp(-t / ts), rel=1e-15)


def test_cuba_crossing_tau_mem_twice_tau_syn_closed_form():
    # tau_mem = 2 tau_syn, x = exp(-t / tau_mem): u = w tau_mem (x - x^2); the first
    # crossing of 1 is x = (1 + sqrt(1 - 4 / (w tau_mem))) / 2.
    tm, ts, w, s = 10.0, 5.0, 0.5, 1.0
    c = 1.0 / (w * tm)
    expected = s - tm * math.log((1 + math.sqrt(1 - 4 * c)) / 2)
    ref = simulate_layer([[w]], [s], [0], 50.0, model="cuba", tau_mem=tm, tau_syn=ts)
    assert ref.counts[0] >= 1
    assert ref.spike_times[0][0] == pytest.approx(expected, rel=1e-14)
    # A crossing at t_end counts; just before it, there is none.
    hit = simulate_layer(
        [[w]], [s], [0], expected + 1e-12, model="cuba", tau_mem=tm, tau_syn=ts
    )
    assert hit.counts.tolist() == [1]
    miss = simulate_layer(
        [[w]], [s], [0], expected - 1e-9, model="cuba", tau_mem=tm, tau_syn=ts
    )
    assert miss.counts.tolist() == [0]


def test_cuba_crossing_equal_taus_lambert_w():
    # tau_mem = tau_syn = tau: u = w t exp(-t / tau); first crossing of 1 at
    # t = -tau W0(-1 / (w tau)).
    tau, w, s = 10.0, 0.5, 2.0
    expected = s - tau * lambertw(-1.0 / (w * tau), 0).real
    ref = simulate_layer([[w]], [s], [0], 50.0, model="cuba", tau_mem=tau, tau_syn=tau)
    assert ref.counts[0] >= 1
    assert ref.spike_times[0][0] == pytest.approx(expected, rel=1e-14)


def test_cuba_grazing_peak_below_threshold_does_not_fire():
    # Peak of w t exp(-t / tau) is w tau / e: just below 1, no spike; just above, one.
    tau = 10.0
    w_peak = math.e / tau
    for factor, count in [(1 - 1e-9, 0), (1 + 1e-9, 1)]:
        ref = simulate_layer(
            [[w_peak * factor]],
            [0.0],
            [0],
            50.0,
            model="cuba",
            tau_mem=tau,
            tau_syn=tau,
        )
        assert ref.counts.tolist() == [count]


def test_first_crossing_touching_and_nearly_equal_taus():
    p = dict(tau_mem=10.0, tau_syn=10.0 * (1 + 1e-10), C_mem=1.0)
    t = first_crossing(0.0, 0.5, 1.0, 50.0, p)
    q = dict(tau_mem=10.0, tau_syn=10.0, C_mem=1.0)
    assert t == pytest.approx(first_crossing(0.0, 0.5, 1.0, 50.0, q), rel=1e-8)
    assert first_crossing(0.0, 0.5, 1.0, 1.0, q) == math.inf  # beyond the horizon


def test_recurrent_chain_zero_and_positive_delay():
    W = [[1.5], [0.0], [0.0]]
    W_rec = np.zeros((3, 3))
    W_rec[1, 0] = W_rec[2, 1] = 1.2
    zero = simulate_layer(W, [1.0], [0], 10.0, model="lif", W_rec=W_rec, delay=0.0)
    assert [list(ts) for ts in zero.spike_times] == [[1.0], [1.0], [1.0]]
    late = simulate_layer(W, [1.0], [0], 10.0, model="lif", W_rec=W_rec, delay=0.5)
    assert [list(ts) for ts in late.spike_times] == [[1.0], [1.5], [2.0]]


def test_recurrent_zero_delay_refire_and_runaway():
    # 0 fires (input), lifts 1 to threshold: 1 fires and lifts 0 back to threshold:
    # 0 fires a second time at the same instant and brings 1 (reset to -0.5) to 0.5.
    W = [[1.5], [0.0]]
    W_rec = np.array([[0.0, 1.0], [1.0, 0.0]])
    ref = simulate_layer(
        W, [1.0], [0], 5.0, model="lif", W_rec=W_rec, delay=0.0, v_reset=[0.0, -0.5]
    )
    assert [list(ts) for ts in ref.spike_times] == [[1.0, 1.0], [1.0]]
    np.testing.assert_allclose(ref.final_v, [0.0, 0.5 * math.exp(-4.0 / 20.0)])
    # With both resets at 0 the loop never stops.
    with pytest.raises(RunawayError):
        simulate_layer(
            W, [1.0], [0], 5.0, model="lif", W_rec=W_rec, delay=0.0, max_events=1000
        )


def test_recurrent_self_excitation_with_delay_until_t_end():
    # Deliveries due at t_end are processed: 1.0, 1.5, ..., 3.0.
    ref = simulate_layer(
        [[1.0]], [1.0], [0], 3.0, model="lif", W_rec=[[1.0]], delay=0.5
    )
    assert list(ref.spike_times[0]) == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_cuba_recurrence_goes_to_the_current():
    # A zero-delay delivery to i_syn does not make v jump: neuron 1 fires after 0.
    W_rec = np.zeros((2, 2))
    W_rec[1, 0] = 100.0
    ref = simulate_layer(
        [[5.0], [0.0]], [1.0], [0], 10.0, model="cuba", W_rec=W_rec, delay=0.0
    )
    assert ref.counts[0] >= 1 and ref.counts[1] >= 1
    assert ref.spike_times[1][0] > ref.spike_times[0][0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="times"):
        simulate_layer([[1.0]], [np.nan], [0], 10.0)
    with pytest.raises(ValueError, match="times"):
        simulate_layer([[1.0]], [-1.0], [0], 10.0)
    with pytest.raises(ValueError, match="t_end"):
        simulate_layer([[1.0]], [11.0], [0], 10.0)
    with pytest.raises(ValueError, match="sources"):
        simulate_layer([[1.0]], [1.0], [1], 10.0)
