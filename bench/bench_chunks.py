"""Chunk sizes of the closed-form adjoint, compared in one process.

`bench_grad.py`'s LIF loss (256 neurons, drive 0.3, spike times, final voltages
and counts), differentiated with `sj.integrate(..., adjoint=
sj.ClosedFormAdjoint(chunk_intervals=c))` for each `c` given (`0`: the default),
all compiled in this process and their value-and-gradient called in turn, the order
reversed every repetition. Their values and gradients must agree to 1000 times the
dtype's epsilon, relative (other chunks sum in another order).

    python bench/bench_chunks.py --batch 64 --intervals 100 --chunks 0 8
    python bench/bench_chunks.py --batch 1 --intervals 1600 --chunks 0 124

Prints, per dtype and chunk size, the chunk size used, the minimum time and the
median over repetitions of the ratio to the first chunk size given.
"""

import argparse

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import bench_grad as bg  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import interleaved_timings, largest_difference, median_ratio  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax._tangents import _chunk_intervals  # noqa: E402


def value_and_grad(chunk, max_spikes, batch):
    adjoint = sj.ClosedFormAdjoint(chunk_intervals=chunk or None)

    def one(layer, x):
        sol = sj.integrate(
            layer.dynamics,
            layer.solver,
            layer.weight,
            x,
            bg.INTERVAL,
            layer.init_state(),
            stepsize_controller=layer.stepsize_controller,
            max_spikes=max_spikes,
            surrogate=layer.surrogate,
            adjoint=adjoint,
        )
        t = jnp.where(jnp.isfinite(sol.spike_times), sol.spike_times, 0.0)
        return jnp.mean(t) + jnp.mean(sol.final_state.v**2) + 1e-3 * jnp.sum(sol.counts)

    def loss(layer, x):
        if batch == 1:
            return one(layer, x)
        return jnp.mean(jax.vmap(one, in_axes=(None, 0))(layer, x))

    return eqx.filter_jit(eqx.filter_value_and_grad(loss))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--intervals", type=int, default=100)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 8])
    p.add_argument("--reps", type=int, default=9)
    a = p.parse_args()
    for dtype in (np.float32, np.float64):
        layer, x, _, _ = bg.make(a.intervals, 0.3, dtype, 0, a.batch)
        probe = jax.vmap(
            lambda xb: layer.simulate(xb, bg.INTERVAL, max_spikes=0, throw=False)
        )
        counts = probe(x if a.batch > 1 else x[None]).num_spikes
        max_spikes = int(np.max(np.asarray(counts)))
        fs = {c: value_and_grad(c, max_spikes, a.batch) for c in a.chunks}
        args = {c: (layer, x) for c in a.chunks}
        _, times = interleaved_timings(fs, args, a.reps, alternate=True)
        outs = {c: eqx.filter(f(layer, x), eqx.is_array) for c, f in fs.items()}
        first = a.chunks[0]
        for c in a.chunks[1:]:
            diff = largest_difference(outs[c], outs[first])
            if not diff <= 1e3 * np.finfo(dtype).eps:
                raise SystemExit(f"chunks {c} and {first} differ: {diff:.1e}")
        lanes, itemsize = a.batch * bg.N_NEURONS, np.dtype(dtype).itemsize
        for c in a.chunks:
            used = _chunk_intervals(a.intervals, lanes, c or None, itemsize)
            ratio = median_ratio(times, c, first)
            print(
                f"{np.dtype(dtype).name} {a.batch} x {bg.N_NEURONS} x {a.intervals}: "
                f"chunk_intervals={c or 'default'} ({used} intervals per chunk): "
                f"{min(times[c]) * 1e3:.1f} ms, median ratio to the first {ratio:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
