"""The adaptive path's gradient (AdEx) against another checkout of the library, in
one process.

`bench_grad.py --adaptive`'s workload: a layer of 256 AdEx neurons on Dopri5
(rtol = atol = 1e-6, float64), 32 inputs, 10 ms intervals, the loss of spike times,
final voltages and (surrogate) counts, `max_spikes` the largest count of the run.
Both versions are compiled in this process (the first call of each, compile
included, is timed: this checkout's first) and their value-and-gradient called in
turn, the order swapped every repetition. The other checkout's package is copied
to a temporary directory as `snode_jax_base` (see `bench_walk_ab.py`). Their values
and gradients must agree to 1e-9 relative (two programs compiled apart may round
differently; a different gradient is off at order one).

    git worktree add /tmp/base <commit>
    python bench/bench_adaptive_grad_ab.py --package /tmp/base/snode_jax

Prints, per number of intervals, the first call of each version, the minimum time
of each, and the median over repetitions of the ratio this / base.
"""

import argparse
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import bench_grad as bg  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import base_package, interleaved_timings, largest_difference  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snode_jax as sj  # noqa: E402

INTERVAL = 10.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--package", required=True, help="the other checkout's snode_jax folder"
    )
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--intervals", type=int, nargs="+", default=[10, 40])
    a = p.parse_args()
    with base_package(a.package) as base:
        print(f"this: {sj.__file__}\nbase: {a.package}")
        layers = {
            k: bg.make_adaptive(1, package)[0]
            for k, package in (("this", sj), ("base", base))
        }
        for n_intervals in a.intervals:
            rng = np.random.default_rng(0)
            x = jnp.asarray(rng.uniform(0.5, 1.0, (n_intervals, bg.N_INPUTS)))
            probe = layers["this"].simulate(x, INTERVAL, max_spikes=0, throw=False)
            max_spikes = int(np.max(np.asarray(probe.num_spikes)))
            fs = {k: bg.adaptive_loss(INTERVAL, max_spikes)[1] for k in layers}
            args = {k: (layers[k], x) for k in layers}
            # (The first call of each, compile included, this checkout's first.)
            first, times = interleaved_timings(fs, args, a.reps, alternate=True)
            outs = {k: eqx.filter(f(*args[k]), eqx.is_array) for k, f in fs.items()}
            diff = largest_difference(outs["this"], outs["base"])
            if not diff <= 1e-9:
                raise SystemExit(f"the versions differ: {diff:.1e} relative")
            this, other = np.asarray(times["this"]), np.asarray(times["base"])
            same = "to the bit" if diff == 0 else f"to {diff:.1e} relative"
            print(
                f"{n_intervals} intervals (max_spikes={max_spikes}): first call "
                f"this {first['this']:.2f} s, base {first['base']:.2f} s; "
                f"value+grad this {this.min() * 1e3:.1f} ms, base "
                f"{other.min() * 1e3:.1f} ms, median ratio "
                f"{np.median(this / other):.3f} (agree {same})"
            )


if __name__ == "__main__":
    main()
