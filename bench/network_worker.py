"""Run one peer library for `bench/bench_network.py` (jaxsnn or eventax).

Each peer may pin its own JAX, so it runs in its own virtual environment, in a
separate process. Reads a job file written by `bench_network.py`, runs every setting
in it, writes the results next to it:

    python bench/network_worker.py JOB.npz OUT.npz

Times in the job and in the results are in ms (jaxsnn works in seconds: the
conversion happens here). For each setting the output holds the spike records, the
compile time (ahead-of-time `lower().compile()`), the wall time of every timed
repetition after a first call, and the peer's version.
"""

import importlib.metadata
import json
import sys
import time

import numpy as np


def _enough(timed, min_reps, max_reps, budget_s):
    """The rule of `compare.Timer`: at least `min_reps` timed runs after the first,
    then stop at `max_reps` or once they add up to `budget_s`."""
    return len(timed) >= min_reps and (len(timed) >= max_reps or sum(timed) >= budget_s)


def _time(jax, fn, args, meta):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - t0 + compile_s
    walls = []
    while not _enough(walls, meta["min_reps"], meta["max_reps"], meta["budget_s"]):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - t0)
    return out, compile_s, first, walls


# --------------------------------------------------------------------------------------
# jaxsnn: its event-driven feed-forward topology (Source -> Linear -> LIF -> ...)


def run_jaxsnn(job, meta, setting):
    """jaxsnn's `Topology` of `Source`, `Linear` projections and `LIF` populations,
    as its Yin-Yang example builds it, batched by the topology itself (`jax.vmap`
    inside `apply_fn`). `setting["steps"]` are the event buffers (`n_steps`) of the
    LIF layers: each holds every event the layer processes, its input spikes
    included, and nothing past it is simulated."""
    import jax

    jax.config.update("jax_enable_x64", bool(meta["x64"]))
    import jax.numpy as jnp
    from jaxsnn.event.modules import LIF, LIFParameters, Linear, Source
    from jaxsnn.event.topology import Topology
    from jaxsnn.event.types import Spike

    ms = 1e-3  # jaxsnn's unit is the second
    p = dict(meta["params"], **setting.get("params", {}))
    dtype = jnp.float64 if meta["x64"] else jnp.float32
    params = LIFParameters(
        tau_syn=p["tau_syn"] * ms,
        tau_mem=p["tau_mem"] * ms,
        v_th=p["v_threshold"],
        v_leak=p["v_rest"],
        v_reset=p["v_reset"],
    )
    weights = [np.asarray(job[f"w{k}"]) for k in range(len(meta["sizes"]) - 1)]
    builder = Topology(t_max=meta["t_end"] * ms)
    modules = {"inp": Source(meta["sizes"][0])}
    edges, prev = [], "inp"
    for k, (size, steps) in enumerate(zip(meta["sizes"][1:], setting["steps"])):
        modules[f"syn{k}"] = Linear(pre_weights=jnp.asarray(weights[k], dtype))
        modules[f"lif{k}"] = LIF(size, steps, params)
        edges += [(prev, f"syn{k}"), (f"syn{k}", f"lif{k}")]
        prev = f"lif{k}"
    builder.add(modules)
    builder.connect(edges)
    init_fn, apply_fn = builder.done()
    parameters = init_fn(jax.random.PRNGKey(0))  # returns pre_weights as given

    times = np.asarray(job["in_times"])  # (batch, n_in) ms, sorted per sample
    idx = np.asarray(job["in_idx"])
    spikes = Spike(
        time=jnp.asarray(times * ms, dtype),
        idx=jnp.asarray(idx, jnp.int32),
        current=jnp.zeros(times.shape, dtype),
        layer_idx=jnp.zeros(times.shape, jnp.int32),
        internal=jnp.ones(times.shape, bool),
    )

    def forward(spikes, parameters):
        out = apply_fn({"inp": spikes}, parameters)
        return {
            name: (out[name].time, out[name].idx, out[name].internal)
            for name in out
            if name.startswith("lif")
        }

    out, compile_s, first, walls = _time(jax, forward, (spikes, parameters), meta)
    arrays = {}
    for k in range(len(setting["steps"])):
        t, i, internal = (np.asarray(a) for a in out[f"lif{k}"])
        arrays[f"layer{k}_time"] = t.astype(np.float64) / ms
        arrays[f"layer{k}_idx"] = i.astype(np.int64)
        arrays[f"layer{k}_internal"] = internal.astype(bool)
    info = dict(
        compile_s=compile_s,
        first_s=first,
        walls=walls,
        version=importlib.metadata.version("jaxsnn"),
        jax=jax.__version__,
        dtype=str(jnp.dtype(dtype)),
    )
    return info, arrays


