"""Run and compile time with and without `snode_jax.single_kernel_loops()`.

The setting changes XLA's flags, which are read once, when JAX starts its backend:
each setting runs in a child process of this script (`--child off|on`), and this
process writes the table. The children alternate between the settings, `--rounds`
times each. In each child:

- `bench_layer.py`'s functions, the layer passed as an argument: exact `forward`,
  JAX Euler at dt = 0.1 ms and `simulate(max_spikes=32)`, at 1 x 16 and 64 x 256
  neurons x 100 intervals x 32 inputs, float32 and float64 (interleaved calls,
  median of `--reps`);
- `bench_grad.py`'s gradient programs (exact LIF: 256 neurons, 100 intervals,
  float32; AdEx on Dopri5: 256 neurons, 10 intervals of 10 ms, float64): trace and
  lower, compile, and the median of `--reps` calls.

Each child also prints what its runs computed (spike counts and sums of spike
times, the losses), so that the two settings' results can be compared.

    python bench/bench_loop_kernels.py      # writes the bench_loop_kernels section
"""

import argparse
import json
import os
import statistics
import sys


def child(setting: str, reps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import snode_jax as sj

    if setting == "on" and not sj.single_kernel_loops():
        raise RuntimeError("single_kernel_loops() did not take effect")

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_grad
    import bench_layer
    from common import compile_then_run, interleaved_timings

    out, fingerprint = {}, {}
    for dtype in (np.float32, np.float64):
        for batch, n in ((1, 16), (64, 256)):
            layer, x = bench_layer.workload(batch, n, 100, 32, dtype)
            fns = bench_layer.functions(layer)
            names = ["exact", "Euler dt=0.1", "simulate(max_spikes=32)"]
            _, times = interleaved_timings(
                {k: fns[k][0] for k in names}, {k: (layer, x) for k in names}, reps
            )
            size = f"{batch} x {n}, {np.dtype(dtype).name}"
            for k in names:
                out[f"{k}, {size}"] = statistics.median(times[k])
            counts, spike_times = fns["simulate(max_spikes=32)"][0](layer, x)
            finite = np.isfinite(np.asarray(spike_times))
            fingerprint[size] = [
                int(np.sum(np.asarray(counts))),
                float(np.sum(np.asarray(spike_times)[finite])),
            ]

    def gradient(name, grad, layer, x):
        lower, compile_s, run, value = compile_then_run(
            lambda m, x: grad(m, x), (layer, x), reps
        )
        out[f"{name}: trace + lower"] = lower
        out[f"{name}: compile"] = compile_s
        out[f"{name}: value and gradient"] = run
        fingerprint[name] = [
            float(value[0]),
            float(np.sum(np.asarray(value[1].weight))),
        ]

    layer, x, _, grad = bench_grad.make(100, 0.3, np.float32, 116)
    gradient("exact LIF gradient, float32", grad, layer, x)
    layer, x = bench_grad.make_adaptive(10)
    _, grad = bench_grad.adaptive_loss(10.0, 8)
    gradient("AdEx gradient (Dopri5), float64", grad, layer, x)
    return {"times": out, "fingerprint": fingerprint}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=("off", "on"))
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.reps)))
        return
    from common import alternate_children, machine_line, write_section

    runs = {s: (["--child", s, "--reps", str(a.reps)], None) for s in ("off", "on")}
    results = alternate_children(__file__, runs, a.rounds)
    rows = [
        "| workload | without (ms) | with (ms) | with / without |",
        "|---|---:|---:|---:|",
    ]
    for w in results["off"][0]["times"]:
        off = [r["times"][w] for r in results["off"]]
        on = [r["times"][w] for r in results["on"]]
        ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
        rows.append(
            f"| {w} | {statistics.median(off) * 1e3:.2f} | "
            f"{statistics.median(on) * 1e3:.2f} | {ratio:.2f} |"
        )
    prints = [r["fingerprint"] for s in results for r in results[s]]
    worst = max(
        abs(a - b) / max(abs(a), 1e-300) if isinstance(a, float) else float(a != b)
        for f in prints
        for k in f
        for a, b in zip(prints[0][k], f[k], strict=True)
    )
    agree = (
        "Every process computed the same spike counts, sums of spike times, losses "
        "and sums of weight gradients, to the bit."
        if worst == 0
        else "Every process computed the same spike counts, and the same sums of "
        f"spike times, losses and sums of weight gradients to {worst:.0e} relative."
        if worst < 1e-12
        else "The processes' results differ (spike counts, sums of spike times, "
        "losses and sums of weight gradients, per process): " + json.dumps(prints)
    )
    text = "\n".join(
        [
            "## Loops compiled into one kernel: `single_kernel_loops()` "
            "(`bench/bench_loop_kernels.py`)",
            "",
            f"Command: `python bench/bench_loop_kernels.py --reps {a.reps} "
            f"--rounds {a.rounds}`  ",
            f"Machine: {machine_line()}  ",
            "Each setting in its own process (XLA reads its flags when the backend "
            "starts), alternating, "
            f"{a.rounds} processes each; 'with' calls `snode_jax.single_kernel_loops()` "
            "first. Layer workloads: `bench_layer.py`'s functions with the layer "
            "passed as an argument (B x n neurons x 100 intervals x 32 inputs), "
            f"medians of {a.reps} interleaved calls; gradients: `bench_grad.py`'s "
            "programs (exact LIF: 256 neurons, 100 intervals of 1 ms, float32; AdEx "
            "on Dopri5: 256 neurons, 10 intervals of 10 ms, float64), trace and "
            f"compile once, then the median of {a.reps} calls. Columns: medians over "
            "the processes; 'with / without' is the median of the per-round ratios. "
            + agree,
            "",
            *rows,
        ]
    )
    print(text)
    write_section("bench_loop_kernels", text)


if __name__ == "__main__":
    sys.exit(main())
