"""Networks: snode_jax's spike-driven layers next to jaxsnn and eventax.

Two workloads, each run with the same input spikes and weights in every library:

1. jaxsnn's own feed-forward configuration, its Yin-Yang example: 5 input spikes
   (x, y, 1 - x, 1 - y and a bias at t = 0, times scaled by t_late = 10 ms),
   100 hidden and 3 output current-based LIF neurons, tau_mem = 10 ms = 2 tau_syn,
   v_th = 1, v_reset = -1000 (one spike per neuron), t_max = 4 tau_syn = 20 ms,
   weights drawn as its example draws them (N(3.0, 1.6) and N(0.5, 0.8)), a batch
   of 64 samples. jaxsnn runs with its own event buffers (50 and 53 events) and with
   buffers large enough for every event.
2. A recurrent current-based LIF layer of 16 to 1024 neurons (tau_mem = 20 ms,
   tau_syn = 5 ms), 32 Poisson input channels, recurrent weights with a 0.5 ms
   delay, 100 ms, against eventax's `EvNN`.

    python bench/bench_network.py --jaxsnn-python /tmp/jaxsnn-venv/bin/python \\
        --eventax-python /tmp/eventax-venv/bin/python
    python bench/bench_network.py --quick ...   # small sizes, prints only

Each peer runs in its own virtual environment through `bench/network_worker.py`
(jaxsnn and eventax each pin their own JAX), exchanging inputs, weights and spike
times through `.npz` files; the wall times are measured inside that process, on the
compiled function. Wall time: median of the timed repetitions after a first call;
compile: ahead-of-time `jax.jit(f).lower(...).compile()`. Spike times are compared
per (sample, neuron): *count mismatches* are cells whose spike counts differ (with
the number of reference spikes), *max |dt|* the largest difference of matched spike
times over the cells whose counts agree. The reference is snode_jax in float64.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import machine_line, write_section  # noqa: E402

import snode_jax as sj  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "network_worker.py")

# jaxsnn's Yin-Yang example (jaxsnn/examples/event/yinyang_analytical.py), in ms
YINYANG = dict(
    sizes=(5, 100, 3),
    params=dict(
        tau_mem=10.0, tau_syn=5.0, v_threshold=1.0, v_reset=-1000.0, v_rest=0.0
    ),
    t_late=10.0,
    t_end=20.0,  # t_max = 4 tau_syn
    own_steps=(50, 53),  # --n-spikes-hidden, --n-spikes-output
    weight_init=((3.0, 1.6), (0.5, 0.8)),  # Linear(mean, std) of syn1, syn2
)
RECURRENT = dict(
    params=dict(tau_mem=20.0, tau_syn=5.0, v_threshold=1.0, v_reset=0.0, v_rest=0.0),
    n_inputs=32,
    rate_hz=40.0,
    t_end=100.0,
    delay=0.5,
    w_in=(0.25, 0.15),  # N(mean, std)
    g_rec=2.0,  # recurrent weights N(0, g^2 / n), no self-connections
)


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.1e}"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _median_ms(walls):
    return 1e3 * statistics.median(walls)


class Timer:
    """Compile ahead of time, one first call, then timed repetitions until
    `min_reps` and either `max_reps` or `budget_s` (the rule of `compare.py`)."""

    def __init__(self, min_reps, max_reps, budget_s):
        self.min_reps, self.max_reps, self.budget_s = min_reps, max_reps, budget_s

    def meta(self):
        return dict(
            min_reps=self.min_reps, max_reps=self.max_reps, budget_s=self.budget_s
        )

    def __call__(self, fn, *args):
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - t0
        out = jax.block_until_ready(compiled(*args))
        walls = []
        while not (
            len(walls) >= self.min_reps
            and (len(walls) >= self.max_reps or sum(walls) >= self.budget_s)
        ):
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled(*args))
            walls.append(time.perf_counter() - t0)
        return out, compile_s, walls


def run_worker(python, simulator, meta, arrays, timer):
    """Run `network_worker.py` under `python`; `(info list, results npz)` or
    `(None, error line)`."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.npz"), os.path.join(tmp, "out.npz")
        meta = dict(meta, simulator=simulator, **timer.meta())
        np.savez(job, meta=np.asarray(json.dumps(meta)), **arrays)
        proc = subprocess.run(
            [python, WORKER, job, out], capture_output=True, text=True
        )
        if proc.returncode != 0 or not os.path.exists(out):
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return None, err[-1] if err else f"exit code {proc.returncode}"
        res = np.load(out)
        return json.loads(str(res["info"])), {k: res[k] for k in res.files}


