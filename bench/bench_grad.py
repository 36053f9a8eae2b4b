"""Cost of exact gradients: value-and-gradient / forward time, and memory.

For a layer of 256 LIF neurons driven over T intervals, times (interleaved, medians,
one process) a jitted forward loss and the jitted value-and-gradient of the same
loss with respect to the weight and every dynamics parameter; for a batch, the loss
is the mean over `jax.vmap` of the samples' losses, as in a training step. The loss uses spike
times, final voltages and (surrogate) counts. Memory is XLA's own accounting of the
compiled program (arguments + outputs + temporaries). float32 and float64.

    python bench/bench_grad.py          # writes the bench_grad section of RESULTS.md
    python bench/bench_grad.py --quick
"""

import argparse
import statistics
import sys
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    block,
    interleaved_timings,
    machine_line,
    write_section,
)

import snode_jax as sj  # noqa: E402

N_NEURONS, N_INPUTS, INTERVAL = 256, 32, 1.0


def inputs(n_intervals, drive, dtype, batch):
    """`(T, inputs)`, or `(batch, T, inputs)` for a batch over 1."""
    rng = np.random.default_rng(0)
    shape = (n_intervals, N_INPUTS) if batch == 1 else (batch, n_intervals, N_INPUTS)
    return (rng.standard_normal(shape) * 0.5 + drive).astype(dtype)


def lif_layer(dtype, package=None):
    """The LIF layer, built by `package` (this library, or another checkout's).
    (The default is looked up when called: `bench_grad_ab.py` replaces this
    module's `sj`.)"""
    package = sj if package is None else package
    return package.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        package.ODELIFDynamics(),
        dtype=dtype,
        key=jax.random.key(0),
    )


def probe_lif(n_intervals, drive, dtype, batch):
    """[`probe_counts`][] of the LIF layer's run on `inputs(...)` (no spike
    record; vmapped over a batch above 1)."""
    probe = lif_layer(dtype)
    run_probe = lambda x: probe.simulate(x, INTERVAL, max_spikes=0, throw=False)
    if batch > 1:
        run_probe = jax.vmap(run_probe)
    return probe_counts(run_probe(inputs(n_intervals, drive, dtype, batch)))


def make(n_intervals, drive, dtype, max_spikes, batch=1, package=None):
    """The LIF layer (built by `package`: this library, or another checkout's), its
    inputs, and the loss's forward and value-and-gradient, jitted."""
    layer = lif_layer(dtype, package)
    x = inputs(n_intervals, drive, dtype, batch)

    def one(layer, x):
        sol = layer.simulate(x, INTERVAL, max_spikes=max_spikes)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.mean(t) + jnp.mean(sol.final_state.v**2) + 1e-3 * jnp.sum(sol.counts)

    def loss(layer, x):
        if batch == 1:
            return one(layer, x)
        return jnp.mean(jax.vmap(one, in_axes=(None, 0))(layer, x))

    fwd = eqx.filter_jit(loss)
    grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    return layer, jnp.asarray(x), fwd, grad


def memory_bytes(fn, *args):
    compiled = fn.lower(*args).compile()
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def measure(fwd, grad, layer, x, reps):
    """`(forward s, value_and_grad s, value_and_grad / forward, memory fwd MiB,
    memory grad MiB, grad compile s)`, timings interleaved in this process. The
    compile is the gradient's first call (tracing, compiling and one run) with
    JAX's caches cleared first, so that nothing traced or compiled for an earlier
    program (this loss's forward, another row) is reused."""
    jax.clear_caches()
    t0 = time.perf_counter()
    block(grad(layer, x))
    grad_compile = time.perf_counter() - t0
    fns = {"forward": fwd, "value_and_grad": grad}
    args = {k: (layer, x) for k in fns}
    _, times = interleaved_timings(fns, args, reps, alternate=True)
    ratio = statistics.median(
        g / f for g, f in zip(times["value_and_grad"], times["forward"], strict=True)
    )
    mem_f = memory_bytes(jax.jit(lambda m, x: fwd(m, x)), layer, x)
    mem_g = memory_bytes(jax.jit(lambda m, x: grad(m, x)), layer, x)
    return (
        statistics.median(times["forward"]),
        statistics.median(times["value_and_grad"]),
        ratio,
        mem_f / 2**20,
        mem_g / 2**20,
        grad_compile,
    )


