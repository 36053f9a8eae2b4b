"""Time a vmapped layer with its folded batch run tile by tile and as one
population, in one process.

The tile size is read when a function is traced (`snode_jax._fold.TILE_BYTES`):
each variant is traced and compiled ahead of time with its setting (JAX's caches
cleared in between), then all are called in turn, `--reps` times. The exact LIF
layer is tiled by default (64 KiB per per-neuron array); `--tile-bytes` compares
other sizes. `--adaptive` times AdEx on the adaptive path, which is not tiled,
with tiling forced on (`AdaptiveLoop.tiled`), to show why.

    python bench/bench_tiles.py                        # the bench_tiles section
    python bench/bench_tiles.py --tile-bytes 16384,32768,65536,131072  # _sweep
    python bench/bench_tiles.py --keep-freed-memory    # bench_tiles_kept
    python bench/bench_tiles.py --adaptive             # bench_tiles_adaptive
"""

import argparse
import statistics
import sys

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    interleaved_timings,
    machine_line,
    median_ratio,
    write_section,
)

import snode_jax as sj  # noqa: E402
from snode_jax import _adaptive, _fold  # noqa: E402

N_NEURONS, N_INPUTS, MAX_SPIKES = 256, 32, 64
ONE = 2**62  # a tile larger than any batch: one population


def compiled(fn, layer, x, tile_bytes, force=False):
    """`fn` traced with tiles of `tile_bytes` (recording spike times or not)."""
    jax.clear_caches()
    saved = _fold.TILE_BYTES, _fold.RECORD_TILE_BYTES, _adaptive.AdaptiveLoop.tiled
    _fold.TILE_BYTES = _fold.RECORD_TILE_BYTES = tile_bytes
    _adaptive.AdaptiveLoop.tiled = force
    try:
        params, static = eqx.partition(layer, eqx.is_array)
        f = jax.jit(lambda p, x: fn(eqx.combine(p, static), x))
        return f.lower(params, x).compile(), params
    finally:
        _fold.TILE_BYTES, _fold.RECORD_TILE_BYTES, _adaptive.AdaptiveLoop.tiled = saved


def time_variants(variants, params, x, reps):
    """Median seconds per variant, and the median ratio of each to the last (the
    variants called in turn, in alternating order)."""
    args = {k: (params, x) for k in variants}
    _, times = interleaved_timings(variants, args, reps, alternate=True)
    last = list(variants)[-1]
    return {
        k: (statistics.median(ts), median_ratio(times, k, last))
        for k, ts in times.items()
    }


def tiles(batch, n, dtype, tile_bytes):
    per = _fold.samples_per_tile(n, dtype, tile_bytes)
    return -(-batch // per) if batch > per else 1


def lif_rows(a, sizes_or_default):
    fns = {  # name: (function, the library's tile)
        "forward": (
            jax.vmap(lambda lay, x: lay.forward(x, 1.0), (None, 0)),
            _fold.TILE_BYTES,
        ),
        f"simulate(max_spikes={MAX_SPIKES})": (
            jax.vmap(
                lambda lay, x: lay.simulate(x, 1.0, MAX_SPIKES).spike_times, (None, 0)
            ),
            _fold.RECORD_TILE_BYTES,
        ),
    }
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        for batch in (int(b) for b in a.batches.split(",")):
            layer = sj.SpikingODELayer(
                N_INPUTS,
                N_NEURONS,
                sj.ODELIFDynamics(tau_mem=20.0),
                dtype=dtype,
                key=jax.random.key(0),
            )
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, 100, N_INPUTS)) * 0.5
            x = jnp.asarray(x.astype(dtype))
            for name, (fn, default) in fns.items():
                variants = {}
                sizes = sizes_or_default or [default]
                for size in sizes + [ONE]:
                    variants[size], params = compiled(fn, layer, x, size)
                outs = {k: np.asarray(f(params, x)) for k, f in variants.items()}
                timed = time_variants(variants, params, x, a.reps)
                for size in sizes:
                    same = np.array_equal(outs[size], outs[ONE])
                    rows.append(
                        f"| {jnp.dtype(dtype).name} | {batch} | {name} "
                        f"| {size // 1024} | {tiles(batch, N_NEURONS, dtype, size)} "
                        f"| {timed[size][0] * 1e3:.1f} | {timed[ONE][0] * 1e3:.1f} "
                        f"| {timed[size][1]:.2f} | {'yes' if same else 'NO'} |"
                    )
                    print(rows[-1], flush=True)
    return rows


