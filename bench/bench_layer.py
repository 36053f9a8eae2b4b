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


def workload(batch, n_neurons, n_intervals, n_inputs, dtype, seed=0):
    dyn = sj.ODELIFDynamics(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0)
    layer = sj.SpikingODELayer(
        n_inputs, n_neurons, dyn, dtype=dtype, key=jax.random.key(seed)
    )
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, n_intervals, n_inputs)) * 0.5).astype(dtype)
    return layer, jnp.asarray(x)


def mismatches(counts, layer, x):
    ref = [
        lif_reference(np.asarray(layer.weight, np.float64), xb, INTERVAL).counts
        for xb in np.asarray(x, np.float64)
    ]
    ref = np.stack(ref)
    return int(np.sum(np.asarray(counts) != ref)), int(ref.sum())


def run(name, batch, n_neurons, n_intervals, n_inputs, reps):
    rows = []
    for dtype in (np.float32, np.float64):
        layer, x = workload(batch, n_neurons, n_intervals, n_inputs, dtype)
        fns = {
            "snode_jax exact": jax.jit(
                jax.vmap(lambda xb: layer.forward(xb, INTERVAL))
            ),
            "Euler dt=0.1 ms": jax.jit(
                jax.vmap(
                    lambda xb: euler_lif(
                        layer.dynamics, layer.weight, xb, INTERVAL, 0.1
                    )
                )
            ),
            "Euler dt=0.01 ms": jax.jit(
                jax.vmap(
                    lambda xb: euler_lif(
                        layer.dynamics, layer.weight, xb, INTERVAL, 0.01
                    )
                )
            ),
        }
        args = {k: (x,) for k in fns}
        compile_s, times = interleaved_timings(fns, args, reps)
        for k, f in fns.items():
            wrong, total = mismatches(f(x), layer, x)
            rows.append(
                (
                    name,
                    np.dtype(dtype).name,
                    k,
                    statistics.median(times[k]) * 1e3,
                    median_ratio(times, k, "Euler dt=0.1 ms"),
                    compile_s[k],
                    wrong,
                    total,
                )
            )
    return rows


def table(rows):
    lines = [
        "| workload | dtype | method | median wall (ms) | ratio to Euler 0.1 ms "
        "| compile (s) | mismatched counts / reference spikes |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for w, d, m, ms, ratio, comp, wrong, total in rows:
        lines.append(
            f"| {w} | {d} | {m} | {ms:.2f} | {ratio:.2f} | {comp:.2f} "
            f"| {wrong} / {total} |"
        )
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
    text = "\n".join(
        [
            "## Layer forward: exact LIF vs fixed-step Euler (`bench/bench_layer.py`)",
            "",
            f"Command: `python bench/bench_layer.py --reps {a.reps}`  ",
            f"Machine: {machine_line()}  ",
            "Each function is `jax.jit(jax.vmap(forward))` over the batch; timings are "
            "interleaved repetitions in one process; the ratio is the median of "
            "per-repetition ratios to Euler dt = 0.1 ms in the same dtype. Counts are "
            "compared with the float64 closed form for every (batch, interval, neuron).",
            "",
            table(rows),
        ]
    )
    print(text)
    write_section("bench_layer", text)


if __name__ == "__main__":
    sys.exit(main())