def probe_counts(sol):
    """Total spikes and solver steps of a run, and the spike buffer size that holds
    every neuron's spikes (at least 1)."""
    spikes = int(np.sum(np.asarray(sol.num_spikes)))
    steps = int(np.sum(np.asarray(sol.stats["num_steps"])))
    return spikes, steps, max(int(np.max(np.asarray(sol.num_spikes))), 1)


def row(dtype_name, batch, n_intervals, drive, probed, fwd, grad, layer, x, reps):
    """One table row: the configuration, the probe's counts and the measurements."""
    t_f, t_g, *rest = measure(fwd, grad, layer, x, reps)
    r = (dtype_name, batch, n_intervals, drive, *probed, t_f * 1e3, t_g * 1e3, *rest)
    print(r, flush=True)
    return r


def run(configs, reps):
    rows = []
    for dtype in (np.float32, np.float64):
        for n_intervals, drive, batch in configs:
            probed = probe_lif(n_intervals, drive, dtype, batch)
            layer, x, fwd, grad = make(n_intervals, drive, dtype, probed[2], batch)
            name = np.dtype(dtype).name
            rows.append(
                row(name, batch, n_intervals, drive, probed, fwd, grad, layer, x, reps)
            )
    return rows


def table(rows, columns=("intervals", "drive", "solver steps")):
    a, b, c = columns
    lines = [
        f"| dtype | batch | {a} | {b} | spikes | {c} | max_spikes "
        "| forward (ms) | value+grad (ms) | value+grad / forward | memory fwd (MiB) "
        "| memory grad (MiB) | grad compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} "
            f"| {r[7]:.2f} | {r[8]:.2f} | {r[9]:.2f} | {r[10]:.2f} | {r[11]:.2f} "
            f"| {r[12]:.1f} |"
        )
    return "\n".join(lines)


def make_adaptive(n_intervals, package=None):
    """The AdEx layer (Dopri5, rtol = atol = 1e-6, float64) and its inputs (the
    layer built by `package`: this library, or another checkout's)."""
    package = sj if package is None else package
    dtype = np.float64
    rng = np.random.default_rng(0)
    layer = package.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        package.AdExDynamics(),
        solver=package.Dopri5(),
        dt_init=0.01,
        dt_min=1e-6,
        max_steps=20000,
        key=jax.random.key(0),
    )
    weight = rng.uniform(0.0, 50.0, (N_NEURONS, N_INPUTS))  # ~600 pA on average
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, dtype))
    x = jnp.asarray(rng.uniform(0.5, 1.0, (n_intervals, N_INPUTS)), dtype)
    return layer, x


def adaptive_loss(interval, max_spikes):
    """`(forward, value_and_grad)` of the AdEx loss, jitted."""

    def loss(layer, x):
        sol = layer.simulate(x, interval, max_spikes=max_spikes)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        v = sol.final_state.v
        return jnp.mean(t) + jnp.mean(v**2) * 1e-3 + 1e-3 * jnp.sum(sol.counts)

    return eqx.filter_jit(loss), eqx.filter_jit(eqx.filter_value_and_grad(loss))


