"""The `snode-jax` command line: `demo`, `sweep` and `bench`.

```bash
snode-jax demo --out raster.png
snode-jax sweep --param drive=0:0.5:51 --param tau_mem=10,20,40 --set t_ref=2 \\
    --out fi.csv --plot fi.png
snode-jax sweep --config grid.toml
snode-jax bench --quick            # a built-in timing
snode-jax bench layer --quick      # bench/bench_layer.py from a source checkout
```

Bad arguments exit with status 2 and a message naming the argument; a failed run
(a simulation error, an unwritable file, a missing optional dependency) with 1.
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from ._cli_sweep import (
    _IMAGE_SUFFIXES,
    MODELS,
    OUTPUT_COLUMNS,
    _ArgumentError,
    _assignment,
    _check_output,
    _import_pyplot,
    _number,
    _set_dtype,
    _sweep_settings,
    parse_values as parse_values,  # (public: the grid syntax)
    plot_sweep,
    run_sweep,
    write_table,
)

PROG = "snode-jax"

# The scripts of bench/ (source checkouts), by the name `bench` takes.
BENCH_SCRIPTS = {
    "layer": "bench_layer.py",
    "grad": "bench_grad.py",
    "adaptive": "bench_adaptive.py",
    "rk_step": "bench_rk_step.py",
    "forward_ab": "bench_forward_ab.py",
    "walk_ab": "bench_walk_ab.py",
    "adaptive_grad_ab": "bench_adaptive_grad_ab.py",
    "grad_ab": "bench_grad_ab.py",
    "lif_grad_ab": "bench_lif_grad_ab.py",
    "chunks": "bench_chunks.py",
    "network": "bench_network.py",
    "event_precision": "bench_event_precision.py",
    "online": "bench_online.py",
    "engines": "bench_engines.py",
    "compile": "bench_compile.py",
    "loop_kernels": "bench_loop_kernels.py",
    "tiles": "bench_tiles.py",
    "log": "bench_log.py",
    "profile": "bench_profile.py",
    "compare": "compare.py",
}


def _check_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "Progress bars need tqdm: pip install 'snode_jax[cli]' (or pass "
            "--no-progress)."
        ) from e


def _cmd_sweep(args) -> int:
    settings = _sweep_settings(args)
    progress = not args.no_progress
    if progress:
        _check_tqdm()
    if settings["plot"] is not None:
        _import_pyplot()
    t0 = time.perf_counter()
    columns = run_sweep(settings, progress)
    wall = time.perf_counter() - t0
    out = str(settings["out"])
    write_table(columns, out)
    n = len(columns["count"])
    print(f"{n} points, {settings['model']} model, {wall:.2f} s; wrote {out}")
    if settings["plot"] is not None:
        plot_sweep(columns, settings["grid"], str(settings["plot"]))
        print(f"wrote {settings['plot']}")
    return 0


# -- demo ----------------------------------------------------------------------------


def _cmd_demo(args) -> int:
    if args.intervals < 1:
        raise _ArgumentError(f"--intervals must be >= 1, got {args.intervals}")
    _check_output("--out", str(args.out), _IMAGE_SUFFIXES)
    plt = _import_pyplot()
    import jax
    import jax.numpy as jnp

    import snode_jax as sj
    from snode_jax.plot import raster

    # Shaped as the quickstart's layer: 16 LIF neurons, 32 inputs, 1 ms intervals
    # (in float32: other weights and inputs than the quickstart's float64 ones).
    layer = sj.SpikingODELayer(
        32,
        16,
        sj.ODELIFDynamics(tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0),
        key=jax.random.key(args.seed),
    )
    rng = np.random.default_rng(42 + args.seed)
    inputs = jnp.asarray(rng.standard_normal((args.intervals, 32)) * 0.5, jnp.float32)
    # Room for every spike time: start at one per interval, double if it was short.
    max_spikes = args.intervals
    sol = layer.simulate(inputs, interval=1.0, max_spikes=max_spikes, throw=False)
    while sol.result == sj.RESULTS.spike_buffer_full:
        max_spikes *= 2
        sol = layer.simulate(inputs, interval=1.0, max_spikes=max_spikes, throw=False)
    if sol.result != sj.RESULTS.successful:
        sol = layer.simulate(inputs, interval=1.0, max_spikes=max_spikes)  # raises
    counts = np.asarray(sol.counts)
    print(f"16 neurons, 32 inputs, {args.intervals} intervals of 1 ms")
    print(f"Total spikes: {int(counts.sum())}")
    print(f"Mean rate: {counts.mean():.3f} spikes/interval")
    fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
    raster(sol.spike_times, ax=ax, t_end=float(args.intervals))
    ax.set_title("snode-jax demo: exact spike times")
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


# -- bench ---------------------------------------------------------------------------


def _bench_dir() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent.parent / "bench"


def _cmd_bench(args) -> int:
    if args.script is not None:
        if args.quick or args.reps is not None:
            raise _ArgumentError(
                "--quick and --reps set the built-in timing; give a script's own "
                f"options after its name (snode-jax bench {args.script} --quick)"
            )
        path = _bench_dir() / BENCH_SCRIPTS[args.script]
        if not path.is_file():
            print(
                f"{PROG} bench: error: {path} not found: the benchmark scripts live "
                "in bench/ of a source checkout (pip install -e '.[bench]').",
                file=sys.stderr,
            )
            return 1
        cmd = [sys.executable, str(path), *args.script_args]
        print("running " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, cwd=path.parent.parent).returncode
    if args.script_args:
        raise _ArgumentError(f"unrecognised arguments: {' '.join(args.script_args)}")
    reps = 5 if args.reps is None else args.reps
    if reps < 1:
        raise _ArgumentError(f"--reps must be >= 1, got {reps}")
    if not args.no_progress:
        _check_tqdm()
    _set_dtype(args.dtype)
    return _builtin_bench(args.quick, reps, args.dtype, not args.no_progress)


def _builtin_bench(quick: bool, reps: int, dtype: str, progress: bool) -> int:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import snode_jax as sj

    # The workloads of bench/bench_layer.py: the tutorial's layer, and a batch.
    workloads = [("tutorial", 1, 16, 100, 32), ("batch", 64, 256, 100, 32)]
    if quick:
        workloads = [("tutorial", 1, 16, 100, 32), ("batch", 8, 64, 100, 32)]
    jdtype = jnp.float64 if dtype == "float64" else jnp.float32
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} CPU(s), {dtype}"
    )
    print(
        "jit(vmap(forward)) of the exact LIF (tau_mem 20 ms), 1 ms intervals, "
        f"inputs N(0, 1) * 0.5; median of {reps} runs after the first call."
    )
    print(
        "Timings only: bench/bench_layer.py checks every count against the closed "
        "form and compares with Euler."
    )
    header = f"{'workload':<10} {'batch x neurons x T x inputs':>29} "
    header += f"{'first call (s)':>15} {'median (ms)':>12} {'spikes':>8}"
    print(header)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(workloads) * (reps + 1), desc="bench", unit="run")
    try:
        for name, batch, n, T, n_in in workloads:
            layer = sj.SpikingODELayer(n_in, n, dtype=jdtype, key=jax.random.key(0))
            rng = np.random.default_rng(0)
            x = jnp.asarray(rng.standard_normal((batch, T, n_in)) * 0.5, jdtype)
            fn = eqx.filter_jit(jax.vmap(lambda xi: layer.forward(xi, 1.0)))
            t0 = time.perf_counter()
            counts = jax.block_until_ready(fn(x))
            first = time.perf_counter() - t0
            if bar is not None:
                bar.update()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x))
                times.append(time.perf_counter() - t0)
                if bar is not None:
                    bar.update()
            size = f"{batch} x {n} x {T} x {n_in}"
            median = statistics.median(times) * 1e3
            spikes = int(np.asarray(counts).sum())
            print(f"{name:<10} {size:>29} {first:>15.3f} {median:>12.3f} {spikes:>8d}")
    finally:
        if bar is not None:
            bar.close()
    return 0


# -- entry point ---------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# The demo's seed: a key for JAX and, offset by 42, a NumPy generator's seed.
_MAX_SEED = 2**31 - 1


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {_MAX_SEED}, got {value}"
        )
    return value


def _positive_float(text: str) -> float:
    value = _number(text, "value")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Spiking neural ODEs in JAX: a demo, parameter sweeps, and "
        "benchmarks.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulate a 16-neuron LIF layer and draw its spike raster",
        description="Simulate a layer shaped as the quickstart's (16 LIF neurons, "
        "32 random inputs held for 1 ms each), in float32 (its weights and inputs "
        "are not the quickstart's, which runs in float64), and write its spike "
        "raster as an image.",
    )
    demo.set_defaults(run=_cmd_demo, subparser=demo)
    demo.add_argument("--out", default="snode_jax_demo.png", help="image (PNG) path")
    demo.add_argument(
        "--seed", type=_seed, default=0, help="weights' and inputs' seed (>= 0)"
    )
    demo.add_argument(
        "--intervals", type=int, default=100, help="number of 1 ms intervals"
    )

    sw = sub.add_parser(
        "sweep",
        help="firing rate of one neuron over a grid of parameters and drives",
        description="Simulate one neuron per point of a parameter grid, driven by "
        "a constant current `drive` from rest for --duration ms, vmapped in chunks "
        "and sharded over all JAX devices (snode_jax.sweep). Writes one row per "
        f"point: the swept parameters, {', '.join(OUTPUT_COLUMNS)} "
        "(spike times in ms, inf without spikes).",
        epilog="VALUES: START:STOP:NUM (NUM evenly spaced values, ends included), "
        "V1,V2,..., or V. Parameters: drive (the constant current, default 1), and the model's own (lif: tau_mem, "
        "v_rest, v_threshold, v_reset, C_mem, t_ref). A TOML --config holds the "
        "same settings: model, duration, max_spikes, max_steps, chunk_size, dtype, "
        "out, plot, "
        "a [grid] table (NAME = [values] | 'START:STOP:NUM' | {start, stop, num}) "
        "and a [fixed] table (NAME = value); flags override it.",
    )
    sw.set_defaults(run=_cmd_sweep, subparser=sw)
    sw.add_argument(
        "--param",
        action="append",
        default=[],
        type=_assignment("param"),
        metavar="NAME=VALUES",
        help="a swept axis (repeatable); the grid is their Cartesian product",
    )
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        type=_assignment("set"),
        metavar="NAME=VALUE",
        help="a fixed parameter (repeatable)",
    )
    sw.add_argument("--config", metavar="FILE.toml", help="settings and grid (TOML)")
    sw.add_argument("--model", choices=sorted(MODELS), default=None, help="default lif")
    sw.add_argument(
        "--duration", type=_positive_float, default=None, help="ms (default 200)"
    )
    sw.add_argument(
        "--max-spikes",
        type=_positive_int,
        default=None,
        help="spike times stored per point (default 256); a run past it fails",
    )
    sw.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="solver steps per point per run (default: the layer's, 4096); a run "
        "past it fails",
    )
    sw.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        help="points per device per compiled call (default: all at once)",
    )
    sw.add_argument(
        "--dtype", choices=["float32", "float64"], default=None, help="default float64"
    )
    sw.add_argument(
        "--out", default=None, help="results, .csv or .npz (default sweep.csv)"
    )
    sw.add_argument("--plot", default=None, help="also draw the rate (PNG path)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")

    be = sub.add_parser(
        "bench",
        help="a built-in timing, or a benchmark script of bench/",
        description="Without SCRIPT: time jit(vmap(forward)) of the exact LIF on "
        "the tutorial's layer and a batch (what bench/bench_layer.py measures, "
        "without its Euler baseline and closed-form checks). With SCRIPT: run "
        "bench/<script> of a source checkout with the arguments that follow "
        f"(scripts: {', '.join(BENCH_SCRIPTS)}; bench/README.md explains each).",
    )
    be.set_defaults(run=_cmd_bench, subparser=be)
    be.add_argument("--quick", action="store_true", help="a smaller batch")
    be.add_argument("--reps", type=int, default=None, help="timed runs (default 5)")
    be.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="default float32",
    )
    be.add_argument("--no-progress", action="store_true", help="no progress bar")
    be.add_argument(
        "script", nargs="?", choices=list(BENCH_SCRIPTS), help="a script of bench/"
    )
    be.add_argument("script_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _short_message(e: Exception) -> str:
    """The message of an exception; for an error raised inside compiled code
    (`eqx.error_if`), its own message without the stacks around it."""
    message = str(e).strip()
    found = re.search(r"EquinoxRuntimeError: (.*?)(?:\n\s*\n|$)", message, re.S)
    if found:
        message = found.group(1).strip()
    return message or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `snode-jax` command line.

    **Arguments:**

    - `argv`: the arguments (default `sys.argv[1:]`).

    **Returns:**

    The exit status: 0 on success, 1 when a run fails, 2 for bad arguments
    (argparse exits with 2 itself).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    import jax

    x64 = jax.config.read("jax_enable_x64")
    try:
        return args.run(args)
    except _ArgumentError as e:
        # (Nothing ran: 64-bit types as the caller had them, where `--dtype
        # float64` switched them on before a later argument was refused.)
        jax.config.update("jax_enable_x64", x64)
        args.subparser.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        what = {
            "sweep": "a grid of that many points, or values per axis, does not fit",
            "demo": "that many --intervals do not fit",
        }.get(args.command, "the run does not fit")
        print(f"{PROG} {args.command}: error: out of memory ({what})", file=sys.stderr)
        return 1
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as e:
        message = _short_message(e)
        if args.command == "sweep" and "`max_spikes`" in message:
            message += " (--max-spikes)"
        if args.command == "sweep" and "`max_steps`" in message:
            message += " (--max-steps)"
        # (The sweep's one interval is its duration.)
        if args.command == "sweep" and (
            "`interval`" in message or "need interval" in message
        ):
            message += " (--duration)"
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
