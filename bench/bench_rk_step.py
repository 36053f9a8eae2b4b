"""Cost of one Runge-Kutta step per neuron: this library's population-wide pairs
against diffrax's solvers vmapped over neurons (what `solver=diffrax.Tsit5()` runs).

Each function is a jitted `lax.fori_loop` of `--steps` steps (the error estimate and
one dense-output value folded into the carry, so neither is dead code), timed
interleaved in one process; the ratio is the median of per-repetition ratios.

Usage: `python bench/bench_rk_step.py --reps 15`
"""

import argparse
import statistics

import diffrax
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import interleaved_timings, machine_line, write_section  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax._solver import make_stepper  # noqa: E402

MODELS = {
    "AdEx": (sj.AdExDynamics(), 800.0, 0.05),
    "Izhikevich": (sj.IzhikevichDynamics(), 10.0, 0.05),
}
PAIRS = [
    ("Tsit5", sj.Tsit5(), diffrax.Tsit5()),
    ("Dopri5", sj.Dopri5(), diffrax.Dopri5()),
    ("Bosh3", sj.Bosh3(), diffrax.Bosh3()),
]


def stepping(solver, dyn, n, dtype, steps, h):
    stepper = make_stepper(solver)
    dyn = dyn.astype(dtype)
    y0 = dyn.init_state(n, dtype)
    rng = np.random.default_rng(0)

    @jax.jit
    def run(current):
        def body(_, carry):
            t, y, acc = carry
            t1 = t + h
            y1, err, dense = stepper.step(dyn, t, t1, y, current)
            mid = stepper.evaluate(dyn, dense, t + 0.5 * h)
            extra = jax.tree.leaves(err)[0] + jax.tree.leaves(mid)[0] * 1e-30
            # Stay in the slow regime: a reset keeps the run finite and comparable.
            y1 = jax.tree.map(lambda a, b: jnp.where(a > -40.0, b, a), y1, y0)
            return t1, y1, acc + extra

        t0 = jnp.zeros((n,), dtype)
        return jax.lax.fori_loop(0, steps, body, (t0, y0, jnp.zeros((n,), dtype)))

    base = jnp.asarray(rng.uniform(0.5, 1.0, n), dtype)
    return run, base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 16384])
    args = parser.parse_args()
    rows = []
    for model, (dyn, drive, h) in MODELS.items():
        for dtype in (jnp.float32, jnp.float64):
            for n in args.sizes:
                fns, fargs = {}, {}
                for name, own, theirs in PAIRS:
                    for label, solver in (("own", own), ("diffrax", theirs)):
                        fn, base = stepping(solver, dyn, n, dtype, args.steps, h)
                        fns[(name, label)] = fn
                        fargs[(name, label)] = (base * drive,)
                _, times = interleaved_timings(fns, fargs, args.reps)
                for name, _, _ in PAIRS:
                    own_t, dfx_t = times[(name, "own")], times[(name, "diffrax")]
                    ratio = statistics.median(d / o for d, o in zip(dfx_t, own_t))
                    rows.append(
                        f"| {model} | {jnp.dtype(dtype).name} | {n} | {name} | "
                        f"{min(own_t) / args.steps * 1e6:.1f} | "
                        f"{min(dfx_t) / args.steps * 1e6:.1f} | {ratio:.2f} |"
                    )
                    print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## One Runge-Kutta step per neuron: own pairs vs vmapped diffrax "
            "(`bench/bench_rk_step.py`)",
            "",
            f"Command: `python bench/bench_rk_step.py --reps {args.reps}`  ",
            f"Machine: {machine_line()}  ",
            "A jitted loop of "
            f"{args.steps} steps of the given size per neuron (step + one dense "
            "evaluation); minimum time per step over interleaved repetitions, and "
            "the median ratio. diffrax's solvers run their stages in a checkpointed "
            "loop over a stage buffer; the own pairs are unrolled. This is why "
            "`sj.Dopri5()`/`Tsit5()`/`Bosh3()` stay the defaults and diffrax's "
            "solvers are an option.",
            "",
            "| model | dtype | neurons | pair | own (us/step) | diffrax (us/step) "
            "| diffrax / own |",
            "|---|---|---:|---|---:|---:|---:|",
            *rows,
        ]
    )
    write_section("bench_rk_step", text)


if __name__ == "__main__":
    main()
