"""Side-by-side benchmark of snode_jax against the simulators users would otherwise
pick, on the same LIF workloads, scored against the float64 closed form.

    python bench/compare.py                 # all peers that import; writes the
                                            # "compare" section of bench/RESULTS.md
                                            # and bench/compare.png
    python bench/compare.py --quick         # tiny size, snode_jax + Euler + diffrax,
                                            # prints only
    python bench/compare.py --brian2-python /path/to/brian2-venv/bin/python

Installs nothing. Peers are detected by importing them (NEST and Brian2 run in a
subprocess through `bench/compare_worker.py`; Brian2 may live in its own virtual
environment). See `bench/README.md` for the setup and what each column means.
"""

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    euler_lif,
    euler_spike_times,
    lif_reference,
    machine_line,
    max_time_error,
    write_section,
)

import snode_jax as sj  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "compare_worker.py")
INTERVAL = 1.0  # ms
PARAMS = dict(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0, C_mem=1.0)


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------
# Workloads and the closed-form reference


@dataclass
class Workload:
    key: str
    title: str
    batch: int
    n_neurons: int
    n_intervals: int
    n_inputs: int
    seed: int = 0
    weight: np.ndarray = field(init=False, repr=False)
    inputs: np.ndarray = field(init=False, repr=False)
    ref_counts: np.ndarray = field(init=False, repr=False)  # (B, T, n)
    ref_times: list = field(init=False, repr=False)  # B * n arrays

    def __post_init__(self):
        layer = sj.SpikingODELayer(
            self.n_inputs, self.n_neurons, dynamics(), key=jax.random.key(self.seed)
        )
        self.weight = np.asarray(layer.weight, np.float64)
        rng = np.random.default_rng(self.seed)
        shape = (self.batch, self.n_intervals, self.n_inputs)
        self.inputs = rng.standard_normal(shape) * 0.5
        refs = [
            lif_reference(self.weight, xb, INTERVAL, **PARAMS) for xb in self.inputs
        ]
        self.ref_counts = np.stack([r.counts for r in refs])
        self.ref_times = [t for r in refs for t in r.spike_times]

    @property
    def size(self):
        return (
            f"{self.batch} x {self.n_neurons} neurons x {self.n_intervals} intervals "
            f"x {self.n_inputs} inputs"
        )

    @property
    def duration_ms(self):
        return self.n_intervals * INTERVAL

    @property
    def currents(self):
        """`(T, B * n)`: the batch laid side by side as independent neurons."""
        cur = self.inputs @ self.weight.T  # (B, T, n)
        return np.ascontiguousarray(
            cur.transpose(1, 0, 2).reshape(self.n_intervals, -1)
        )

    @property
    def max_spikes(self):
        return int(1.5 * max(len(t) for t in self.ref_times)) + 16

    @property
    def total_ref_spikes(self):
        return int(self.ref_counts.sum())


def dynamics():
    return sj.ODELIFDynamics(**PARAMS)


def counts_from_times(times, batch, n_intervals, n_neurons, grid_start=False):
    """Per-interval counts `(B, T, n)` from flat per-neuron spike times. A precise
    time exactly on an interval end belongs to that interval (as in the reference);
    with `grid_start`, times are the starts of grid steps (Brian2), so `floor`."""
    out = np.zeros((batch * n_neurons, n_intervals), np.int64)
    for j, ts in enumerate(times):
        ts = np.asarray(ts, np.float64)
        ts = ts[np.isfinite(ts)]
        if grid_start:
            idx = np.floor(ts / INTERVAL + 1e-9)
        else:
            idx = np.ceil(ts / INTERVAL - 1e-12) - 1
        idx = np.clip(idx, 0, n_intervals - 1).astype(np.int64)
        np.add.at(out[j], idx, 1)
    return out.reshape(batch, n_neurons, n_intervals).transpose(0, 2, 1)


def _unflatten_senders(senders, times, n_total):
    order = np.argsort(senders, kind="stable")
    senders, times = senders[order], times[order]
    bounds = np.searchsorted(senders, np.arange(n_total + 1))
    return [np.sort(times[bounds[j] : bounds[j + 1]]) for j in range(n_total)]


# --------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    method: str
    setting: str
    wall_s: float | None = None  # median of the timed repetitions
    first_s: float | None = None  # first call (compile) or build + first run
    reps: int = 0
    steps_per_s: float | None = None  # per neuron per simulated second
    mismatches: int | None = None  # (batch, interval, neuron) cells that differ
    ref_spikes: int | None = None
    max_err: float | None = None  # ms
    memory: str = "n/a"
    note: str = ""
    family: str = ""
    # NEST: the same run scored against the closed form with its refractory period
    like_for_like: "Row | None" = None
    short: str = ""  # label in the plot


def _fmt_ms(s):
    if s is None:
        return "n/a"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _fmt_s(s):
    return "n/a" if s is None else f"{s:.2f}"


def _fmt_err(e):
    return "n/a" if e is None else f"{e:.1e}"


def _fmt_steps(s):
    return "n/a" if s is None else f"{s:,.0f}"


def _mb(nbytes):
    if nbytes < 2**20:
        return f"{nbytes / 2**10:.0f} kB"
    return f"{nbytes / 2**20:.1f} MB"


