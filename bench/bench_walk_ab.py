"""The exact LIF layer's `forward` and `simulate` against another checkout of the
library, in one process.

A/B runs in alternating processes see this machine's load move by 20-50 % between
them; here both versions are compiled in one process and called in turn, so each
repetition's ratio compares calls made a few milliseconds apart. The other
checkout's package is copied to a temporary directory under the name
`snode_jax_base` (the package imports itself relatively) and imported next to this
one. Both must return the same counts and spike times, to the bit.

    git worktree add /tmp/base <commit>
    python bench/bench_walk_ab.py --package /tmp/base/snode_jax

Workload: `bench_layer.py`'s large one, 64 x 256 neurons x 100 intervals x 32
inputs, `jax.vmap` over the batch, the layer passed as an argument;
`simulate(max_spikes=32)`. `--batch`, `--neurons`, `--inputs`, `--intervals` and
`--max-spikes` change the sizes, `--drive` the inputs' mean (0; N(drive, 0.5^2));
`--weight-per-sample` gives each sample its own weight (vmapped with the inputs).
Prints, per dtype and function, the minimum time of each version and the median
over repetitions of the ratio this / base.
"""

import argparse
import os
import sys
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import base_package  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snode_jax as sj  # noqa: E402


def functions(weight_per_sample=False, max_spikes=32):
    """`forward` and `simulate`, vmapped over the inputs: called as `f(layer, x)`,
    or with `weight_per_sample` as `f(layer, weights, x)` (each sample's weight
    in place of the layer's)."""

    def forward(layer, x):
        return layer.forward(x, 1.0)

    def simulate(layer, x):
        return layer.simulate(x, 1.0, max_spikes=max_spikes).spike_times

    def own_weight(f):
        return lambda layer, w, x: f(eqx.tree_at(lambda m: m.weight, layer, w), x)

    axes = (None, 0, 0) if weight_per_sample else (None, 0)
    return {
        name: eqx.filter_jit(jax.vmap(own_weight(f) if weight_per_sample else f, axes))
        for name, f in (("forward", forward), ("simulate", simulate))
    }


def layer_of(package, dtype, n_inputs, n_neurons):
    dyn = package.ODELIFDynamics(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0)
    return package.SpikingODELayer(
        n_inputs, n_neurons, dyn, dtype=dtype, key=jax.random.key(0)
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--package", required=True, help="the other checkout's snode_jax folder"
    )
    p.add_argument("--reps", type=int, default=41)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--neurons", type=int, default=256)
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument(
        "--weight-per-sample",
        action="store_true",
        help="each sample its own weight (the layer's, scaled by 1 + 1e-3 i)",
    )
    p.add_argument("--intervals", type=int, default=100)
    p.add_argument("--max-spikes", type=int, default=32, help="of `simulate`")
    p.add_argument("--drive", type=float, default=0.0, help="mean of the inputs")
    a = p.parse_args()
    fns = functions(a.weight_per_sample, a.max_spikes)
    with base_package(a.package) as base:
        print(f"this: {sj.__file__}\nbase: {a.package}")
        for dtype in (jnp.float32, jnp.float64):
            rng = np.random.default_rng(0)
            # (The layer's weights are N(0, 2 / inputs): the currents' spread does
            # not depend on the number of inputs.)
            x = rng.standard_normal((a.batch, a.intervals, a.inputs)) * 0.5 + a.drive
            x = jnp.asarray(x.astype(dtype))
            layers = {
                "this": layer_of(sj, dtype, a.inputs, a.neurons),
                "base": layer_of(base, dtype, a.inputs, a.neurons),
            }
            args = {version: (layer, x) for version, layer in layers.items()}
            if a.weight_per_sample:
                scale = 1 + 1e-3 * jnp.arange(a.batch, dtype=dtype)[:, None, None]
                args = {
                    version: (layer, layer.weight * scale, x)
                    for version, layer in layers.items()
                }
            fs = {(name, version): f for version in layers for name, f in fns.items()}
            outs = {k: jax.block_until_ready(f(*args[k[1]])) for k, f in fs.items()}
            for name in fns:
                this, other = outs[name, "this"], outs[name, "base"]
                if not np.array_equal(np.asarray(this), np.asarray(other)):
                    raise SystemExit(f"{name} differs between the versions")
            times = {k: [] for k in fs}
            for _ in range(a.reps):
                for k, f in fs.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(*args[k[1]]))
                    times[k].append(time.perf_counter() - t0)
            for name in fns:
                this = np.asarray(times[name, "this"])
                other = np.asarray(times[name, "base"])
                print(
                    f"{jnp.dtype(dtype).name} {name}: this {this.min() * 1e3:.2f} ms, "
                    f"base {other.min() * 1e3:.2f} ms, median ratio "
                    f"{np.median(this / other):.3f} (same results)"
                )


if __name__ == "__main__":
    main()
