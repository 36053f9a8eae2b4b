"""Time a vmapped exact LIF layer with the folded batch run tile by tile (the
default) and as one population, in one process.

The tile size is read when a function is traced (`snode_jax._scan.TILE_BYTES`):
each variant is traced and compiled ahead of time with its setting (JAX's caches
cleared in between), then both are called in turn, `--reps` times. Results must
be equal bit for bit.

    python bench/bench_tiles.py            # writes the bench_tiles section
    python bench/bench_tiles.py --keep-freed-memory   # the bench_tiles_kept one
"""

import argparse
import statistics
import time

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import block, machine_line, write_section  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax import _scan  # noqa: E402

N_NEURONS, N_INTERVALS, N_INPUTS, MAX_SPIKES = 256, 100, 32, 64


def compiled(fn, layer, x, tile_bytes):
    jax.clear_caches()
    saved = _scan.TILE_BYTES
    _scan.TILE_BYTES = tile_bytes
    try:
        params, static = eqx.partition(layer, eqx.is_array)
        f = jax.jit(lambda p, x: fn(eqx.combine(p, static), x))
        return f.lower(params, x).compile(), params
    finally:
        _scan.TILE_BYTES = saved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batches", default="64,256,1024")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call snode_jax.keep_freed_memory() first (its own section)",
    )
    a = p.parse_args()
    if a.keep_freed_memory and not sj.keep_freed_memory():
        raise SystemExit("keep_freed_memory() returned False (not glibc?)")
    section = "bench_tiles_kept" if a.keep_freed_memory else "bench_tiles"
    kept = " --keep-freed-memory" if a.keep_freed_memory else ""
    fns = {
        "forward": jax.vmap(lambda lay, x: lay.forward(x, 1.0), (None, 0)),
        f"simulate(max_spikes={MAX_SPIKES})": jax.vmap(
            lambda lay, x: lay.simulate(x, 1.0, MAX_SPIKES).spike_times, (None, 0)
        ),
    }
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        lanes = _scan.TILE_BYTES // jnp.dtype(dtype).itemsize
        for batch in (int(b) for b in a.batches.split(",")):
            dyn = sj.ODELIFDynamics(tau_mem=20.0)
            layer = sj.SpikingODELayer(
                N_INPUTS, N_NEURONS, dyn, dtype=dtype, key=jax.random.key(0)
            )
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, N_INTERVALS, N_INPUTS)) * 0.5
            x = jnp.asarray(x.astype(dtype))
            for name, fn in fns.items():
                tiled, params = compiled(fn, layer, x, _scan.TILE_BYTES)
                whole, _ = compiled(fn, layer, x, 2**62)
                same = np.array_equal(
                    np.asarray(tiled(params, x)), np.asarray(whole(params, x))
                )
                t_tiled, t_whole = [], []
                for _ in range(a.reps):
                    for f, out in ((tiled, t_tiled), (whole, t_whole)):
                        t0 = time.perf_counter()
                        block(f(params, x))
                        out.append(time.perf_counter() - t0)
                ratio = statistics.median(
                    t / w for t, w in zip(t_tiled, t_whole, strict=True)
                )
                tiles = -(-batch * N_NEURONS // lanes)
                row = (
                    f"| {jnp.dtype(dtype).name} | {batch} | {name} | {tiles} "
                    f"| {statistics.median(t_tiled) * 1e3:.1f} "
                    f"| {statistics.median(t_whole) * 1e3:.1f} | {ratio:.2f} "
                    f"| {'yes' if same else 'NO'} |"
                )
                print(row, flush=True)
                rows.append(row)
    text = "\n".join(
        [
            "## Folded batches run tile by tile (`bench/bench_tiles.py`"
            + (", after `keep_freed_memory()`)" if kept else ")"),
            "",
            f"Command: `python bench/bench_tiles.py --reps {a.reps} "
            f"--batches {a.batches}{kept}`  ",
            f"Machine: {machine_line()}  ",
            f"Exact LIF layer, {N_NEURONS} neurons, {N_INTERVALS} intervals of 1 ms, "
            f"{N_INPUTS} inputs N(0, 0.5^2), `jax.vmap` over the batch, the layer "
            "passed as an argument. *Tiled*: the library as it is (a tile holds "
            f"{_scan.TILE_BYTES // 1024} KiB per per-neuron array: 16384 neurons in "
            "float32, 8192 in float64); *one population*: the same code traced with "
            "a tile larger than any batch. Both compiled ahead of time and called in "
            "turn in one process; the ratio is the median of per-repetition ratios "
            "(where the batch fits one tile both run the same program: that row "
            "shows the noise). "
            + (
                "After `snode_jax.keep_freed_memory()`: freed blocks are reused."
                if kept
                else "Without `keep_freed_memory()`: blocks over 32 MiB (the "
                "batch's currents and outputs) are fresh pages at every call."
            ),
            "",
            "| dtype | batch | function | tiles | tiled (ms) | one population (ms) "
            "| tiled / one | equal bit for bit |",
            "|---|---:|---|---:|---:|---:|---:|---|",
            *rows,
        ]
    )
    write_section(section, text)


if __name__ == "__main__":
    main()
