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
import shutil
import sys
import tempfile
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snode_jax as sj  # noqa: E402

N_NEURONS, N_INPUTS, INTERVAL = 256, 32, 10.0


def layer_of(package):
    rng = np.random.default_rng(0)
    layer = package.SpikingODELayer(
        N_INPUTS,
        N_NEURONS,
        package.AdExDynamics(),
        solver=package.Dopri5(),
        dt_init=0.01,
        dt_min=1e-6,
        max_steps=20000,
        key=jax.random.key(0),
    )
    weight = rng.uniform(0.0, 50.0, (N_NEURONS, N_INPUTS))
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, jnp.float64))


def value_and_grad(max_spikes):
    def loss(layer, x):
        sol = layer.simulate(x, INTERVAL, max_spikes=max_spikes)
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        v = sol.final_state.v
        return jnp.mean(t) + jnp.mean(v**2) * 1e-3 + 1e-3 * jnp.sum(sol.counts)

    return eqx.filter_jit(eqx.filter_value_and_grad(loss))


def largest_difference(a, b) -> float:
    """The largest difference between the array leaves of `a` and `b`, relative to
    the largest magnitude of each leaf of `b`."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(float(np.max(np.abs(y))), np.finfo(y.dtype).tiny)
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--package", required=True, help="the other checkout's snode_jax folder"
    )
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--intervals", type=int, nargs="+", default=[10, 40])
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    try:
        shutil.copytree(a.package, os.path.join(tmp, "snode_jax_base"))
        sys.path.insert(0, tmp)
        import snode_jax_base as base  # type: ignore[import-not-found]

        print(f"this: {sj.__file__}\nbase: {a.package}")
        layers = {"this": layer_of(sj), "base": layer_of(base)}
        for n_intervals in a.intervals:
            rng = np.random.default_rng(0)
            x = jnp.asarray(rng.uniform(0.5, 1.0, (n_intervals, N_INPUTS)))
            probe = layers["this"].simulate(x, INTERVAL, max_spikes=0, throw=False)
            max_spikes = int(np.max(np.asarray(probe.num_spikes)))
            fs = {k: value_and_grad(max_spikes) for k in layers}
            first, outs = {}, {}
            for k, f in fs.items():
                t0 = time.perf_counter()
                outs[k] = jax.block_until_ready(f(layers[k], x))
                first[k] = time.perf_counter() - t0
            diff = largest_difference(
                eqx.filter(outs["this"], eqx.is_array),
                eqx.filter(outs["base"], eqx.is_array),
            )
            if not diff <= 1e-9:
                raise SystemExit(f"the versions differ: {diff:.1e} relative")
            times = {k: [] for k in fs}
            order = list(fs)
            for _ in range(a.reps):
                for k in order:
                    t0 = time.perf_counter()
                    jax.block_until_ready(fs[k](layers[k], x))
                    times[k].append(time.perf_counter() - t0)
                order.reverse()
            this, other = np.asarray(times["this"]), np.asarray(times["base"])
            same = "to the bit" if diff == 0 else f"to {diff:.1e} relative"
            print(
                f"{n_intervals} intervals (max_spikes={max_spikes}): first call "
                f"this {first['this']:.2f} s, base {first['base']:.2f} s; "
                f"value+grad this {this.min() * 1e3:.1f} ms, base "
                f"{other.min() * 1e3:.1f} ms, median ratio "
                f"{np.median(this / other):.3f} (agree {same})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
