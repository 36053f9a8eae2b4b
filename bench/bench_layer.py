"""Time `jit(vmap(forward))` of the exact LIF layer against fixed-step Euler in JAX.

One process, float32 and float64, interleaved repetitions, median of per-repetition
ratios. Compile time (first call) is reported separately. Exactness is checked
against the closed-form reference on the same work.

    python bench/bench_layer.py            # writes the bench_layer section of RESULTS.md
    python bench/bench_layer.py --quick    # small sizes, prints only
"""

import argparse
import statistics
import sys

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    euler_lif,
    interleaved_timings,
    lif_reference,
    machine_line,
    median_ratio,
    write_section,
)

import snode_jax as sj  # noqa: E402

INTERVAL = 1.0
MAX_SPIKES = 32


def workload(batch, n_neurons, n_intervals, n_inputs, dtype, seed=0, scale=0.5):
    """The layer and inputs, the same in both dtypes: the weights are drawn in
    float64 and rounded (drawn in float32, `jax.random.normal` gives others)."""
    dyn = sj.ODELIFDynamics(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0)
    layer = sj.SpikingODELayer(
        n_inputs, n_neurons, dyn, dtype=dtype, key=jax.random.key(seed)
    )
    drawn = sj.SpikingODELayer(
        n_inputs, n_neurons, dyn, dtype=jnp.float64, key=jax.random.key(seed)
    ).weight
    layer = eqx.tree_at(lambda m: m.weight, layer, drawn.astype(dtype))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, n_intervals, n_inputs)) * scale).astype(dtype)
    return layer, jnp.asarray(x)


def mismatches(counts, layer, x):
    ref = [
        lif_reference(np.asarray(layer.weight, np.float64), xb, INTERVAL).counts
        for xb in np.asarray(x, np.float64)
    ]
    ref = np.stack(ref)
    return int(np.sum(np.asarray(counts) != ref)), int(ref.sum())


def floor_scan(dynamics, weight, inputs, interval):
    """A floor for any exact method: the input matmul, then per interval one
    multiply-add towards the held asymptote, a compare and a reset per neuron (what
    the exact LIF costs if no neuron fires twice in an interval).

    It takes the whole batch `(B, T, n_inputs)` as one population and reads each
    interval's currents where the matmul put them (a vmapped scan would first
    transpose the currents to time-major order and fill its output with zeros:
    about a third of its time here). The counts are stacked in time order and
    transposed once to `(B, T, n)`."""
    currents = inputs @ weight.T
    dtype = inputs.dtype
    tau = jnp.asarray(dynamics.tau_mem, dtype)
    decay = jnp.exp(-interval / tau)
    drive = (1 - decay) * tau / jnp.asarray(dynamics.C_mem, dtype)
    th = jnp.asarray(dynamics.v_threshold, dtype)

    def one(v, k):
        current = jax.lax.dynamic_index_in_dim(currents, k, 1, keepdims=False)
        v = v * decay + drive * current
        spike = v >= th
        return jnp.where(spike, 0.0, v), spike.astype(dtype)

    batch, n_intervals, _ = inputs.shape
    v0 = jnp.zeros((batch, weight.shape[0]), dtype)
    counts = jax.lax.scan(one, v0, jnp.arange(n_intervals))[1]
    return jnp.moveaxis(counts, 0, 1)


def functions(layer, max_spikes=MAX_SPIKES):
    """Name -> (function, takes the layer as an argument)."""
    dyn = layer.dynamics

    def closed(f):
        return jax.jit(jax.vmap(lambda xb: f(layer, xb))), False

    def passed(f):
        return eqx.filter_jit(jax.vmap(f, in_axes=(None, 0))), True

    def exact(lay, xb):
        return lay.forward(xb, INTERVAL)

    def euler(dt):
        return lambda lay, xb: euler_lif(dyn, lay.weight, xb, INTERVAL, dt)

    def record(lay, xb):
        sol = lay.simulate(xb, INTERVAL, max_spikes=max_spikes)
        return sol.counts, sol.spike_times

    return {
        "exact, closed over": closed(exact),
        "Euler dt=0.1, closed over": closed(euler(0.1)),
        "exact": passed(exact),
        "Euler dt=0.1": passed(euler(0.1)),
        "Euler dt=0.01": passed(euler(0.01)),
        # The whole batch at once (see `floor_scan`), passed the same way.
        "floor scan": (
            eqx.filter_jit(lambda lay, x: floor_scan(dyn, lay.weight, x, INTERVAL)),
            True,
        ),
        f"simulate(max_spikes={max_spikes})": passed(record),
    }