def run_adaptive(configs, reps):
    """AdEx on the adaptive path (Dopri5, rtol = atol = 1e-6), float64: the
    backward pass reruns every interval and pulls the gradient back one step at a
    time."""
    rows = []
    for n_intervals, interval in configs:
        layer, x = make_adaptive(n_intervals)
        probed = probe_counts(layer.simulate(x, interval, max_spikes=0, throw=False))
        fwd, grad = adaptive_loss(interval, probed[2])
        rows.append(
            row("float64", 1, n_intervals, interval, probed, fwd, grad, layer, x, reps)
        )
    return rows


def make_recurrent(n):
    """`bench_network.py`'s recurrent workload (float64): a current-based LIF layer
    of `n` neurons, 32 Poisson inputs at 40 Hz over 100 ms, recurrent weights
    N(0, 2^2 / n) with a 0.5 ms delay; the layer and its input train."""
    import bench_network as bn

    in_times, w_in, w_rec = bn.recurrent_inputs(n, 0)
    layer, times, sources = bn.snode_recurrent(in_times, w_in, w_rec)
    train = sj.SpikeTrain(times, sources)
    return layer, train, bn.RECURRENT["t_end"]


def recurrent_loss(t_end, max_spikes):
    """`(forward, value_and_grad)` of a spike-time loss of the recurrent layer."""

    def loss(layer, train):
        sol = layer.simulate(train, t_end=t_end, max_spikes=max_spikes)
        t = sol.spike_times
        time_term = jnp.sum(jnp.where(jnp.isfinite(t), jnp.exp(-t / 50.0), 0.0))
        return time_term + 1e-3 * jnp.mean(sol.final_state.v**2)

    return eqx.filter_jit(loss), eqx.filter_jit(eqx.filter_value_and_grad(loss))