def table(rows):
    lines = [
        "| method | setting | median wall (ms) | first call (s) | reps "
        "| steps / neuron / simulated s | count mismatches / reference spikes "
        "| max spike-time error (ms) | peak memory | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        note = " ".join(str(r.note).split()).replace("|", "/")
        mism = (
            "n/a"
            if r.mismatches is None
            else f"{r.mismatches} / {r.ref_spikes}"
            if r.ref_spikes is not None
            else str(r.mismatches)
        )
        lines.append(
            f"| {r.method} | {r.setting} | {_fmt_ms(r.wall_s)} | {_fmt_s(r.first_s)} "
            f"| {r.reps or 'n/a'} | {_fmt_steps(r.steps_per_s)} | {mism} "
            f"| {_fmt_err(r.max_err)} | {r.memory} | {note} |"
        )
    return "\n".join(lines)


def score(row, wl, counts=None, times=None, grid_start=False):
    """Fill mismatches and max time error against the closed form."""
    row.ref_spikes = wl.total_ref_spikes
    if counts is None and times is not None:
        counts = counts_from_times(
            times, wl.batch, wl.n_intervals, wl.n_neurons, grid_start=grid_start
        )
    if counts is not None:
        counts = np.asarray(counts).reshape(wl.ref_counts.shape)
        row.mismatches = int(np.sum(np.rint(counts).astype(np.int64) != wl.ref_counts))
    if times is not None:
        row.max_err = max_time_error(times, wl.ref_times)
    return row


def refractory_reference(wl, t_ref):
    """Closed form with refractory period `t_ref` (`tests/lif_reference.py`): counts
    `(B, T, n)` and the spike times of every (batch, neuron), flat."""
    refs = [
        lif_reference(wl.weight, xb, INTERVAL, **PARAMS, t_ref=t_ref)
        for xb in wl.inputs
    ]
    return np.stack([r.counts for r in refs]), [t for r in refs for t in r.spike_times]


def score_refractory(row, wl, t_ref, counts=None, times=None):
    """Like `score`, against the closed form WITH refractory period `t_ref`."""
    ref_counts, ref_times = refractory_reference(wl, t_ref)
    row.ref_spikes = int(ref_counts.sum())
    if counts is None:
        counts = counts_from_times(times, wl.batch, wl.n_intervals, wl.n_neurons)
    counts = np.rint(np.asarray(counts)).astype(np.int64).reshape(ref_counts.shape)
    row.mismatches = int(np.sum(counts != ref_counts))
    row.max_err = max_time_error(times, ref_times)
    return row


# --------------------------------------------------------------------------------------
# Timing


class Timer:
    def __init__(self, min_reps, max_reps, budget_s):
        self.min_reps, self.max_reps, self.budget_s = min_reps, max_reps, budget_s

    def __call__(self, call, first_extra=0.0):
        """First call timed on its own (plus `first_extra`, e.g. compile time), then
        repetitions until `min_reps` and either `max_reps` or `budget_s` is reached.
        Returns `(last output, first_s, median_s, reps)`."""
        t0 = time.perf_counter()
        out = call()
        first = time.perf_counter() - t0 + first_extra
        walls = []
        while True:
            t0 = time.perf_counter()
            out = call()
            walls.append(time.perf_counter() - t0)
            if len(walls) >= self.min_reps and (
                len(walls) >= self.max_reps or sum(walls) >= self.budget_s
            ):
                break
        return out, first, statistics.median(walls), len(walls)


def aot(fn, *args):
    """Compile ahead of time: `(compiled, compile_s, memory string)`."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    try:
        ma = compiled.memory_analysis()
        nbytes = (
            ma.argument_size_in_bytes
            + ma.output_size_in_bytes
            + ma.temp_size_in_bytes
            - ma.alias_size_in_bytes
        )
        mem = f"{_mb(nbytes)} (XLA)"
    except Exception:  # not every backend reports it
        mem = "n/a"
    return compiled, compile_s, mem


def _run_jax(timer, fn, *args):
    compiled, compile_s, mem = aot(fn, *args)
    out, first, wall, reps = timer(
        lambda: jax.block_until_ready(compiled(*args)), compile_s
    )
    return out, first, wall, reps, mem


# --------------------------------------------------------------------------------------
# Methods always present: snode_jax, Euler in JAX, diffrax


def run_snode(wl, timer, solver=None, rtol=1e-6, atol=1e-8, t_ref=None):
    """snode_jax's `simulate` (spike times and counts), vmapped over the batch.
    With `t_ref`, the LIF has that refractory period (where the installed version
    supports it)."""
    kw = {} if solver is None else dict(solver=solver, rtol=rtol, atol=atol)
    dyn = dynamics() if t_ref is None else sj.ODELIFDynamics(**PARAMS, t_ref=t_ref)
    layer = sj.SpikingODELayer(
        wl.n_inputs, wl.n_neurons, dyn, key=jax.random.key(wl.seed), **kw
    )
    assert np.array_equal(np.asarray(layer.weight), wl.weight)
    max_spikes = wl.max_spikes
    x = jnp.asarray(wl.inputs)
    sol, first, wall, reps, mem = _run_jax(
        timer, jax.vmap(lambda xb: layer.simulate(xb, INTERVAL, max_spikes)), x
    )
    if solver is None:
        setting = "exact (default solver)"
        if t_ref is not None:
            setting = f"exact, t_ref={t_ref:g} ms"
    else:
        setting = f"{type(solver).__name__} rtol={rtol:g} atol={atol:g}"
    row = Row("snode_jax", setting, wall, first, reps, memory=mem, family="snode_jax")
    row.short = "exact" if solver is None else f"{type(solver).__name__} {rtol:g}"
    # (`sol.steps_per_second` assumes an unbatched solution; this one is vmapped)
    steps = np.asarray(sol.stats["num_steps"])
    row.steps_per_s = float(steps.mean()) * 1000.0 / wl.duration_ms
    spike_times = list(np.asarray(sol.spike_times).reshape(-1, max_spikes))
    counts = np.asarray(sol.counts)
    if t_ref is not None:
        return score_refractory(row, wl, t_ref, counts=counts, times=spike_times)
    return score(row, wl, counts=counts, times=spike_times)


def run_euler(wl, timer, dt):
    dyn = dynamics()
    w = jnp.asarray(wl.weight)
    x = jnp.asarray(wl.inputs)
    counts, first, wall, reps, mem = _run_jax(
        timer, jax.vmap(lambda xb: euler_lif(dyn, w, xb, INTERVAL, dt)), x
    )
    # Spike times need the per-step spike mask: recorded separately, untimed, one
    # sample at a time (the mask is T x steps x n booleans).
    rec = jax.jit(lambda xb: euler_lif(dyn, w, xb, INTERVAL, dt, record=True))
    times = []
    for xb in x:
        _, mask = rec(xb)
        times += euler_spike_times(mask, INTERVAL, dt)
        del mask
    row = Row("Euler (JAX)", f"dt={dt:g} ms", wall, first, reps, memory=mem)
    row.family, row.short = "Euler (JAX)", f"{dt:g}"
    row.steps_per_s = 1000.0 / dt
    row.note = "timed counts only; times from a recorded run"
    return score(row, wl, counts=np.asarray(counts), times=times)


def make_diffrax(wl, rtol, atol, root_tol):
    import diffrax as dfx
    import optimistix as optx

    p = PARAMS
    tau, vr, th, vres, cm = (
        p["tau_mem"],
        p["v_rest"],
        p["v_threshold"],
        p["v_reset"],
        p["C_mem"],
    )
    maxsp = wl.max_spikes
    term = dfx.ODETerm(lambda t, v, drive: -(v - vr) / tau + drive)
    solver = dfx.Tsit5()
    ctrl = dfx.PIDController(rtol=rtol, atol=atol)
    event = dfx.Event(
        lambda t, y, args, **kw: y - th,
        optx.Newton(rtol=root_tol, atol=root_tol),
        direction=True,
    )

    def neuron(currents):  # (T,) -> counts (T,), times (maxsp,), steps ()
        def one_interval(carry, current):
            v, k, times, n_sp, steps = carry
            t_end = (k + 1) * INTERVAL

            def body(c):
                t, v, times, n_sp, steps, _ = c
                sol = dfx.diffeqsolve(
                    term,
                    solver,
                    t,
                    t_end,
                    None,
                    v,
                    current / cm,
                    stepsize_controller=ctrl,
                    event=event,
                    max_steps=4096,
                    saveat=dfx.SaveAt(t1=True),
                )
                hit = sol.event_mask
                t_new, v_new = sol.ts[-1], sol.ys[-1]
                slot = jnp.minimum(n_sp, maxsp - 1)
                times = jnp.where(hit, times.at[slot].set(t_new), times)
                v_new = jnp.where(hit, vres, v_new)
                steps = steps + sol.stats["num_accepted_steps"]
                return t_new, v_new, times, n_sp + hit, steps, hit & (t_new < t_end)

            init = (k * INTERVAL, v, times, n_sp, steps, jnp.array(True))
            _, v, times, n_sp2, steps, _ = jax.lax.while_loop(
                lambda c: c[-1], body, init
            )
            return (v, k + 1, times, n_sp2, steps), n_sp2 - n_sp

        init = (
            jnp.asarray(vr, jnp.float64),
            jnp.asarray(0.0),
            jnp.full(maxsp, jnp.inf),
            jnp.asarray(0),
            jnp.asarray(0),
        )
        (_, _, times, _, steps), counts = jax.lax.scan(one_interval, init, currents)
        return counts, times, steps

    w = jnp.asarray(wl.weight)
    per_sample = jax.vmap(neuron, in_axes=1, out_axes=(1, 0, 0))
    return jax.vmap(lambda xb: per_sample(xb @ w.T))


def run_diffrax(wl, timer, rtol, atol, root_tol, label):
    fn = make_diffrax(wl, rtol, atol, root_tol)
    (counts, times, steps), first, wall, reps, mem = _run_jax(
        timer, fn, jnp.asarray(wl.inputs)
    )
    row = Row(
        "diffrax Event",
        f"Tsit5 rtol={rtol:g} atol={atol:g}, Newton {root_tol:g} ({label})",
        wall,
        first,
        reps,
        memory=mem,
        family="diffrax",
        short=f"{rtol:g}",
    )
    row.steps_per_s = float(np.mean(np.asarray(steps))) * 1000.0 / wl.duration_ms
    row.note = "per-neuron vmap; restarted after each spike"
    times = list(np.asarray(times).reshape(-1, wl.max_spikes))
    return score(row, wl, counts=np.asarray(counts), times=times)


# --------------------------------------------------------------------------------------
# eventax


EVENTAX_SETTINGS = {
    "tight": "Tsit5 PID rtol=1e-10 atol=1e-12, dt0=0.1, bisection 1e-12",
    "default": "defaults: Euler dt=0.001 ms, Newton 1e-2",
}


def make_eventax(wl, setting):
    """eventax's `LIF` with `tsyn = inf` (the synaptic current never decays) and
    zero bias. Input channel `k` spikes once, at the start of interval `k`, with
    weights `tau_mem * (I_k - I_{k-1})` (`I_k = W x_k`), so the current is the
    piecewise-constant drive of the workload, exactly. Neuron-to-neuron weights are
    masked out. `record` returns (time, neuron) of every spike."""
    import diffrax as dfx
    import optimistix as optx
    from eventax.evnn import EvNN
    from eventax.neuron_models import LIF

    B, T, n = wl.batch, wl.n_intervals, wl.n_neurons
    tau = PARAMS["tau_mem"]
    drive = tau / PARAMS["C_mem"] * (wl.inputs @ wl.weight.T)  # (B, T, n)
    delta = np.diff(np.concatenate([np.zeros((B, 1, n)), drive], axis=1), axis=1)
    weights = np.zeros((B, n + T, n))
    weights[:, n:, :] = delta
    wmask = np.zeros((n + T, n))
    wmask[n:, :] = 1.0
    max_events = 2 * (int(wl.ref_counts.sum(axis=(1, 2)).max()) + T) + 64
    kw = {}
    if setting == "tight":
        kw = dict(
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
            # Newton on its event function (the max over the layer of v - v_th,
            # kinked where the argmax changes) can fail to converge; bisection on
            # the bracket diffrax supplies does not
            root_finder=optx.Bisection(rtol=1e-12, atol=1e-12),
            solver_stepsize=0.1,
        )
    net = EvNN(
        LIF,
        n,
        wl.duration_ms,
        T,
        key=jax.random.key(0),
        wmask=jnp.asarray(wmask),
        init_weights=jnp.asarray(weights[0]),
        init_bias=0.0,
        thresh=PARAMS["v_threshold"],
        tsyn=jnp.inf,
        tmem=tau,
        vreset=PARAMS["v_reset"],
        max_event_steps=max_events,
        dtype=jnp.float64,
        **kw,
    )
    spikes_in = jnp.asarray(np.arange(T, dtype=np.float64)[:, None] * INTERVAL)

    def one(w):
        net_w = eqx.tree_at(lambda m: m.neuron_model.weights, net, w)
        ts, ids, _ = net_w.record(spikes_in)
        return ts, ids

    return jax.vmap(one), jnp.asarray(weights)


def run_eventax(wl, timer, setting):
    fn, weights = make_eventax(wl, setting)
    if wl.batch == 1:
        (ts, ids), first, wall, reps, mem = _run_jax(timer, fn, weights)
    else:
        # jax.vmap over the batch raises inside diffrax's event root find (seen
        # with 16 samples: the root find also runs for lanes without an event, and
        # eventax solves with throw=True), so: one compiled single-sample function,
        # called in a Python loop over the batch.
        compiled, compile_s, mem = aot(
            lambda w: jax.tree.map(lambda a: a[0], fn(w[None])), weights[0]
        )
        outs, first, wall, reps = timer(
            lambda: jax.block_until_ready([compiled(w) for w in weights]), compile_s
        )
        ts = np.stack([np.asarray(o[0]) for o in outs])
        ids = np.stack([np.asarray(o[1]) for o in outs])
    ts, ids = np.asarray(ts), np.asarray(ids).astype(np.int64)
    times = []
    for b in range(wl.batch):
        ok = np.isfinite(ts[b])
        times += _unflatten_senders(ids[b][ok], ts[b][ok], wl.n_neurons)
    row = Row(
        "eventax",
        EVENTAX_SETTINGS[setting],
        wall,
        first,
        reps,
        memory=mem,
        family="eventax",
        short=setting,
    )
    row.note = "LIF, tsyn=inf, one input channel per interval"
    if wl.batch > 1:
        row.note += (
            "; loop over the batch (jax.vmap fails in diffrax's event root find)"
        )
    return score(row, wl, times=times)


# --------------------------------------------------------------------------------------
# sc-neurocore (the tutorial's NumPy layer)


def run_sc_neurocore(wl, timer):
    from sc_neurocore.spike_ode import ODELIFDynamics, SpikingODELayer

    layer = SpikingODELayer(
        wl.n_inputs, wl.n_neurons, ODELIFDynamics(**PARAMS), dt_init=0.1, dt_min=0.001
    )
    layer.W = wl.weight.copy()

    def call():
        return np.stack([layer.forward(xb, INTERVAL) for xb in wl.inputs])

    tracemalloc.start()  # one sample: the batch is a loop, memory is per sample
    layer.forward(wl.inputs[0], INTERVAL)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    counts, first, wall, reps = timer(call)
    row = Row(
        "sc-neurocore SpikingODELayer",
        "tutorial defaults (dt_init=0.1, dt_min=0.001, 100 steps/interval)",
        wall,
        first,
        reps,
        memory=f"{_mb(peak)} (tracemalloc{', one sample' if wl.batch > 1 else ''})",
        family="sc-neurocore",
    )
    row.note = "counts only (spike times not exposed)"
    if wl.batch > 1:
        row.note += "; loop over the batch"
    return score(row, wl, counts=counts)


# --------------------------------------------------------------------------------------
# NEST and Brian2, through bench/compare_worker.py


def run_worker(python, simulator, wl, settings, timer):
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.npz"), os.path.join(tmp, "out.npz")
        meta = dict(
            simulator=simulator,
            settings=settings,
            interval=INTERVAL,
            params=PARAMS,
            min_reps=timer.min_reps,
            max_reps=timer.max_reps,
            budget_s=timer.budget_s,
        )
        np.savez(job, currents=wl.currents, meta=np.asarray(json.dumps(meta)))
        proc = subprocess.run(
            [python, WORKER, job, out], capture_output=True, text=True
        )
        if proc.returncode != 0 or not os.path.exists(out):
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return None, err[-1] if err else f"exit code {proc.returncode}"
        res = np.load(out)
        info = json.loads(str(res["info"]))
        results = []
        for k, r in enumerate(info):
            if "error" in r:
                results.append((None, r["error"]))
                continue
            times = _unflatten_senders(
                res[f"senders_{k}"], res[f"times_{k}"], wl.batch * wl.n_neurons
            )
            results.append((r, times))
        return results, None


def run_nest(python, wl, timer, dts):
    settings = [dict(dt=h, t_ref=h, threads=1) for h in dts]
    results, err = run_worker(python, "nest", wl, settings, timer)
    if results is None:
        return [Row("NEST iaf_psc_delta_ps", "—", note=f"failed: {err}")]
    rows = []
    for setting, (r, times) in zip(settings, results):
        h = setting["dt"]
        label = f"h={h:g} ms, t_ref={h:g} ms"
        if r is None:
            rows.append(Row("NEST iaf_psc_delta_ps", label, note=f"failed: {times}"))
            continue
        row = Row(
            "NEST iaf_psc_delta_ps",
            label,
            statistics.median(r["walls"]),
            r["first"],
            len(r["walls"]),
            steps_per_s=1000.0 / h,
            memory=f"{r['rss_growth_mb']:.1f} MB ({r['rss_kind']})",
            family="NEST",
            short=f"h={h:g}",
        )
        score(row, wl, times=times)
        like = score_refractory(Row(row.method, label), wl, h, times=times)
        like.wall_s, like.first_s, like.reps = row.wall_s, row.first_s, row.reps
        like.steps_per_s, like.memory = row.steps_per_s, row.memory
        like.family, like.short = (
            "NEST, t_ref = h, vs closed form with t_ref",
            f"h={h:g}",
        )
        row.like_for_like = like
        row.note = (
            f"NOT like-for-like: NEST needs a refractory period t_ref >= one grid "
            f"step and the workload has none (see the like-for-like table). "
            f"{r['detail']}; first call = build {r['build']:.2f} s + first run"
        )
        rows.append(row)
    return rows


def run_brian2(python, wl, timer, dts):
    target = "cython"
    settings = [dict(dt=dt, method="exponential_euler", target=target) for dt in dts]
    results, err = run_worker(python, "brian2", wl, settings, timer)
    if results is None:
        return [Row("Brian2", "—", note=f"failed: {err}")]
    rows = []
    for setting, (r, times) in zip(settings, results):
        label = f"dt={setting['dt']:g} ms, exponential_euler"
        if r is None:
            rows.append(Row("Brian2", label, note=f"failed: {times}"))
            continue
        row = Row(
            "Brian2",
            label,
            statistics.median(r["walls"]),
            r["first"],
            len(r["walls"]),
            steps_per_s=1000.0 / setting["dt"],
            memory=f"{r['rss_growth_mb']:.1f} MB ({r['rss_kind']})",
            family="Brian2",
            short=f"{setting['dt']:g}",
        )
        row.note = (
            f"{r['detail']}; threshold checked once per step, spike time = start of "
            "that step; first call includes code generation"
        )
        if wl.batch > 1:
            row.note += "; batch as one group of B x n neurons"
        rows.append(score(row, wl, times=times, grid_start=True))
    return rows


# --------------------------------------------------------------------------------------
# Peers


@dataclass
class Peer:
    name: str
    available: bool
    version: str | None = None
    status: str = ""
    python: str | None = None  # interpreter that runs it (NEST, Brian2)


def _probe(python, module):
    code = (
        f"import {module} as m, sys; "
        "sys.stdout.write('\\nVERSION ' + str(getattr(m, '__version__', '?')))"
    )
    try:
        proc = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"
    for line in proc.stdout.splitlines():
        if line.startswith("VERSION "):
            return line.split(" ", 1)[1], None
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return None, (err[-1] if err else f"exit code {proc.returncode}")[:200]


def detect_peers(brian2_python):
    peers = {}
    try:
        from eventax.evnn import EvNN  # noqa: F401

        peers["eventax"] = Peer("eventax", True, _version("eventax"), "available")
    except Exception as e:
        peers["eventax"] = Peer(
            "eventax", False, status=f"not importable ({type(e).__name__}: {e})"
        )
    try:
        from sc_neurocore.spike_ode import SpikingODELayer  # noqa: F401

        peers["sc-neurocore"] = Peer(
            "sc-neurocore", True, _version("sc-neurocore"), "available"
        )
    except Exception as e:
        peers["sc-neurocore"] = Peer(
            "sc-neurocore", False, status=f"not importable ({type(e).__name__}: {e})"
        )
    v = _version("jaxsnn")
    why = (
        "cannot model this workload exactly: its current-based LIF is driven only "
        "by input spikes that make the synaptic current jump, after which it decays "
        "with tau_syn, and its closed-form next-spike solver covers only tau_mem = "
        "tau_syn or 2 tau_syn; a current held constant over each interval would "
        "need tau_syn = inf (outside that solver) or a bias (it has none)"
    )
    if hasattr(sj, "CubaLIFDynamics"):
        why += (
            ". The converse fails too: snode_jax's current-based CubaLIFDynamics "
            "relaxes the synaptic current towards the held input rather than "
            "letting spikes make it jump"
        )
    peers["jaxsnn"] = Peer(
        "jaxsnn",
        False,
        v,
        ("installed, not run: " if v else "not installed; ") + why,
    )
    v, err = _probe(sys.executable, "nest")
    peers["nest"] = (
        Peer("NEST", True, v, "available", sys.executable)
        if v
        else Peer("NEST", False, status=f"not importable ({err})")
    )
    v, err = _probe(sys.executable, "brian2")
    if v:
        peers["brian2"] = Peer("Brian2", True, v, "available", sys.executable)
    elif brian2_python:
        v2, err2 = _probe(brian2_python, "brian2")
        if v2:
            peers["brian2"] = Peer(
                "Brian2",
                True,
                v2,
                f"available in its own environment ({brian2_python}); here: {err}",
                brian2_python,
            )
        else:
            peers["brian2"] = Peer(
                "Brian2",
                False,
                status=f"not importable here ({err}) nor in {brian2_python} ({err2})",
            )
    else:
        peers["brian2"] = Peer(
            "Brian2",
            False,
            status=f"not importable here ({err}); give --brian2-python",
        )
    return peers


def peers_table(peers):
    lines = ["| peer | version | status |", "|---|---|---|"]
    for p in peers.values():
        lines.append(f"| {p.name} | {p.version or '—'} | {p.status} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Plot


FAMILY_STYLE = {
    "snode_jax": ("tab:red", "o"),
    "Euler (JAX)": ("tab:gray", "s"),
    "diffrax": ("tab:blue", "^"),
    "eventax": ("tab:green", "v"),
    "sc-neurocore": ("tab:brown", "X"),
    "NEST": ("tab:purple", "D"),
    "NEST, t_ref = h, vs closed form with t_ref": ("tab:pink", "d"),
    "Brian2": ("tab:orange", "P"),
}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(
        1, len(results), figsize=(6.4 * len(results), 6.0), squeeze=False
    )
    floor = 1e-16
    handles = {}
    for ax, (wl, rows) in zip(axes[0], results):
        rows = rows + [r.like_for_like for r in rows if r.like_for_like is not None]
        for r in rows:
            if r.wall_s is None or r.max_err is None:
                continue
            color, marker = FAMILY_STYLE.get(r.family, ("black", "o"))
            bad = bool(r.mismatches)
            ax.scatter(
                r.wall_s,
                max(r.max_err, floor),
                s=60,
                marker=marker,
                facecolors="none" if bad else color,
                edgecolors=color,
                zorder=3,
            )
            handles.setdefault(
                r.family,
                Line2D([], [], marker=marker, color=color, linestyle="none"),
            )
            ax.annotate(
                r.short,
                (r.wall_s, max(r.max_err, floor)),
                fontsize=6.5,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("median wall time (s)")
        ax.set_ylabel("max spike-time error vs closed form (ms)")
        ax.set_title(f"{wl.title}\n{wl.size}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="lower center",
        ncol=min(len(handles), 4),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Max spike-time error vs median wall time. Hollow: some spike counts differ "
        "from the closed form. Labels: tolerance (rtol) or step (ms).",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main


def summary(rows):
    """One sentence from the table: the fastest methods that got every count right."""
    exact = sorted(
        (r for r in rows if r.mismatches == 0 and r.wall_s is not None),
        key=lambda r: r.wall_s,
    )
    if not exact:
        return "No method got every count right."
    parts = [
        f"{r.method} ({r.setting}): {_fmt_ms(r.wall_s)} ms, max error "
        f"{_fmt_err(r.max_err)} ms"
        for r in exact[:3]
    ]
    return "Fastest with every count right: " + "; ".join(parts) + "."


def run_workload(wl, timer, peers, full):
    rows = []

    def add(name, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            out = fn(*args, **kw)
        except Exception as e:  # one failing method must not sink the benchmark
            msg = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            msg = ([ln for ln in msg if "Error:" in ln][-1:] or msg[:1] or [""])[0]
            out = Row(name, "—", note=f"failed: {type(e).__name__}: {msg[:200]}")
        outs = out if isinstance(out, list) else [out]
        rows.extend(outs)
        print(
            f"  [{wl.key}] {name}: {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        return outs

    add("snode_jax exact", run_snode, wl, timer)
    add(
        "snode_jax Dopri5 default",
        run_snode,
        wl,
        timer,
        sj.Dopri5(),
        rtol=1e-6,
        atol=1e-8,
    )
    if full:
        add(
            "snode_jax Dopri5 tight",
            run_snode,
            wl,
            timer,
            sj.Dopri5(),
            rtol=1e-10,
            atol=1e-12,
        )
    for dt in (0.1, 0.01, 0.001) if full else (0.1, 0.01):
        add(f"Euler {dt}", run_euler, wl, timer, dt)
    add("diffrax default", run_diffrax, wl, timer, 1e-6, 1e-8, 1e-8, "default")
    if full:
        add("diffrax tight", run_diffrax, wl, timer, 1e-10, 1e-12, 1e-12, "tight")
    if not full:
        return rows, []
    if peers["eventax"].available:
        add("eventax tight", run_eventax, wl, timer, "tight")
        if wl.batch == 1:
            add("eventax default", run_eventax, wl, timer, "default")
        else:
            rows.append(
                Row(
                    "eventax",
                    EVENTAX_SETTINGS["default"],
                    note="not run on the batch (about 45 s per call here), to keep "
                    "the whole script under 15 minutes; see (a) and (c)",
                    family="eventax",
                )
            )
    if peers["sc-neurocore"].available:
        add("sc-neurocore", run_sc_neurocore, wl, timer)
    like_rows = []
    if peers["nest"].available:
        # h = 0.01 ms on the batch takes about 45 s per run here: left out there
        dts = {"tutorial": (0.1, 0.01, 0.001), "batch": (0.1,)}.get(wl.key, (0.1, 0.01))
        for nest_row in add("NEST", run_nest, peers["nest"].python, wl, timer, dts):
            if nest_row.like_for_like is None:
                continue
            like_rows.append(nest_row.like_for_like)
            h = float(nest_row.setting.split("=")[1].split()[0])
            try:
                sj.ODELIFDynamics(**PARAMS, t_ref=h)
            except TypeError:
                like_rows.append(
                    Row("snode_jax", f"t_ref={h:g} ms", note="no refractory period")
                )
                continue
            like_rows += add(f"snode_jax t_ref={h}", run_snode, wl, timer, t_ref=h)
            rows.pop()  # shown in the like-for-like table only
    if peers["brian2"].available:
        dts = (0.1, 0.01, 0.001) if wl.key == "tutorial" else (0.1, 0.01)
        add("Brian2", run_brian2, peers["brian2"].python, wl, timer, dts)
    rows.append(
        Row(
            "jaxsnn",
            "—",
            note="not run: cannot model this workload exactly (see the peers table)",
        )
    )
    return rows, like_rows


def sweep_eventax(timer, sizes):
    lines = [
        "| neurons | snode_jax exact wall (ms) | eventax tight wall (ms) "
        "| eventax / snode_jax | eventax first call (s) | eventax count mismatches "
        "| eventax max error (ms) | snode_jax max error (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        wl = Workload("sweep", f"sweep {n}", 1, n, 100, 32, seed=n)
        a = run_snode(wl, timer)
        try:
            b = run_eventax(wl, timer, "tight")
        except Exception as e:
            lines.append(f"| {n} | {_fmt_ms(a.wall_s)} | failed: {e} | | | | | |")
            continue
        lines.append(
            f"| {n} | {_fmt_ms(a.wall_s)} | {_fmt_ms(b.wall_s)} "
            f"| {b.wall_s / a.wall_s:.0f}x | {b.first_s:.1f} "
            f"| {b.mismatches} / {b.ref_spikes} | {_fmt_err(b.max_err)} "
            f"| {_fmt_err(a.max_err)} |"
        )
        print(f"  [sweep] n={n} done", file=sys.stderr, flush=True)
    return "\n".join(lines)


def versions_line(peers):
    items = [
        f"snode_jax {sj.__version__}",
        f"jax {jax.__version__}",
        f"diffrax {_version('diffrax')}",
        f"equinox {_version('equinox')}",
        f"optimistix {_version('optimistix')}",
        f"numpy {np.__version__}",
    ]
    for p in peers.values():
        if p.version:
            items.append(f"{p.name} {p.version}")
    return ", ".join(items)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny size, only snode_jax, Euler (JAX) and diffrax; prints only",
    )
    p.add_argument("--max-reps", type=int, default=15)
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of timed repetitions per method and setting (after --min-reps)",
    )
    p.add_argument(
        "--brian2-python",
        default=os.environ.get("SNODE_BENCH_BRIAN2_PYTHON"),
        help="interpreter of an environment with Brian2, if it does not import here "
        "(env SNODE_BENCH_BRIAN2_PYTHON)",
    )
    p.add_argument(
        "--results",
        default=None,
        help="Markdown file for the 'compare' section (default bench/RESULTS.md; "
        "none with --quick)",
    )
    p.add_argument(
        "--plot",
        default=None,
        help="PNG path (default bench/compare.png; none with --quick)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)

    t_start = time.perf_counter()
    full = not a.quick
    if full:
        results_path = a.results or os.path.join(HERE, "RESULTS.md")
        plot_path = a.plot or os.path.join(HERE, "compare.png")
        timer = Timer(a.min_reps, a.max_reps, a.budget)
        workloads = [
            Workload("tutorial", "(a) tutorial", 1, 16, 100, 32, seed=0),
            Workload("batch", "(b) batch", 64, 256, 100, 32, seed=1),
            Workload("1s", "(c) 1 s of 1 ms intervals", 1, 256, 1000, 32, seed=2),
        ]
        peers = detect_peers(a.brian2_python)
    else:
        results_path, plot_path = a.results, a.plot
        timer = Timer(a.min_reps, min(a.max_reps, 5), min(a.budget, 0.5))
        workloads = [Workload("quick", "quick", 2, 8, 20, 8, seed=0)]
        peers = {}
    if a.no_write:
        results_path = plot_path = None

    sections, results = [], []
    for wl in workloads:
        print(f"workload {wl.key}: {wl.size}", file=sys.stderr, flush=True)
        rows, like_rows = run_workload(wl, timer, peers, full)
        results.append((wl, rows))
        sections.append(
            f"### {wl.title}: {wl.size} (1 ms each)\n\n"
            f"Closed form: {wl.total_ref_spikes} spikes. {summary(rows)}\n\n"
            + table(rows)
        )
        if like_rows:
            sections.append(
                f"Like-for-like with NEST on {wl.title}: the same LIF with an "
                "absolute refractory period t_ref equal to NEST's grid step, both "
                "scored against the closed form WITH that refractory period "
                "(`lif_reference(..., t_ref=...)` in `tests/lif_reference.py`).\n\n"
                + table(like_rows)
            )
    sweep = None
    if full and peers["eventax"].available:
        print("eventax sweep", file=sys.stderr, flush=True)
        sweep = sweep_eventax(timer, (16, 64, 256, 1024))
    elapsed = time.perf_counter() - t_start

    cmd = "python bench/compare.py" + (" --quick" if a.quick else "")
    if a.brian2_python and full:
        cmd += " --brian2-python <brian2 venv>/bin/python"
    head = [
        "## Comparison with other simulators (`bench/compare.py`)",
        "",
        f"Command: `{cmd}` (took {elapsed / 60:.1f} min)  ",
        f"Machine: {machine_line()}  ",
        f"Versions: {versions_line(peers)}",
        "",
        "LIF: tau_mem = 20 ms, v_rest = 0, v_threshold = 1, v_reset = 0, C_mem = 1; "
        "input x_k ~ N(0, 1) * 0.5 held over 1 ms interval k, weights N(0, 2 / 32), "
        "current W x_k; no refractory period. Every method gets the same weights and "
        "inputs and is scored against the float64 closed form "
        "(`tests/lif_reference.py`): *count mismatches* are the (sample, interval, "
        "neuron) cells whose spike count differs; *max spike-time error* is the "
        "largest distance from a reference spike to the nearest spike of the same "
        "neuron (missing or extra spikes show up as count mismatches instead). Wall "
        "time is the median of the timed repetitions after a first call; the first "
        "call (compile, code generation or network build) is reported on its own. "
        "JAX methods run in float64 under `jax.jit(jax.vmap(...))` over the batch. "
        "Steps: accepted solver steps (or grid steps) per neuron per simulated "
        "second. Peak memory: XLA's buffer sizes for the compiled function "
        "(arguments + outputs + temporaries), tracemalloc's peak for NumPy, or the "
        "growth of the worker process's peak RSS for NEST and Brian2. See "
        "`bench/README.md` for how each peer is set up to run the same model.",
    ]
    if full:
        head += ["", "Peers:", "", peers_table(peers)]
    text = "\n".join(head + [""] + ["\n\n".join(sections)])
    if sweep:
        text += (
            "\n\n### eventax vs snode_jax: neurons per layer (1 x n x 100 intervals "
            "x 32 inputs)\n\neventax integrates the whole layer between consecutive "
            "events (any neuron's spike or an input step), so its cost grows with "
            "neurons x total spikes.\n\n" + sweep
        )
    if plot_path:
        try:
            plot(results, plot_path)
            rel = os.path.relpath(plot_path, os.path.dirname(results_path or plot_path))
            text += (
                f"\n\n![Spike-time error vs wall time]({rel})\n\n"
                f"`{os.path.relpath(plot_path, ROOT)}`: max spike-time error vs "
                "median wall time, one point per method and setting (log-log; "
                "methods without spike times are left out)."
            )
        except ImportError as e:
            text += f"\n\n(No plot: {e}.)"
    print(text)
    if results_path:
        write_section("compare", text, path=results_path)


if __name__ == "__main__":
    sys.exit(main())