# --------------------------------------------------------------------------------------
# Comparing spike trains


def compare_cells(times, ref):
    """`times`, `ref`: lists (one per cell: sample x neuron) of spike-time arrays.
    Returns `(count mismatches, reference spikes, max |dt| over matched cells)`."""
    mismatches, n_ref, err = 0, 0, 0.0
    for a, b in zip(times, ref, strict=True):
        a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
        n_ref += len(b)
        if len(a) != len(b):
            mismatches += 1
        elif len(a):
            err = max(err, float(np.abs(a - b).max()))
    return mismatches, n_ref, err


def first_divergence(times, ref):
    """Earliest reference or peer spike that has no counterpart in the other train
    (cells compared after sorting; `inf` where all counts agree)."""
    t = np.inf
    for a, b in zip(times, ref, strict=True):
        a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
        if len(a) != len(b):
            k = min(len(a), len(b))
            t = min(t, float(a[k]) if len(a) > k else float(b[k]))
    return t


def cells_from_padded(spike_times):
    """`(..., neurons, max_spikes)` +inf-padded array -> list of arrays."""
    st = np.asarray(spike_times, np.float64)
    return [row for row in st.reshape(-1, st.shape[-1])]


def cells_from_events(senders, times, n_cells):
    out = [[] for _ in range(n_cells)]
    for s, t in zip(senders, times, strict=True):
        out[int(s)].append(float(t))
    return [np.asarray(c, np.float64) for c in out]


# --------------------------------------------------------------------------------------
# Workload 1: jaxsnn's Yin-Yang configuration, feed-forward


def yinyang_inputs(batch, seed):
    """Yin-Yang points (uniform in the unit square, kept inside the big circle as
    jaxsnn's `yinyang_dataset` keeps them), mirrored, plus a bias spike at 0; encoded
    as spike times `value * t_late` and sorted per sample (jaxsnn's
    `spatio_temporal_encode`). Returns `(times (batch, 5) ms, sources (batch, 5))`."""
    rng = np.random.default_rng(seed)
    pts = np.empty((0, 2))
    while len(pts) < batch:
        c = rng.uniform(0.0, 1.0, (4 * batch, 2))
        keep = np.hypot(c[:, 0] - 0.5, c[:, 1] - 0.5) < 0.5
        pts = np.concatenate([pts, c[keep]])
    pts = pts[:batch]
    values = np.concatenate([pts, 1.0 - pts, np.zeros((batch, 1))], axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    times = np.take_along_axis(values, order, axis=1) * YINYANG["t_late"]
    return times, order.astype(np.int64)


def yinyang_weights(seed):
    """`[W1 (5, 100), W2 (100, 3)]` as (pre, post), drawn like jaxsnn's `Linear`."""
    rng = np.random.default_rng(seed + 1)
    s = YINYANG["sizes"]
    return [
        rng.standard_normal((s[k], s[k + 1])) * std + mean
        for k, (mean, std) in enumerate(YINYANG["weight_init"])
    ]


def snode_available():
    missing = [n for n in ("SpikeTrain", "SpikingODENetwork") if not hasattr(sj, n)]
    if missing:
        return False, "this snode_jax has no " + ", ".join(missing)
    return True, ""


def cuba(params, dtype):
    # C_mem = tau_mem: jaxsnn's and eventax's dv/dt = (i - v) / tau_mem, so the
    # weights carry over unchanged
    return sj.CubaLIFDynamics(**params, C_mem=params["tau_mem"]).astype(dtype)


def run_snode_feedforward(times, sources, weights, params, dtype, timer, max_spikes):
    sizes = YINYANG["sizes"]
    keys = jax.random.split(jax.random.key(0), len(weights))
    layers = []
    for k, w in enumerate(weights):
        layer = sj.SpikingODELayer(
            sizes[k], sizes[k + 1], cuba(params, dtype), key=keys[k], dtype=dtype
        )
        layers.append(eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(w.T, dtype)))
    net = sj.SpikingODENetwork(layers)

    def forward(net, t, s):
        def one(t, s):
            sol = net.simulate(
                sj.SpikeTrain(times=t, sources=s),
                t_end=YINYANG["t_end"],
                max_spikes=max_spikes,
            )
            return [(ls.spike_times, ls.num_spikes) for ls in sol.layers]

        return jax.vmap(one)(t, s)

    out, compile_s, walls = timer(
        forward, net, jnp.asarray(times, dtype), jnp.asarray(sources, jnp.int32)
    )
    cells = [cells_from_padded(st) for st, _ in out]
    return dict(compile_s=compile_s, walls=walls, cells=cells)