# The ratio each row is reported against (same way of passing the layer).
BASE = {
    "exact, closed over": "Euler dt=0.1, closed over",
    "Euler dt=0.1, closed over": "Euler dt=0.1, closed over",
    "simulate": "exact",
}


def run(name, batch, n_neurons, n_intervals, n_inputs, reps, scale=0.5):
    rows = []
    for dtype in (np.float32, np.float64):
        layer, x = workload(batch, n_neurons, n_intervals, n_inputs, dtype, scale=scale)
        # The spike buffer holds every spike (`simulate` raises if it would not):
        # MAX_SPIKES, or the next power of two above the largest count.
        most = int(jnp.max(jnp.sum(functions(layer)["exact"][0](layer, x), axis=1)))
        fns = functions(layer, max(MAX_SPIKES, 1 << most.bit_length()))
        args = {k: ((layer, x) if takes else (x,)) for k, (_, takes) in fns.items()}
        compile_s, times = interleaved_timings(
            {k: f for k, (f, _) in fns.items()}, args, reps, alternate=True
        )
        rate = None
        for k, (f, _) in fns.items():
            out = f(*args[k])
            counts = out[0] if isinstance(out, tuple) else out
            wrong, total = mismatches(counts, layer, x)
            if k == "exact":
                # How often the walk needs its loop (more than three spikes of a
                # neuron in one interval), in the workload's name.
                c = np.asarray(counts)
                rate = (
                    f"{name}: {c.mean():.3f} spikes per neuron-interval, "
                    f"{np.mean(c > 3):.1e} of neuron-intervals with more than 3"
                )
            base = BASE.get(k.split("(")[0], "Euler dt=0.1")
            rows.append(
                (
                    dtype,
                    np.dtype(dtype).name,
                    k,
                    statistics.median(times[k]) * 1e3,
                    median_ratio(times, k, base),
                    base,
                    compile_s[k],
                    wrong,
                    total,
                )
            )
        # The workload's name with this dtype's spike rate.
        rows = [(rate, *row[1:]) if row[0] is dtype else row for row in rows]
    return rows


