"""Compile time against run time under XLA's two CPU fusion emitters.

XLA's flags are read once, when JAX starts its backend: each setting runs in a
child process of this script (`--child`), and this process writes the table. For
each workload, the gradient program of `bench/bench_grad.py` (the exact LIF
path: 256 neurons, 100 intervals of 1 ms, float32; the adaptive path: AdEx on
Dopri5, 256 neurons, 10 intervals of 10 ms, float64) is traced and lowered once,
compiled, and run `--reps` times (median). The child processes alternate between
the settings, `--rounds` times each.

    python bench/bench_compile.py          # writes the bench_compile section
"""

import argparse
import json
import os
import statistics
import sys

FLAG = "--xla_cpu_use_fusion_emitters=false"
SETTINGS = {"default (fusion emitters)": "", "older emitters": FLAG}


def child(reps: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_grad
    from common import compile_then_run

    def measure(grad, layer, x):
        lower, compile_s, run, _ = compile_then_run(
            lambda m, x: grad(m, x), (layer, x), reps
        )
        return dict(lower=lower, compile=compile_s, run=run)

    out = {}
    layer, x, _, grad = bench_grad.make(100, 0.3, jnp.float32, 116)
    out["exact LIF, float32"] = measure(grad, layer, x)

    layer, x = bench_grad.make_adaptive(10)
    _, grad = bench_grad.adaptive_loss(10.0, 8)
    out["adaptive AdEx (Dopri5), float64"] = measure(grad, layer, x)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.reps)))
        return
    from common import alternate_children, machine_line, write_section

    def env(flags):
        return {
            **os.environ,
            "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), flags]).strip(),
        }

    args = ["--child", "--reps", str(a.reps)]
    runs = {name: (args, env(flags)) for name, flags in SETTINGS.items()}
    results = alternate_children(__file__, runs, a.rounds)
    workloads = list(results[next(iter(SETTINGS))][0])
    lines = [
        "## Compile time: XLA's CPU fusion emitters (`bench/bench_compile.py`)",
        "",
        f"Command: `python bench/bench_compile.py --reps {a.reps} --rounds "
        f"{a.rounds}`  ",
        f"Machine: {machine_line()}  ",
        "The gradient programs of `bench/bench_grad.py` (exact LIF: 256 neurons, 100 "
        "intervals of 1 ms, drive 0.3, float32; adaptive: AdEx on Dopri5, 256 "
        "neurons, 10 intervals of 10 ms, float64), compiled with XLA's default CPU "
        f"fusion emitters and with `XLA_FLAGS={FLAG}` (each in its own process, "
        "alternating). Medians over the rounds; 'run' is the median of "
        f"{a.reps} calls of the compiled gradient.",
        "",
        "| workload | emitters | trace + lower (s) | compile (s) | run (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for w in workloads:
        for name in SETTINGS:
            rs = [r[w] for r in results[name]]
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            lines.append(
                f"| {w} | {name} | {med['lower']:.1f} | {med['compile']:.1f} | "
                f"{med['run'] * 1e3:.1f} |"
            )
    text = "\n".join(lines)
    print(text)
    write_section("bench_compile", text)


if __name__ == "__main__":
    sys.exit(main())
