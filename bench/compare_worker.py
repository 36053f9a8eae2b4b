"""Run one out-of-process simulator for `bench/compare.py` (NEST or Brian2).

Needs only NumPy and the simulator, so it also runs in a separate virtual
environment (Brian2 needs NumPy < 2 on Python 3.11). Reads a job file written by
`compare.py`, runs every setting in it, writes the results next to it:

    python bench/compare_worker.py JOB.npz OUT.npz

The job holds the per-interval currents `(T, N)` of `N` independent neurons, the LIF
parameters, the interval length and a list of settings. For each setting the output
holds the wall time of every repetition, the build time, the spike times (flat, with
the neuron index of each), the growth of the process's peak resident memory over
its size before the setting ran (Linux; the lifetime peak elsewhere) and the
simulator's version.
"""

import json
import resource
import sys
import time

import numpy as np


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    raise KeyError(key)


def _reset_peak():
    """Reset the peak-RSS mark (Linux) and return the current RSS in MB; `None`
    where that is not possible (then the process's lifetime peak is reported)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") / 1024.0
    except OSError:
        return None


def _peak_growth_mb(base):
    if base is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return _status_kb("VmHWM") / 1024.0 - base


def _enough(timed, min_reps, max_reps, budget_s):
    """The same rule as `compare.Timer`: at least `min_reps` timed runs after the
    first, then stop at `max_reps` or once they add up to `budget_s`."""
    return len(timed) >= min_reps and (len(timed) >= max_reps or sum(timed) >= budget_s)


def run_nest(currents, interval, p, setting, min_reps, max_reps, budget_s):
    """`iaf_psc_delta_ps` (precise spike times, exact integration between grid
    points). The per-interval currents come from one `step_current_generator` per
    neuron, connected with the minimal delay (one grid step); its change times are
    moved one grid step earlier to compensate, and everything runs one interval late
    (a quiet first interval at rest changes nothing), because a generator cannot act
    on the very first step."""
    import nest

    nest.set_verbosity("M_ERROR")
    h, t_ref, threads = setting["dt"], setting["t_ref"], setting.get("threads", 1)
    T, N = currents.shape
    offset = interval
    change_times = np.round(offset + np.arange(T) * interval - h, 9)

    def build():
        nest.ResetKernel()
        nest.set(resolution=h, local_num_threads=threads)
        nrn = nest.Create(
            "iaf_psc_delta_ps",
            N,
            params=dict(
                tau_m=p["tau_mem"],
                C_m=p["C_mem"],
                E_L=p["v_rest"],
                V_th=p["v_threshold"],
                V_reset=p["v_reset"],
                V_m=p["v_rest"],
                t_ref=t_ref,
            ),
        )
        gens = nest.Create(
            "step_current_generator",
            N,
            params=[
                dict(amplitude_times=change_times, amplitude_values=currents[:, j])
                for j in range(N)
            ],
        )
        nest.Connect(gens, nrn, "one_to_one", syn_spec={"delay": h})
        rec = nest.Create("spike_recorder")
        nest.Connect(nrn, rec)
        return nrn, rec

    walls, builds = [], []
    while True:
        t0 = time.perf_counter()
        nrn, rec = build()
        builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nest.Simulate(offset + T * interval)
        walls.append(time.perf_counter() - t0)
        if _enough(walls[1:], min_reps, max_reps, budget_s):
            break
    ev = rec.events
    senders = np.asarray(ev["senders"], np.int64) - int(nrn[0].global_id)
    times = np.asarray(ev["times"], np.float64) - offset
    return dict(
        walls=walls[1:],
        first=builds[0] + walls[0],
        build=float(np.median(builds)),
        senders=senders,
        times=times,
        version=nest.__version__,
        detail=f"{threads} thread(s)",
    )


def run_brian2(currents, interval, p, setting, min_reps, max_reps, budget_s):
    """A `NeuronGroup` with the drive in a `TimedArray` (one value per interval and
    neuron) and `exponential_euler` integration, which is exact for a drive that is
    constant over each step. The threshold is checked once per step; the spike time
    is that of the step (Brian2's convention)."""
    import brian2 as b2

    b2.start_scope()
    target = setting.get("target", "cython")
    b2.prefs.codegen.target = target
    b2.defaultclock.dt = setting["dt"] * b2.ms
    T, N = currents.shape
    drive = b2.TimedArray(currents / p["C_mem"] / b2.ms, dt=interval * b2.ms)
    ns = dict(
        v_rest=p["v_rest"],
        tau=p["tau_mem"] * b2.ms,
        v_th=p["v_threshold"],
        v_reset=p["v_reset"],
        drive=drive,
    )
    t0 = time.perf_counter()
    group = b2.NeuronGroup(
        N,
        "dv/dt = -(v - v_rest) / tau + drive(t, i) : 1",
        threshold="v > v_th",
        reset="v = v_reset",
        method=setting.get("method", "exponential_euler"),
        namespace=ns,
    )
    group.v = p["v_rest"]
    mon = b2.SpikeMonitor(group)
    net = b2.Network(group, mon)
    net.store()
    build = time.perf_counter() - t0
    walls = []
    while True:
        net.restore()
        t0 = time.perf_counter()
        net.run(T * interval * b2.ms)
        walls.append(time.perf_counter() - t0)
        # the first run generates (and for cython compiles) the code: it is the
        # "first call"; the median is over the later runs
        if _enough(walls[1:], min_reps, max_reps, budget_s):
            break
    return dict(
        walls=walls[1:],
        first=build + walls[0],
        build=build,
        senders=np.asarray(mon.i[:], np.int64),
        times=np.asarray(mon.t[:] / b2.ms, np.float64),
        version=b2.__version__ + f" (NumPy {np.__version__})",
        detail=f"{target}, {setting.get('method', 'exponential_euler')}",
    )


RUNNERS = {"nest": run_nest, "brian2": run_brian2}


def main(job_path, out_path):
    job = np.load(job_path, allow_pickle=False)
    meta = json.loads(str(job["meta"]))
    currents = np.asarray(job["currents"], np.float64)
    runner = RUNNERS[meta["simulator"]]
    __import__(meta["simulator"])  # so that memory growth leaves out the import
    out, info = {}, []
    for k, setting in enumerate(meta["settings"]):
        base = _reset_peak()
        try:
            r = runner(
                currents,
                meta["interval"],
                meta["params"],
                setting,
                meta["min_reps"],
                meta["max_reps"],
                meta["budget_s"],
            )
        except Exception as e:  # reported in the table, not fatal
            info.append({"error": f"{type(e).__name__}: {e}"[:300]})
            continue
        out[f"senders_{k}"] = r.pop("senders")
        out[f"times_{k}"] = r.pop("times")
        r["rss_growth_mb"] = _peak_growth_mb(base)
        r["rss_kind"] = "peak RSS growth" if base is not None else "process peak RSS"
        info.append(r)
    out["info"] = np.asarray(json.dumps(info))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
