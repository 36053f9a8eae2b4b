"""The two event-driven engines side by side on the Yin-Yang training step.

A layer without recurrence runs on `simulate_feedforward` (each neuron keeps its own
clock between input events); the global-order engine `simulate_events` (one
iteration per spike of any neuron) can run it too. This times both on what
`examples/yin_yang.py` computes per training step, the batch loss and its gradient
with respect to every weight of a 5-H-3 CubaLIF network, and its forward pass. Both
engines run with output neurons that fire on (buffers of 8 hidden and 64 output
spikes, as the example had them); a third row is the example as it is now, on the
per-neuron engine with single-spike output neurons (`max_spikes=(8, 1)`,
`after_max_spikes=("fail", "silence")`, which only the per-neuron engine has): the
same first spike times, so the same loss and gradient.

    python bench/bench_engines.py                 # batch 32, 100 hidden, float32
    python bench/bench_engines.py --quick         # fewer repetitions; prints only

Each engine runs in its own process (compiled functions are cached per process),
the processes alternate, and each reports the median of its timed repetitions
after a first call; the gradients of the two engines are compared (they agree to
rounding: the two engines compose the flows over different pieces).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(engine: str, hidden: int, batch: int, reps: int, out: str) -> None:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import yin_yang as yy

    import snode_jax._integrate as integrate_module
    from snode_jax._event_run import default_max_events
    from snode_jax._events import simulate_events
    from snode_jax.datasets import yin_yang

    if engine == "per-neuron, single-spike output":
        assert yy.MAX_SPIKES == (8, 1) and yy.AFTER_MAX_SPIKES == ("fail", "silence")
    else:
        yy.MAX_SPIKES, yy.AFTER_MAX_SPIKES = (8, 64), ("fail", "fail")
    if engine == "global":

        def global_order(dynamics, weight, schedule, state, silence, **kwargs):
            # The global-order engine's own budget (one iteration per spike of any
            # neuron), not the per-neuron one that `integrate_events` computed.
            assert not silence
            kwargs["max_events"] = default_max_events(
                schedule.input_times.shape[0],
                schedule.boundaries.shape[0],
                weight.shape[0],
                kwargs["max_spikes"],
            )
            return simulate_events(
                dynamics, weight, None, 0.0, schedule, state, **kwargs
            )

        integrate_module.simulate_feedforward = global_order  # pyright: ignore

    net = yy.make_network(jax.random.key(0), hidden)
    x, y = yin_yang(batch, seed=1)
    trains, labels = yy.encode(x), jnp.asarray(y)
    _, (_, failed, _, _) = eqx.filter_jit(yy.batch_loss)(net, trains, labels)
    assert int(failed) == 0, f"{engine}: {int(failed)} samples failed"
    loss = lambda n, tr, lb: yy.batch_loss(n, tr, lb)[0]
    grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    forward = eqx.filter_jit(loss)
    t0 = time.perf_counter()
    value, g = grad(net, trains, labels)
    jax.block_until_ready(g)
    compile_grad = time.perf_counter() - t0
    jax.block_until_ready(forward(net, trains, labels))
    tg, tf = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(net, trains, labels))
        tg.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(forward(net, trains, labels))
        tf.append(time.perf_counter() - t0)
    flat = np.concatenate(
        [np.ravel(a) for a in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array))]
    )
    np.save(out + ".npy", flat)
    with open(out + ".json", "w") as f:
        json.dump(
            dict(
                grad_ms=1e3 * statistics.median(tg),
                forward_ms=1e3 * statistics.median(tf),
                compile_grad_s=compile_grad,
                loss=float(value),
            ),
            f,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.hidden, args.batch, args.reps, args.worker[1])
        return
    import numpy as np
    from common import machine_line, write_section

    reps, rounds = (3, 1) if args.quick else (args.reps, args.rounds)
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    results: dict[str, list[dict]] = {
        "per-neuron": [],
        "global": [],
        "per-neuron, single-spike output": [],
    }
    grads = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for engine in results:
                out = os.path.join(tmp, engine)
                cmd = [sys.executable, __file__, "--worker", engine, out]
                cmd += ["--hidden", str(args.hidden), "--batch", str(args.batch)]
                cmd += ["--reps", str(reps)]
                subprocess.run(cmd, check=True)
                with open(out + ".json") as f:
                    results[engine].append(json.load(f))
                grads[engine] = np.load(out + ".npy")
    a, b = grads["global"], grads["per-neuron"]
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    c = grads["per-neuron, single-spike output"]
    rel_single = float(np.max(np.abs(c - b)) / np.max(np.abs(b)))
    rows = []
    for engine, runs in results.items():
        g = min(r["grad_ms"] for r in runs)
        f = min(r["forward_ms"] for r in runs)
        c = min(r["compile_grad_s"] for r in runs)
        rows.append((engine, g, f, c, runs[0]["loss"]))
    speed_g = rows[1][1] / rows[0][1]
    speed_f = rows[1][2] / rows[0][2]
    single_g = rows[0][1] / rows[2][1]
    single_f = rows[0][2] / rows[2][2]
    took = time.perf_counter() - start
    text = [
        "## Event engines: `bench/bench_engines.py`",
        "",
        f"Command: `python bench/bench_engines.py --hidden {args.hidden} --batch "
        f"{args.batch}` (took {took / 60:.1f} min)  ",
        f"Machine: {machine_line()}; 1-minute load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end",
        "",
        f"`examples/yin_yang.py`'s batch loss (5-{args.hidden}-3 CubaLIF, batch "
        f"{args.batch}, float32) and its gradient with respect to every weight, on "
        "the per-neuron-clock engine (`simulate_feedforward`, what a layer without "
        "recurrence runs on) and on the global-order engine (`simulate_events`), "
        "output neurons firing on (buffers of 8 and 64 spikes); and the example's "
        "setting, single-spike output neurons (`max_spikes=(8, 1)`, "
        "`after_max_spikes=('fail', 'silence')`) on the per-neuron engine. Each "
        f"engine in its own process, {rounds} alternating round(s) of {reps} timed "
        "repetitions after a first call; the table gives the best round's median.",
        "",
        "| engine | gradient (ms) | forward (ms) | gradient compile (s) | loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for engine, g, f, c, loss_value in rows:
        text.append(f"| {engine} | {g:.1f} | {f:.1f} | {c:.1f} | {loss_value:.7g} |")
    text += [
        "",
        f"Global-order / per-neuron: {speed_g:.1f}x for the gradient, {speed_f:.1f}x "
        f"for the forward pass. Largest gradient difference between the engines, "
        f"relative to the largest gradient entry: {rel:.1e} (float32 rounding).",
        f"Single-spike output neurons against output neurons that fire on, both on "
        f"the per-neuron engine: {single_g:.1f}x cheaper gradient, {single_f:.1f}x "
        f"cheaper forward pass; largest gradient difference {rel_single:.1e} "
        "(relative, as above).",
    ]
    print("\n".join(text))
    if not args.quick:
        write_section("bench_engines", "\n".join(text))


if __name__ == "__main__":
    main()