def adaptive_rows(a):
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import bench_grad

    fn = jax.vmap(lambda lay, x: lay.forward(x, 10.0), (None, 0))
    rows = []
    for batch in (int(b) for b in a.batches.split(",")):
        layer, x = bench_grad.make_adaptive(10)  # (10, 32) inputs, float64
        x = (
            jnp.broadcast_to(x, (batch,) + x.shape)
            * jnp.linspace(0.8, 1.2, batch)[:, None, None]
        )
        tiled, params = compiled(fn, layer, x, _fold.TILE_BYTES, force=True)
        whole, _ = compiled(fn, layer, x, ONE)
        same = np.array_equal(
            np.asarray(tiled(params, x)), np.asarray(whole(params, x))
        )
        timed = time_variants({"tiled": tiled, "one": whole}, params, x, a.reps)
        rows.append(
            f"| float64 | {batch} | forward | {_fold.TILE_BYTES // 1024} "
            f"| {tiles(batch, N_NEURONS, jnp.float64, _fold.TILE_BYTES)} "
            f"| {timed['tiled'][0] * 1e3:.1f} | {timed['one'][0] * 1e3:.1f} "
            f"| {timed['tiled'][1]:.2f} | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batches", default=None, help="default 64,256,1024 (LIF), 64,256")
    p.add_argument(
        "--tile-bytes",
        default=None,
        help="tile sizes to compare, e.g. 32768,65536 (default: the library's)",
    )
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call snode_jax.keep_freed_memory() first (its own section)",
    )
    p.add_argument("--adaptive", action="store_true", help="AdEx, tiling forced on")
    a = p.parse_args()
    if a.batches is None:
        a.batches = "64,256" if a.adaptive else "64,256,1024"
    if a.keep_freed_memory and not sj.keep_freed_memory():
        raise SystemExit("keep_freed_memory() returned False (not glibc?)")
    command = f"python bench/bench_tiles.py --reps {a.reps} --batches {a.batches}"
    if a.adaptive:
        section = "bench_tiles_adaptive"
        command += " --adaptive"
        title = "AdEx on the adaptive path with tiling forced on"
        what = (
            "AdEx (Dopri5, rtol = atol = 1e-6, float64), 256 neurons, 10 intervals "
            "of 10 ms, `bench/bench_grad.py`'s layer and inputs (sample `i` of the "
            "batch scaled by 0.8 to 1.2), `forward` under `jax.vmap`. *Tiled*: "
            "`AdaptiveLoop.tiled` set while tracing (the library does not tile the "
            "adaptive path)."
        )
        rows = adaptive_rows(a)
    else:
        sizes = [int(s) for s in a.tile_bytes.split(",")] if a.tile_bytes else []
        section = "bench_tiles_kept" if a.keep_freed_memory else "bench_tiles"
        if a.tile_bytes:
            command += f" --tile-bytes {a.tile_bytes}"
            section += "_sweep"
        if a.keep_freed_memory:
            command += " --keep-freed-memory"
        title = "Folded batches of the exact LIF run tile by tile" + (
            ", after `keep_freed_memory()`" if a.keep_freed_memory else ""
        )
        if a.tile_bytes:
            title += ": tile sizes compared"
        what = (
            f"Exact LIF layer, {N_NEURONS} neurons, 100 intervals of 1 ms, "
            f"{N_INPUTS} inputs N(0, 0.5^2), `jax.vmap` over the batch, the layer "
            "passed as an argument; the library tiles at "
            f"{_fold.TILE_BYTES // 1024} KiB per per-neuron array (16384 neurons in "
            f"float32, 8192 in float64), {_fold.RECORD_TILE_BYTES // 1024} KiB when "
            "it records spike times (`simulate`). "
            + (
                "After `snode_jax.keep_freed_memory()`: freed blocks are reused."
                if a.keep_freed_memory
                else "Without `keep_freed_memory()`: blocks over 32 MiB (the "
                "batch's currents and outputs) are fresh pages at every call."
            )
        )
        rows = lif_rows(a, sizes)
    text = "\n".join(
        [
            f"## {title} (`bench/bench_tiles.py`)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine_line()}  ",
            what
            + " *One population*: the same code traced with a tile larger than any "
            "batch. Every variant compiled ahead of time and called in turn in one "
            "process; the ratio is the median of per-repetition ratios (where the "
            "batch fits one tile both run the same program: such a row shows the "
            "noise). *Same*: the returned counts (`forward`) or spike times "
            "(`simulate`) equal bit for bit.",
            "",
            "| dtype | batch | function | tile (KiB) | tiles | tiled (ms) "
            "| one population (ms) | tiled / one | same |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )
    write_section(section, text)


if __name__ == "__main__":
    main()
