"""Float32 spike times of an event-driven network against float64.

A 12-8-4 CubaLIF network (random per-neuron parameters, one neuron per layer with
tau_mem == tau_syn) on 60 input spikes from 6 sources over 80 ms, run to 100 ms in
float32 and in float64 on the same values (parameters, weights and input times
rounded to float32 first): per draw, the spikes, count mismatches and the largest
difference of matched spike times. The float64 run stands for the exact times (its
own error is about 1e-12 ms, tested against closed forms). With `--package`,
another checkout's float32 run is measured against the same float64 run.

    python bench/bench_event_precision.py [--package /tmp/base/snode_jax]
"""

import argparse
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import snode_jax as sj  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import base_package, machine_line, write_section  # noqa: E402

SIZES, N_INPUTS, N_EVENTS, T_END = (12, 8, 4), 6, 60, 100.0


def draw(seed):
    """Input times and sources; per layer, parameters and weights (float32 values)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    times = f32(rng.uniform(0, 80, N_EVENTS))
    sources = rng.integers(0, N_INPUTS, N_EVENTS)
    layers, prev = [], N_INPUTS
    for k, n in enumerate(SIZES):
        p = dict(
            tau_mem=rng.uniform(8, 30, n),
            tau_syn=rng.uniform(2, 10, n),
            v_rest=rng.uniform(-0.2, 0.2, n),
            v_threshold=rng.uniform(0.8, 1.2, n),
            v_reset=rng.uniform(-0.5, 0.1, n),
            C_mem=rng.uniform(0.7, 1.5, n),
        )
        p["tau_syn"][0] = p["tau_mem"][0]
        weight = rng.normal(0.03, 0.05, (n, prev)) * (1.0 if k == 0 else 1.5)
        layers.append(({key: f32(v) for key, v in p.items()}, f32(weight)))
        prev = n
    return times, sources, layers


def run(package, dtype, times, sources, layers):
    """Per layer, the spike times (float64, `inf`-padded) and the result."""
    built, key = [], jax.random.key(0)
    for k, (p, weight) in enumerate(layers):
        dyn = package.CubaLIFDynamics(
            **{n: jnp.asarray(v, dtype) for n, v in p.items()}
        )
        layer = package.SpikingODELayer(
            weight.shape[1], weight.shape[0], dyn, dtype=dtype,
            key=jax.random.fold_in(key, k),
        )  # fmt: skip
        built.append(eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, dtype)))
    train = package.SpikeTrain(jnp.asarray(times, dtype), jnp.asarray(sources))
    sol = package.SpikingODENetwork(built).simulate(train, t_end=T_END, max_spikes=256)
    return [np.asarray(s.spike_times, np.float64) for s in sol.layers]


def compare(got, ref):
    """(spikes in `ref`, neurons whose counts differ, largest |dt| where they agree)."""
    spikes = mismatched = 0
    worst = 0.0
    for g, r in zip(got, ref):
        for gi, ri in zip(g, r):
            gi, ri = gi[np.isfinite(gi)], ri[np.isfinite(ri)]
            spikes += len(ri)
            if len(gi) != len(ri):
                mismatched += 1
            elif len(ri):
                worst = max(worst, float(np.max(np.abs(gi - ri))))
    return spikes, mismatched, worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", help="another checkout's snode_jax folder")
    parser.add_argument("--base-name", default="base", help="what the base is")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args()
    rows = []
    with base_package(a.package) if a.package else _none() as base:
        for seed in range(a.seeds):
            data = draw(seed)
            ref = run(sj, jnp.float64, *data)
            spikes, bad, worst = compare(run(sj, jnp.float32, *data), ref)
            row = f"| {seed} | {spikes} | {bad} | {worst:.2e} |"
            if base is not None:
                _, bad_b, worst_b = compare(run(base, jnp.float32, *data), ref)
                row += f" {bad_b} | {worst_b:.2e} |"
            rows.append(row)
            print(row, flush=True)
    head = "| draw | spikes (float64) | count mismatches | max abs dt (ms) |"
    rule = "|---:|---:|---:|---:|"
    if a.package:
        head += f" {a.base_name}: count mismatches | {a.base_name}: max abs dt (ms) |"
        rule += "---:|---:|"
    command = "python bench/bench_event_precision.py" + (
        f" --package <{a.base_name} checkout>/snode_jax --base-name '{a.base_name}'"
        if a.package
        else ""
    )
    text = "\n".join(
        [
            "## Float32 spike times of an event-driven network "
            "(`bench/bench_event_precision.py`)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine_line()}  ",
            __doc__.split("\n\n")[1].replace("\n", " "),
            "",
            head,
            rule,
            *rows,
        ]
    )
    print(text)
    if not a.no_write:
        write_section("bench_event_precision", text)


class _none:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