def jaxsnn_cells(res, k, layer, batch, n):
    """Per (sample, neuron) spike times of one LIF layer from jaxsnn's event buffer:
    its own spikes are the `internal` entries before t_max. Also returns the number
    of samples whose buffer ran full (the last slot holds an event: later events
    were not simulated)."""
    t = res[f"layer{layer}_time_{k}"]
    idx = res[f"layer{layer}_idx_{k}"]
    internal = res[f"layer{layer}_internal_{k}"]
    own = internal & (t < YINYANG["t_end"])
    cells = [[] for _ in range(batch * n)]
    for b, j in zip(*np.nonzero(own), strict=True):
        cells[b * n + int(idx[b, j])].append(float(t[b, j]))
    full = int(np.sum(idx[:, -1] >= 0))
    return [np.asarray(c) for c in cells], full


def _count(cells):
    return sum(int(np.isfinite(c).sum()) for c in cells)


def yinyang(args, timer):
    """Rows of the Yin-Yang table, notes, and the measured numbers the text uses."""
    batch, sizes = args.batch, YINYANG["sizes"]
    times, sources = yinyang_inputs(batch, args.seed)
    weights = yinyang_weights(args.seed)
    base = YINYANG["params"]
    # jaxsnn's solver covers tau_mem / tau_syn = 1 or 2 only; this one is 4
    ratio4 = dict(base, tau_mem=4 * base["tau_syn"])
    big = (sizes[0] + sizes[1] + 1, sizes[1] + sizes[2] + 1)
    rows, notes, facts = [], {}, {}

    def row(lib, setting, dtype, r, cells, ref, fulls="0"):
        scored = None
        if ref is None:
            mism = err = "n/a"
        else:
            scored = [compare_cells(c, q) for c, q in zip(cells, ref, strict=True)]
            mism = " / ".join(f"{m} of {n}" for m, n, _ in scored)
            err = " / ".join(_fmt(e) for _, _, e in scored)
        rows.append(
            [
                lib,
                setting,
                dtype,
                _fmt(_median_ms(r["walls"])),
                _fmt(r["compile_s"]),
                " / ".join(str(_count(c)) for c in cells),
                fulls,
                mism,
                err,
            ]
        )
        return scored

    ok, why = snode_available()
    refs = {}
    if ok:
        for label, params, dtype in (
            ("base", base, jnp.float64),
            ("base", base, jnp.float32),
            ("ratio4", ratio4, jnp.float64),
        ):
            name = jnp.dtype(dtype).name
            print(f"yinyang: snode_jax {label} {name}", file=sys.stderr, flush=True)
            r = run_snode_feedforward(
                times, sources, weights, params, dtype, timer, args.max_spikes
            )
            if name == "float64":
                refs[label] = r["cells"]
            setting = f"`SpikingODENetwork`, CubaLIF, max_spikes={args.max_spikes}"
            if label == "ratio4":
                setting += ", tau_mem = 4 tau_syn"
            scored = row("snode_jax", setting, name, r, r["cells"], refs[label])
            facts[f"snode_{label}_{name}"] = dict(r, scored=scored)
    else:
        notes["snode_jax"] = f"not run: {why}"

    if not args.jaxsnn_python:
        notes["jaxsnn"] = "not run: no --jaxsnn-python"
        return rows, notes, facts
    arrays = dict(in_times=times, in_idx=sources)
    arrays.update({f"w{k}": w for k, w in enumerate(weights)})
    own = dict(steps=YINYANG["own_steps"])
    runs = [
        (False, [own]),
        (True, [own, dict(steps=big), dict(steps=big, params=ratio4, label="ratio4")]),
    ]
    for x64, settings in runs:
        print(f"yinyang: jaxsnn x64={x64}", file=sys.stderr, flush=True)
        meta = dict(
            x64=x64,
            sizes=list(sizes),
            params=base,
            t_end=YINYANG["t_end"],
            settings=settings,
        )
        info, res = run_worker(args.jaxsnn_python, "jaxsnn", meta, arrays, timer)
        if info is None:
            notes["jaxsnn"] = f"failed: {res}"
            break
        for k, (setting, r) in enumerate(zip(settings, info, strict=True)):
            if "error" in r:
                notes[f"jaxsnn {setting}"] = r["error"]
                continue
            facts["jaxsnn_version"], facts["jaxsnn_jax"] = r["version"], r["jax"]
            cells, fulls = [], []
            for layer in range(len(sizes) - 1):
                c, full = jaxsnn_cells(res, k, layer, batch, sizes[layer + 1])
                cells.append(c)
                fulls.append(full)
            steps = tuple(setting["steps"])
            label = setting.get("label", "base")
            text = f"event buffers {steps[0]} / {steps[1]}"
            text += (
                " (its example's)"
                if steps == YINYANG["own_steps"]
                else " (room for all)"
            )
            if label == "ratio4":
                text += ", tau_mem = 4 tau_syn"
            scored = row(
                "jaxsnn",
                text,
                r["dtype"],
                r,
                cells,
                refs.get(label),
                " / ".join(str(f) for f in fulls),
            )
            facts[f"jaxsnn_{label}_{steps[0]}_{r['dtype']}"] = dict(
                r, cells=cells, fulls=fulls, scored=scored
            )
    return rows, notes, facts