# --------------------------------------------------------------------------------------
# eventax: one EvNN (every neuron of the layer, recurrent connections in its mask)


EVENTAX_SOLVERS = {
    "tight": "Tsit5, PID rtol=1e-10 atol=1e-12, dt0=0.1 ms, bisection 1e-12",
    "default": "defaults: Euler dt=0.001 ms, Newton 1e-2",
}


def run_eventax(job, meta, setting):
    """eventax's `EvNN` with its current-based `LIF`: `in_size` input channels and
    `n` neurons in one network whose mask allows input -> neuron and neuron ->
    neuron (no self-connections). The recurrent delay is an axonal delay of the
    neurons (the same for all their targets), zero for the input channels. The
    voltage reset is `v <- vreset` (`reset_grad_preserve=False`; the default
    subtracts `thresh - vreset` instead). `record` returns (time, neuron) of every
    spike; it stops silently after `max_event_steps` events, so the number of steps
    used is returned too."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import equinox as eqx  # noqa: F401
    import jax.numpy as jnp
    import optimistix as optx
    from eventax.evnn import EvNN
    from eventax.neuron_models import LIF

    p = meta["params"]
    w_in = np.asarray(job["w_in"])  # (n_in, n): from input channel to neuron
    w_rec = np.asarray(job["w_rec"])  # (n, n): [from, to]
    n_in, n = w_in.shape
    weights = np.concatenate([w_rec, w_in], axis=0)  # rows: neurons, then inputs
    wmask = np.ones((n + n_in, n))
    wmask[np.arange(n), np.arange(n)] = 0.0
    axonal = np.concatenate([np.full(n, meta["delay"]), np.zeros(n_in)])
    kw = {}
    if setting["solver"] == "tight":
        kw = dict(
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
            root_finder=optx.Bisection(rtol=1e-12, atol=1e-12),
            solver_stepsize=0.1,
        )
    net = EvNN(
        LIF,
        n,
        meta["t_end"],
        n_in,
        key=jax.random.key(0),
        wmask=jnp.asarray(wmask),
        init_weights=jnp.asarray(weights),
        init_bias=0.0,
        init_axonal_delays=jnp.asarray(axonal),
        buffer_capacity=setting["buffer_capacity"],
        thresh=p["v_threshold"],
        tsyn=p["tau_syn"],
        tmem=p["tau_mem"],
        vreset=p["v_reset"],
        reset_grad_preserve=False,
        max_event_steps=setting["max_event_steps"],
        dtype=jnp.float64,
        **kw,
    )
    in_times = jnp.asarray(job["in_times"])  # (n_in, K), +inf padded

    def forward(net, in_times):
        ts, ids, buf_sizes = net.record(in_times)
        return ts, ids, buf_sizes

    (ts, ids, buf_sizes), compile_s, first, walls = _time(
        jax, forward, (net, in_times), meta
    )
    ts, ids, buf_sizes = np.asarray(ts), np.asarray(ids), np.asarray(buf_sizes)
    ok = np.isfinite(ts)
    info = dict(
        compile_s=compile_s,
        first_s=first,
        walls=walls,
        version=importlib.metadata.version("eventax"),
        jax=jax.__version__,
        steps_used=int((buf_sizes >= 0).sum()),
        max_event_steps=setting["max_event_steps"],
        solver=EVENTAX_SOLVERS[setting["solver"]],
    )
    arrays = dict(times=ts[ok].astype(np.float64), senders=ids[ok].astype(np.int64))
    return info, arrays


RUNNERS = {"jaxsnn": run_jaxsnn, "eventax": run_eventax}


def main(job_path, out_path):
    job = np.load(job_path, allow_pickle=False)
    meta = json.loads(str(job["meta"]))
    runner = RUNNERS[meta["simulator"]]
    out, info = {}, []
    for k, setting in enumerate(meta["settings"]):
        try:
            r, arrays = runner(job, meta, setting)
        except Exception as e:  # report and go on with the next setting
            info.append(dict(error=f"{type(e).__name__}: {str(e).splitlines()[0]}"))
            continue
        info.append(r)
        for name, a in arrays.items():
            out[f"{name}_{k}"] = a
    np.savez(out_path, info=np.asarray(json.dumps(info)), **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
