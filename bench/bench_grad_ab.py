"""A/B of the exact-path gradient against another checkout of the library.

`bench_grad.py`'s LIF configurations (256 neurons, drive 0.3, 100 / 400 / 1600
intervals, both dtypes), timed with the package of this checkout or, with
`--package DIR`, with the `snode_jax` folder of another checkout, imported under
another name (an editable install of this checkout takes precedence over
`PYTHONPATH`, so a second checkout cannot be put first on the path):

    git worktree add /tmp/old <commit>
    python bench/bench_grad_ab.py --package /tmp/old/snode_jax
    python bench/bench_grad_ab.py

Run the two in alternating processes. Prints forward and value+grad medians (ms),
'value+grad / forward' as in `bench_grad.py`, and the first weight gradients (the two
versions should agree to rounding).
"""

import argparse
import importlib.util
import pathlib
import sys

import bench_grad as bg
import numpy as np


def load_package(folder: str):
    """The package in `folder` (a `snode_jax` folder), as module `snode_jax_ab`."""
    init = pathlib.Path(folder) / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "snode_jax_ab", init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["snode_jax_ab"] = module
    spec.loader.exec_module(module)
    return module


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--package", help="a snode_jax folder of another checkout")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    if a.package:
        bg.sj = load_package(a.package)
    print(bg.sj.__file__)
    for dtype in (np.float32, np.float64):
        for n_intervals in (100, 400, 1600):
            max_spikes = bg.probe_lif(n_intervals, 0.3, dtype, 1)[2]
            layer, x, fwd, grad = bg.make(n_intervals, 0.3, dtype, max_spikes)
            g = np.asarray(grad(layer, x)[1].weight)[0, :3]
            t_f, t_g, ratio, *_ = bg.measure(fwd, grad, layer, x, a.reps)
            print(
                f"{np.dtype(dtype).name} {n_intervals:5d} intervals: forward "
                f"{1e3 * t_f:.2f} ms, value+grad {1e3 * t_g:.2f} ms, value+grad / "
                f"forward {ratio:.2f}, dL/dW[0, :3] {g}",
                flush=True,
            )


if __name__ == "__main__":
    main()