# --------------------------------------------------------------------------------------
# Workload 2: one recurrent layer, against eventax


def recurrent_inputs(n, seed):
    """Poisson input spikes `(n_inputs, K)` ms (+inf padded) and weights
    `w_in (n_inputs, n)`, `w_rec (n, n)` as (pre, post), zero diagonal."""
    c = RECURRENT
    rng = np.random.default_rng(seed + n)
    rate = c["rate_hz"] * 1e-3
    trains = [
        np.sort(rng.uniform(0, c["t_end"], rng.poisson(rate * c["t_end"])))
        for _ in range(c["n_inputs"])
    ]
    K = max(1, max(len(t) for t in trains))
    in_times = np.full((c["n_inputs"], K), np.inf)
    for i, t in enumerate(trains):
        in_times[i, : len(t)] = t
    w_in = rng.standard_normal((c["n_inputs"], n)) * c["w_in"][1] + c["w_in"][0]
    w_rec = rng.standard_normal((n, n)) * c["g_rec"] / np.sqrt(n)
    np.fill_diagonal(w_rec, 0.0)
    return in_times, w_in, w_rec


def snode_recurrent(in_times, w_in, w_rec):
    """The snode_jax recurrent layer (float64) and its input train `(times,
    sources)`, sorted by time."""
    c = RECURRENT
    n_in, n = w_in.shape
    layer = sj.SpikingODELayer(
        n_in,
        n,
        cuba(c["params"], jnp.float64),
        recurrent=True,
        delay=c["delay"],
        key=jax.random.key(0),
        dtype=jnp.float64,
    )
    layer = eqx.tree_at(
        lambda m: (m.weight, m.recurrent_weight),
        layer,
        (jnp.asarray(w_in.T), jnp.asarray(w_rec.T)),
    )
    src = np.broadcast_to(np.arange(n_in)[:, None], in_times.shape).ravel()
    t = in_times.ravel()
    order = np.argsort(t, kind="stable")
    train_t, train_s = jnp.asarray(t[order]), jnp.asarray(src[order], jnp.int32)
    return layer, train_t, train_s


def run_snode_recurrent(in_times, w_in, w_rec, timer, max_spikes):
    c = RECURRENT
    layer, train_t, train_s = snode_recurrent(in_times, w_in, w_rec)

    def forward(layer, t, s):
        sol = layer.simulate(
            sj.SpikeTrain(times=t, sources=s), t_end=c["t_end"], max_spikes=max_spikes
        )
        return sol.spike_times, sol.num_spikes

    (st, num), compile_s, walls = timer(forward, layer, train_t, train_s)
    return dict(
        compile_s=compile_s,
        walls=walls,
        cells=cells_from_padded(st),
        max_count=int(np.max(num)),
    )


