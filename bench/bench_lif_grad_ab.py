"""The exact path's gradient (LIF) against another checkout of the library, in one
process.

`bench_grad.py`'s workload and loss (256 LIF neurons, 32 inputs, 1 ms intervals,
drive 0.3; mean spike time + mean final v^2 + 1e-3 * total count), at the
configurations given as `intervals,batch,dtype` (`max_spikes` the largest count of
the run). Both versions are compiled in this process and their forward and
value-and-gradient called in turn, the order swapped every repetition. The other
checkout's package is copied to a temporary directory as `snode_jax_base` (see
`bench_walk_ab.py`). Their values and gradients must agree to `1000 eps`
relative (two programs compiled apart may round differently; a different gradient
is off at order one).

    git worktree add /tmp/base <commit>
    python bench/bench_lif_grad_ab.py --package /tmp/base/snode_jax

Prints, per configuration, the median forward and value+grad times of each
version, the medians over repetitions of the ratios this / base, and value+grad /
forward of each.
"""

import argparse
import os
import statistics
import sys

import jax

jax.config.update("jax_enable_x64", True)

import bench_grad as bg  # noqa: E402
import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402
from common import base_package, interleaved_timings, largest_difference, median_ratio  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snode_jax as sj  # noqa: E402

DTYPES = {"float32": np.float32, "float64": np.float64}


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--package", required=True, help="the other checkout's snode_jax folder"
    )
    p.add_argument("--reps", type=int, default=9)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["1600,1,float64", "100,64,float64", "100,64,float32"],
        help="intervals,batch,dtype",
    )
    a = p.parse_args()
    with base_package(a.package) as base:
        print(f"this: {sj.__file__}\nbase: {a.package}")
        for config in a.configs:
            n_intervals, batch, dtype_name = config.split(",")
            n_intervals, batch = int(n_intervals), int(batch)
            dtype = DTYPES[dtype_name]
            max_spikes = bg.probe_lif(n_intervals, 0.3, dtype, batch)[2]
            fns, args = {}, {}
            for k, package in (("this", sj), ("base", base)):
                layer, x, fwd, grad = bg.make(
                    n_intervals, 0.3, dtype, max_spikes, batch, package
                )
                fns[k + " forward"], fns[k + " grad"] = fwd, grad
                args[k + " forward"] = args[k + " grad"] = (layer, x)
            _, times = interleaved_timings(fns, args, a.reps, alternate=True)
            outs = {
                k: eqx.filter(fns[k + " grad"](*args[k + " grad"]), eqx.is_array)
                for k in ("this", "base")
            }
            diff = largest_difference(outs["this"], outs["base"])
            if not diff <= 1000 * np.finfo(dtype).eps:
                raise SystemExit(f"the versions differ: {diff:.1e} relative")
            med = lambda k: 1e3 * statistics.median(times[k])
            ratio = lambda k: median_ratio(times, "this " + k, "base " + k)
            per_fwd = lambda v: median_ratio(times, v + " grad", v + " forward")
            print(
                f"{n_intervals} intervals x batch {batch}, {dtype_name} "
                f"(max_spikes={max_spikes}): forward this {med('this forward'):.2f} "
                f"ms, base {med('base forward'):.2f} ms, ratio "
                f"{ratio('forward'):.3f}; value+grad this {med('this grad'):.2f} ms, "
                f"base {med('base grad'):.2f} ms, ratio {ratio('grad'):.3f}; "
                f"value+grad / forward this {per_fwd('this'):.2f}, base "
                f"{per_fwd('base'):.2f} (agree to {diff:.1e} relative)",
                flush=True,
            )


if __name__ == "__main__":
    main()