def run_recurrent(sizes, reps):
    """The recurrent event engine, float64: the backward pass reruns the event
    loop's segments from the forward pass's checkpoints and pulls the gradient
    back one event at a time."""
    rows = []
    for n in sizes:
        layer, train, t_end = make_recurrent(n)
        sol = layer.simulate(train, t_end=t_end, max_spikes=1024, throw=False)
        spikes = int(np.sum(np.asarray(sol.num_spikes)))
        events = int(sol.stats["num_events"])
        max_spikes = max(int(np.max(np.asarray(sol.num_spikes))), 1)
        fwd, grad = recurrent_loss(t_end, max_spikes)
        probed = (spikes, events, max_spikes)
        rows.append(row("float64", 1, n, 0.5, probed, fwd, grad, layer, train, reps))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--adaptive", action="store_true", help="AdEx, adaptive path")
    p.add_argument(
        "--recurrent", action="store_true", help="recurrent layer, event-driven"
    )
    p.add_argument("--reps", type=int, default=9)
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call snode_jax.keep_freed_memory() first; the LIF table goes to its "
        "own section (bench_grad_kept)",
    )
    a = p.parse_args()
    if a.keep_freed_memory and (a.adaptive or a.recurrent):
        p.error("--keep-freed-memory measures the LIF table only")
    if a.keep_freed_memory and not sj.keep_freed_memory():
        raise SystemExit(
            "keep_freed_memory() returned False: not glibc, or glibc refused the "
            "setting"
        )
    if a.quick:
        print(table(run([(20, 0.0, 1), (20, 0.0, 4)], 3)))
        return
    if a.adaptive:
        rows = run_adaptive([(10, 10.0), (40, 10.0)], a.reps)
        text = "\n".join(
            [
                "## Gradients on the adaptive path: AdEx (`bench/bench_grad.py "
                "--adaptive`)",
                "",
                f"Command: `python bench/bench_grad.py --adaptive --reps {a.reps}`  ",
                f"Machine: {machine_line()}  ",
                f"Layer of {N_NEURONS} AdEx neurons (Dopri5, rtol = atol = 1e-6), "
                f"{N_INPUTS} inputs, weights U(0, 50) pA, inputs U(0.5, 1), 10 ms "
                "intervals ('drive' column: the interval in ms). Loss: mean spike "
                "time + 1e-3 mean final v^2 + 1e-3 * total (surrogate) count; "
                "gradient w.r.t. the weight and all ten AdEx parameters. The backward "
                "pass reruns each interval and pulls the gradient back through its "
                "steps one at a time. Columns as in the LIF table above.",
                "",
                table(rows),
            ]
        )
        print(text)
        write_section("bench_grad_adaptive", text)
        return
    if a.recurrent:
        rows = run_recurrent([16, 64, 256], a.reps)
        text = "\n".join(
            [
                "## Gradients of a recurrent layer, event-driven (`bench/bench_grad.py "
                "--recurrent`)",
                "",
                f"Command: `python bench/bench_grad.py --recurrent --reps {a.reps}`  ",
                f"Machine: {machine_line()}  ",
                "`bench_network.py`'s recurrent workload, float64: current-based LIF "
                "(tau_mem = 20 ms, tau_syn = 5 ms), 32 Poisson inputs at 40 Hz over "
                "100 ms, input weights N(0.25, 0.15^2), recurrent weights "
                "N(0, 2^2 / n) with a 0.5 ms delay; one sample. 'events': the "
                "event loop's iterations; `max_spikes`: the most spikes of one "
                "neuron (the buffer's size). Loss: "
                "sum of exp(-t / 50 ms) over the spike times + 1e-3 mean final v^2; "
                "gradient w.r.t. the input and recurrent weights and the dynamics "
                "parameters. The forward pass keeps a checkpoint every about "
                "sqrt(max_events) events; the backward pass reruns the segments "
                "between them, last to first, and pulls the gradient back one event "
                "at a time. Other columns as in the LIF table above.",
                "",
                table(rows, ("neurons", "delay (ms)", "events")),
            ]
        )
        print(text)
        write_section("bench_grad_recurrent", text)
        return
    configs = [(100, 0.0, 1), (100, 0.3, 1), (100, 1.0, 1), (400, 0.3, 1)]
    configs += [(1600, 0.3, 1), (100, 0.3, 64)]
    rows = run(configs, a.reps)
    kept = " --keep-freed-memory" if a.keep_freed_memory else ""
    text = "\n".join(
        [
            "## Gradients: value and gradient vs forward (`bench/bench_grad.py"
            + kept
            + "`)",
            "",
            f"Command: `python bench/bench_grad.py --reps {a.reps}{kept}`  ",
            f"Machine: {machine_line()}  ",
            f"Layer of {N_NEURONS} LIF neurons, {N_INPUTS} inputs, 1 ms intervals, "
            "inputs N(drive, 0.5^2). Loss: mean spike time + mean final v^2 + "
            "1e-3 * total (surrogate) count; gradient w.r.t. the weight and all five "
            "dynamics parameters. 'batch': samples per call; above 1 the loss is the "
            "mean over `jax.vmap` of the samples' losses (a training step). "
            "'value+grad / forward' is the median over interleaved repetitions "
            "(in alternating order) of value_and_grad / forward, where forward is "
            "the loss (its `simulate` run); 'grad compile' is the first call of "
            "value_and_grad (trace, compile, one run) with JAX's caches cleared "
            "first. Memory is XLA's "
            "accounting of the compiled program (arguments + outputs + temporaries); "
            "'spikes' and 'solver steps' are totals over neurons and samples (one "
            "step per spike plus one per interval on the exact path)."
            + (
                " Run after `snode_jax.keep_freed_memory()`: glibc keeps the memory "
                "XLA frees for the next call, instead of mapping fresh pages for "
                "every call's temporaries (the table above is without it). The two "
                "tables come from two runs at different times, and this machine's "
                "speed differs from run to run by up to 2x: compare the ratios "
                "within a table, not the times across the tables."
                if kept
                else ""
            ),
            "",
            table(rows),
        ]
    )
    print(text)
    write_section("bench_grad_kept" if kept else "bench_grad", text)


if __name__ == "__main__":
    sys.exit(main())