def run_eventax_recurrent(
    python, in_times, w_in, w_rec, solver, timer, steps=None, grow=True
):
    """eventax through the worker. `record` stops after `max_event_steps` events
    without an error, so unless `grow=False` the run is repeated with twice the
    steps until it ends with steps to spare."""
    c = RECURRENT
    n = w_in.shape[1]
    meta = dict(params=c["params"], t_end=c["t_end"], delay=c["delay"])
    arrays = dict(in_times=in_times, w_in=w_in, w_rec=w_rec)
    steps = steps or 1 + int(np.isfinite(in_times).sum()) + 20 * n + 256
    for _ in range(4):
        meta["settings"] = [
            dict(solver=solver, max_event_steps=steps, buffer_capacity=max(1000, 4 * n))
        ]
        info, res = run_worker(python, "eventax", meta, arrays, timer)
        if info is None:
            return None, res
        r = info[0]
        if "error" in r:
            return None, r["error"]
        if r["steps_used"] < steps or not grow:
            break
        steps *= 2
    else:
        return None, f"record used all {steps} event steps"
    r["cells"] = cells_from_events(res["senders_0"], res["times_0"], n)
    return r, None


def recurrent(args, timer):
    """Rows of the recurrent table, notes, and the measured numbers the text uses."""
    rows, notes, facts = [], {}, {}
    ok, why = snode_available()
    if not ok:
        notes["snode_jax"] = f"not run: {why}"
    if not args.eventax_python:
        notes["eventax"] = "not run: no --eventax-python"
    for n in args.sizes:
        in_times, w_in, w_rec = recurrent_inputs(n, args.seed)
        s = None
        if ok:
            print(f"recurrent n={n}: snode_jax", file=sys.stderr, flush=True)
            s = run_snode_recurrent(in_times, w_in, w_rec, timer, args.rec_max_spikes)
            facts[f"snode_{n}"] = s
        solvers = args.eventax_solvers if args.eventax_python else ()
        solvers = [x for x in solvers if x != "default" or n <= args.default_max_n]
        if not solvers and s is not None:
            rows.append(
                [str(n), "—", "n/a", _fmt(_median_ms(s["walls"])), _fmt(s["compile_s"])]
                + ["n/a"] * 6
                + [f"{_count(s['cells'])} spikes (snode_jax)"]
            )
        for solver in solvers:
            print(f"recurrent n={n}: eventax {solver}", file=sys.stderr, flush=True)
            e, err = run_eventax_recurrent(
                args.eventax_python, in_times, w_in, w_rec, solver, timer
            )
            if e is None:
                rows.append([str(n), solver] + ["n/a"] * 9 + [f"failed: {err}"])
                continue
            facts[f"eventax_{solver}_{n}"] = e
            cmp = ("n/a",) * 3
            if s is not None:
                mm, n_ref, dt = compare_cells(e["cells"], s["cells"])
                div = first_divergence(e["cells"], s["cells"])
                cmp = (
                    f"{mm} of {n_ref}",
                    _fmt(dt),
                    "none" if not np.isfinite(div) else _fmt(div),
                )
            e_ms = _median_ms(e["walls"])
            rows.append(
                [
                    str(n),
                    e["solver"],
                    str(_count(e["cells"])),
                    _fmt(_median_ms(s["walls"])) if s else "n/a",
                    _fmt(s["compile_s"]) if s else "n/a",
                    _fmt(e_ms),
                    _fmt(e["compile_s"]),
                    f"{e_ms / _median_ms(s['walls']):.2g}x" if s else "n/a",
                    *cmp,
                    f"{e['steps_used']} event steps",
                ]
            )
    if args.eventax_python and args.sizes:
        # `record` stops after max_event_steps without an error: show it once
        n = args.sizes[0]
        full = facts.get(f"eventax_tight_{n}")
        if full is not None:
            in_times, w_in, w_rec = recurrent_inputs(n, args.seed)
            steps = full["steps_used"] // 2
            e, err = run_eventax_recurrent(
                args.eventax_python,
                in_times,
                w_in,
                w_rec,
                "tight",
                Timer(1, 1, 0.0),
                steps=steps,
                grow=False,
            )
            if e is not None:
                facts["eventax_truncated"] = dict(
                    n=n,
                    steps=steps,
                    spikes=_count(e["cells"]),
                    full_spikes=_count(full["cells"]),
                    full_steps=full["steps_used"],
                )
            else:
                notes["eventax truncation check"] = err
        # two neurons driven identically cross threshold at the same instant; eventax
        # finds one crossing per solve and clips the other voltage below threshold
        meta = dict(params=RECURRENT["params"], t_end=20.0, delay=RECURRENT["delay"])
        meta["settings"] = [
            dict(solver="tight", max_event_steps=64, buffer_capacity=64)
        ]
        arrays = dict(
            in_times=np.array([[1.0]]),
            w_in=np.full((1, 2), 10.0),
            w_rec=np.zeros((2, 2)),
        )
        info, res = run_worker(
            args.eventax_python, "eventax", meta, arrays, Timer(1, 1, 0)
        )
        if info is not None and "error" not in info[0]:
            facts["eventax_simultaneous"] = np.sort(res["times_0"])
    return rows, notes, facts