def table(rows):
    lines = [
        "| workload | dtype | method | median wall (ms) | ratio | to | compile (s) "
        "| mismatched counts / reference spikes |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for w, d, m, ms, ratio, base, comp, wrong, total in rows:
        lines.append(
            f"| {w} | {d} | {m} | {ms:.2f} | {ratio:.2f} | {base} | {comp:.2f} "
            f"| {wrong} / {total} |"
        )
    return "\n".join(lines)


def scaling(reps):
    """Exact `forward` (layer passed as an argument), float32: time per
    neuron-interval over layer sizes (batch 1) and batch sizes (256 neurons), and
    the same net of the cost of a call: a function under the same
    `eqx.filter_jit` with the same arguments that does nothing (adds two numbers).
    The floor scan, timed in turn, shows how much of the spread any scan over the
    intervals has (its per-interval cost does not shrink with the layer)."""
    rows = []
    shapes = [(1, n) for n in (16, 64, 256, 1024, 4096, 16384)]
    shapes += [(b, 256) for b in (4, 16, 64, 256)]
    for batch, n in shapes:
        layer, x = workload(batch, n, 100, 32, np.float32)
        fns = {
            "f": functions(layer)["exact"][0],
            "floor": functions(layer)["floor scan"][0],
            "call": eqx.filter_jit(lambda lay, xb: xb[0, 0, 0] + lay.weight[0, 0]),
        }
        _, times = interleaved_timings(fns, {k: (layer, x) for k in fns}, reps)
        wall, floor, call = (
            statistics.median(times[k]) for k in ("f", "floor", "call")
        )
        ns = 1e9 / (batch * n * 100)
        rows.append(
            (
                batch,
                n,
                wall * 1e3,
                call * 1e3,
                wall * ns,
                (wall - call) * ns,
                (floor - call) * ns,
            )
        )
    lines = [
        "| batch | neurons | median wall (ms) | call alone (ms) "
        "| ns per neuron-interval | net of the call (ns) | floor scan, net (ns) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b} | {n} | {ms:.3f} | {c:.3f} | {ns:.2f} | {net:.2f} | {fl:.2f} |"
        for b, n, ms, c, ns, net, fl in rows
    ]
    spread = lambda i: max(r[i] for r in rows) / min(r[i] for r in rows)
    lines += [
        "",
        f"Largest / smallest per neuron-interval, net of the call: exact "
        f"`forward` {spread(5):.1f}x, floor scan {spread(6):.1f}x.",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small sizes, no file output")
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args()
    if a.quick:
        rows = run("small (4 x 32 x 20 x 8)", 4, 32, 20, 8, 3)
        print(table(rows))
        return
    rows = run(
        "tutorial (1 x 16 neurons x 100 intervals x 32 inputs)", 1, 16, 100, 32, a.reps
    )
    rows += run(
        "large (64 x 256 neurons x 100 intervals x 32 inputs)", 64, 256, 100, 32, a.reps
    )
    # The same at four times the input: neurons often fire more than three times
    # in an interval, so the walk runs its loop (the workload above rarely does).
    rows += run(
        "large, input x 4 (64 x 256 x 100 x 32)", 64, 256, 100, 32, a.reps, scale=2.0
    )
    text = "\n".join(
        [
            "## Layer forward: exact LIF vs fixed-step Euler (`bench/bench_layer.py`)",
            "",
            f"Command: `python bench/bench_layer.py --reps {a.reps}`  ",
            f"Machine: {machine_line()}  ",
            "Each function is `jit(vmap(...))` over the batch, two ways: with the layer "
            "closed over (its weights become compile-time constants) and with the layer "
            "passed as an argument, as in a training loop (`eqx.filter_jit(jax.vmap(f, "
            "in_axes=(None, 0)))`; the Euler baseline then takes its weights as an "
            "argument too; its model parameters stay constants, while `forward` "
            "reads the layer's as arrays). Both dtypes run the same weights (drawn "
            "in float64) and inputs, rounded. The Euler baseline counts spikes in its "
            "step loop (it records no step's spike mask). Timings are interleaved "
            "repetitions in one process, in alternating order; the "
            "ratio is the median of per-repetition ratios to the row named in `to` "
            "(Euler dt = 0.1 ms passed the same way, in the same dtype; `simulate` to "
            "`forward`). The floor scan is the input matmul plus one multiply-add, "
            "compare and reset per neuron and interval, on the whole batch at once "
            "(not vmapped: it reads interval `k`'s currents at `[:, k]` of the "
            "matmul's `(B, T, n)` output, and pays no transposes into and out of a "
            "vmapped scan; read time-major after one transpose, it took the same "
            "time; `forward` computes its currents time-major, from the inputs "
            "transposed, where there are fewer inputs than neurons). Counts are compared with the "
            "float64 closed form for every (batch, interval, neuron); the floor scan "
            "and Euler are not exact. The third workload has four times the input: "
            "its neurons often fire more than three times in an interval, so the "
            "walk runs its loop (the first two rarely do), and `simulate`'s buffer "
            "holds every spike (the next power of two above the largest count).",
            "",
            table(rows),
            "",
            "Scaling of exact `forward` (layer passed as an argument, float32, 100 "
            "intervals x 32 inputs). *Call alone*: a function that adds two numbers, "
            "under the same `eqx.filter_jit` with the same arguments (flattening "
            "the layer and dispatching the call), timed in turn with `forward` and "
            "the floor scan (whose last column is also net of the call):",
            "",
            scaling(a.reps),
        ]
    )
    print(text)
    write_section("bench_layer", text)


if __name__ == "__main__":
    sys.exit(main())