# --------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes; prints only")
    p.add_argument(
        "--batch", type=int, default=64, help="Yin-Yang samples (its batch size)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="recurrent layer sizes (default 16 64 256 1024; --quick: 16 64)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-spikes",
        type=int,
        default=4,
        help="snode_jax spike buffer per neuron, Yin-Yang",
    )
    p.add_argument(
        "--rec-max-spikes",
        type=int,
        default=32,
        help="snode_jax spike buffer per neuron, recurrent layer",
    )
    p.add_argument(
        "--eventax-solvers",
        nargs="+",
        default=["tight", "default"],
        choices=["tight", "default"],
    )
    p.add_argument(
        "--default-max-n",
        type=int,
        default=256,
        help="largest layer for eventax's default (Euler) setting",
    )
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-reps", type=int, default=15)
    p.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of timed repetitions per method (after --min-reps)",
    )
    p.add_argument(
        "--jaxsnn-python",
        default=os.environ.get("SNODE_BENCH_JAXSNN_PYTHON"),
        help="interpreter of a venv with jaxsnn (env SNODE_BENCH_JAXSNN_PYTHON)",
    )
    p.add_argument(
        "--eventax-python",
        default=os.environ.get("SNODE_BENCH_EVENTAX_PYTHON"),
        help="interpreter of a venv with eventax (env SNODE_BENCH_EVENTAX_PYTHON)",
    )
    p.add_argument(
        "--results",
        default=None,
        help="Markdown file (default bench/RESULTS.md; none with --quick)",
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.max_reps, a.budget = 8, 3, 0.5
        a.sizes = a.sizes or [16, 64]
    a.sizes = a.sizes or [16, 64, 256, 1024]
    timer = Timer(a.min_reps, a.max_reps, a.budget)
    a.load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    yy = yinyang(a, timer)
    rec = recurrent(a, timer)
    took = (time.perf_counter() - t0) / 60
    a.load.append(os.getloadavg()[0])
    text = report(a, argv, yy, rec, took)
    print(text)
    path = a.results or (None if a.quick else os.path.join(HERE, "RESULTS.md"))
    if path and not a.no_write:
        write_section("bench_network", text, path)


def _command(argv):
    args = sys.argv[1:] if argv is None else argv
    out = []
    for x in args:
        out.append("<venv>/bin/python" if x.endswith("/bin/python") else x)
    return "python bench/bench_network.py" + "".join(" " + x for x in out)


YY_HEAD = (
    "| library | setting | dtype | median wall (ms) | compile (s) "
    "| spikes (hidden / output) | samples whose event buffer ran full "
    "| count mismatches vs snode_jax float64 (hidden / output) "
    "| max abs dt vs snode_jax float64 (ms, hidden / output) |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|"
)
REC_HEAD = (
    "| neurons | eventax solver | eventax spikes | snode_jax wall (ms) "
    "| snode_jax compile (s) | eventax wall (ms) | eventax compile (s) "
    "| eventax / snode_jax | count mismatches (neurons) vs snode_jax "
    "| max abs dt, matched neurons (ms) | first divergence (ms) | note |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _table(head, rows):
    return head + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _notes(notes):
    return [f"- {k}: {v}" for k, v in notes.items()] + ([""] if notes else [])


def report(a, argv, yy, rec, took):
    (yy_rows, yy_notes, yf), (rec_rows, rec_notes, rf) = yy, rec
    yp, rp = YINYANG["params"], RECURRENT
    versions = [f"snode_jax {sj.__version__}", f"jax {jax.__version__}"]
    if "jaxsnn_version" in yf:
        versions.append(f"jaxsnn {yf['jaxsnn_version']} (jax {yf['jaxsnn_jax']})")
    ev = next((v for k, v in rf.items() if k.startswith("eventax_tight")), None)
    if ev is not None:
        versions.append(f"eventax {ev['version']} (jax {ev['jax']})")
    lines = [
        "## Networks: `bench/bench_network.py`",
        "",
        f"Command: `{_command(argv)}` (took {took:.1f} min)  ",
        f"Machine: {machine_line()}; 1-minute load average {a.load[0]:.1f} at the "
        f"start, {a.load[1]:.1f} at the end  ",
        "Versions: " + ", ".join(versions),
        "",
        *(
            [
                "The machine was shared during this run (load average above, on "
                f"{os.cpu_count()} cores): wall times are approximate (within about "
                "2x between runs), spike-time comparisons are unaffected.",
                "",
            ]
            if max(a.load) > 0.5 * (os.cpu_count() or 1)
            else []
        ),
        "Each peer runs in its own virtual environment through "
        "`bench/network_worker.py`; every library gets the same input spikes and "
        "weights. Wall time: median of the timed repetitions after a first call of "
        "the compiled function; compile: ahead-of-time "
        "`jax.jit(f).lower(...).compile()`. Spike trains are compared per "
        "(sample, neuron): count mismatches are the neurons whose spike counts "
        "differ (of the reference spikes), max abs dt the largest difference of "
        "matched spike times over the neurons whose counts agree. The reference is "
        "snode_jax in float64.",
        "",
        f"### jaxsnn's Yin-Yang configuration: {a.batch} samples x "
        f"{' x '.join(str(s) for s in YINYANG['sizes'])}, feed-forward",
        "",
        f"Current-based LIF, tau_mem = {yp['tau_mem']:g} ms = 2 tau_syn, v_th = "
        f"{yp['v_threshold']:g}, v_reset = {yp['v_reset']:g} (one spike per neuron), "
        f"t_max = {YINYANG['t_end']:g} ms; inputs x, y, 1 - x, 1 - y and a bias spike "
        f"at 0, times x t_late = {YINYANG['t_late']:g} ms; weights N(3.0, 1.6) and "
        "N(0.5, 0.8), jaxsnn's `Linear` initialisation. jaxsnn works in seconds "
        "(converted in the worker); snode_jax's `CubaLIFDynamics` has C_mem = "
        "tau_mem, so that the weights carry over unchanged. Wall time is for the "
        "whole batch (jaxsnn's topology vmaps over it; snode_jax runs under "
        "`jax.jit(jax.vmap(...))`).",
        "",
        _table(YY_HEAD, yy_rows),
        "",
        *_notes(yy_notes),
        f"### eventax: one recurrent layer ({rp['n_inputs']} Poisson inputs at "
        f"{rp['rate_hz']:g} Hz, {rp['t_end']:g} ms)",
        "",
        f"Current-based LIF, tau_mem = {rp['params']['tau_mem']:g} ms, tau_syn = "
        f"{rp['params']['tau_syn']:g} ms, v_th = {rp['params']['v_threshold']:g}, "
        f"v_reset = {rp['params']['v_reset']:g}; input weights N({rp['w_in'][0]}, "
        f"{rp['w_in'][1]}), recurrent weights N(0, {rp['g_rec']:g}^2 / n) without "
        f"self-connections, a delay of {rp['delay']:g} ms on every recurrent "
        "connection and none on the inputs. eventax: `EvNN` with its `LIF`, the "
        "recurrent delay as an axonal delay of the neurons, "
        "`reset_grad_preserve=False` (v <- v_reset), float64, `record`. snode_jax: "
        "`SpikingODELayer(recurrent=True, delay=...)`, float64. One sample; first "
        "divergence: the earliest spike without a counterpart in the other library.",
        "",
        _table(REC_HEAD, rec_rows),
        "",
        *_notes(rec_notes),
        "### How the peers are built, and what was observed",
        "",
        *observations(yf, rf),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _worst(scored):
    """`(count mismatches, max abs dt)` over the layers of a scored run."""
    return sum(m for m, _, _ in scored), max(e for _, _, e in scored)


def observations(yf, rf):
    """The paragraphs on the peers' structure, with the numbers measured above."""
    out = []
    batch = None
    own = yf.get("jaxsnn_base_50_float64")
    big = next((v for k, v in yf.items() if k.startswith("jaxsnn_base_106")), None)
    r4 = next((v for k, v in yf.items() if k.startswith("jaxsnn_ratio4")), None)
    if own is not None:
        batch = len(own["cells"][0]) // YINYANG["sizes"][1]
        steps = YINYANG["own_steps"]
        text = [
            "**jaxsnn** (`jaxsnn.event`) builds a `Topology` of `Source`, `Linear` "
            "and `LIF` modules and simulates it layer by layer (vmapped over the "
            "batch): a `LIF` layer is a `jax.lax.scan` over a fixed number of event "
            "steps (`n_steps`); each step takes the earlier of the next input spike "
            "and the layer's next spike, found for every neuron by a closed-form "
            "time-to-first-spike solver (`jaxsnn.event.solver.ttfs_solver`: Lambert "
            "W for tau_mem = tau_syn, a logarithm for tau_mem = 2 tau_syn), advances "
            "the state with the matrix exponential of the linear dynamics, and "
            "stores the event, input spikes included, in the layer's buffer."
        ]
        if big is not None and big.get("scored"):
            mm, dt = _worst(big["scored"])
            text.append(
                "With room for every event its float64 spike times agree with "
                f"snode_jax's to {_fmt(dt)} ms ({mm} count mismatches): the two "
                "event-driven simulations of the same network coincide."
            )
        text.append(
            f"With its example's buffers ({steps[0]} / {steps[1]}) the hidden "
            f"buffer ran full in {own['fulls'][0]} of {batch} samples and "
            f"{_count(own['cells'][0])} hidden spikes were simulated"
            + (f" of {_count(big['cells'][0])}" if big is not None else "")
            + "; the rest were dropped without an error"
        )
        if own.get("scored"):
            m_out, _, dt_out = own["scored"][-1]
            text[-1] += (
                ", and the output layer, which saw only the hidden spikes that fit, "
                f"fired {_fmt(dt_out)} ms away from the full network's times "
                f"({m_out} output neurons with a different count)"
            )
        text[-1] += "."
        if r4 is not None and r4.get("scored"):
            mm, dt = _worst(r4["scored"])
            text.append(
                "Its solver picks the formula by `round(tau_mem / tau_syn)` through "
                "`lax.switch`, which clamps an index out of range, so tau_mem = 4 "
                "tau_syn ran the tau_mem = 2 tau_syn formula without an error: "
                f"spike times up to {_fmt(dt)} ms off ({mm} count mismatches)."
            )
        out.append(" ".join(text))
    ev = next((v for k, v in rf.items() if k.startswith("eventax_tight")), None)
    if ev is not None:
        text = [
            "**eventax** (`EvNN`) holds the whole network in one state (input "
            "channels are extra rows of one weight matrix, a mask gives the "
            "connectivity) and integrates it with one diffrax `diffeqsolve` per "
            "event, from the event to the next one in its buffer, stopped by an "
            "`Event` on the maximum over neurons of `v - v_th`: one spike per solve, "
            "so the cost grows with neurons x events (the table's wall times). After "
            "a spike it resets the neuron (by default subtracting `thresh - vreset`) "
            "and clips every voltage to `thresh - eps`. Delays are per synapse or "
            "per axon, held in a bounded buffer whose overflow raises."
        ]
        sim = rf.get("eventax_simultaneous")
        if sim is not None and len(sim) == 2:
            text.append(
                "Two neurons driven identically (one input spike, weight 10) cross "
                "threshold at the same instant; eventax fires them in consecutive "
                f"solves, {_fmt(float(sim[1] - sim[0]))} ms apart."
            )
        tr = rf.get("eventax_truncated")
        if tr is not None:
            text.append(
                "`record` stops after `max_event_steps` events without an error: at "
                f"{tr['n']} neurons, with {tr['steps']} steps (the run needs "
                f"{tr['full_steps']}) it returned {tr['spikes']} of "
                f"{tr['full_spikes']} spikes."
            )
        out.append(" ".join(text))
    return "\n\n".join(out).split("\n") if out else ["(no peer ran)"]


if __name__ == "__main__":
    main()
