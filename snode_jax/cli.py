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
import errno
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from typing import Any

import numpy as np

PROG = "snode-jax"

# Counts and budgets are int32 (as `_misc.MAX_BUDGET`; the library is imported
# only when a command runs).
MAX_BUDGET = 2**31 - 1

# Models a sweep can run: the name on the command line, and the class in snode_jax.
MODELS = {
    "lif": "ODELIFDynamics",
    "cuba": "CubaLIFDynamics",
    "adex": "AdExDynamics",
    "izhikevich": "IzhikevichDynamics",
    "qif": "QIFDynamics",
}

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
    "online": "bench_online.py",
    "engines": "bench_engines.py",
    "compile": "bench_compile.py",
    "loop_kernels": "bench_loop_kernels.py",
    "tiles": "bench_tiles.py",
    "log": "bench_log.py",
    "profile": "bench_profile.py",
    "compare": "compare.py",
}

OUTPUT_COLUMNS = ("count", "rate_hz", "first_spike_ms", "last_spike_ms")


class _ArgumentError(Exception):
    """A bad argument found after parsing (exit status 2)."""


def _import_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("Plots need matplotlib: pip install 'snode_jax[cli]'.") from e
    return plt


def _check_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "Progress bars need tqdm: pip install 'snode_jax[cli]' (or pass "
            "--no-progress)."
        ) from e


def _set_dtype(dtype: str) -> None:
    # float64 needs JAX's x64 mode; float32 runs pass their dtype explicitly, so
    # x64 is left as it is (never switched off under a caller's feet).
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


# -- parsing -----------------------------------------------------------------------


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not finite")
    return value


def parse_values(spec: str, what: str = "values") -> np.ndarray:
    """The values of one axis: `START:STOP:NUM` (`NUM` evenly spaced values from
    `START` to `STOP`, both included), `V1,V2,...`, or one value `V`."""
    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(
                f"{what}: {spec!r} must be START:STOP:NUM (NUM values, ends included)"
            )
        start, stop = (_number(p, what) for p in parts[:2])
        try:
            num = int(parts[2])
        except ValueError:
            num = 0
        if num < 1 or str(num) != parts[2].strip():
            raise argparse.ArgumentTypeError(
                f"{what}: NUM in {spec!r} must be a positive integer, got {parts[2]!r}"
            )
        return _linspace(start, stop, num, what, spec)
    items = [s for s in spec.split(",")]
    if not spec or any(not s.strip() for s in items):
        raise argparse.ArgumentTypeError(
            f"{what}: {spec!r} must be START:STOP:NUM, V1,V2,... or V"
        )
    return np.array([_number(s, what) for s in items])


def _linspace(start: float, stop: float, num: int, what: str, spec: str = ""):
    """`num` values from `start` to `stop`, both included (`what` names the axis
    in errors, `spec` the text they came from, if any)."""
    given = f"{what}: {spec!r}" if spec else what
    # One value cannot include both ends: the stop would be dropped.
    if num == 1 and start != stop:
        raise argparse.ArgumentTypeError(
            f"{given}: one value (NUM = 1) cannot include both ends {start:g} and "
            f"{stop:g}; give the one value alone, or NUM >= 2"
        )
    try:
        return np.linspace(start, stop, num)
    except MemoryError:
        where = f" in {spec!r}" if spec else ""
        raise argparse.ArgumentTypeError(
            f"{what}: {num} values{where} do not fit in memory"
        ) from None


def _assignment(kind: str):
    def parse(text: str) -> tuple[str, np.ndarray]:
        name, sep, spec = text.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"{text!r} must be NAME=VALUES (e.g. tau_mem=10:50:5)"
            )
        name = name.strip()
        values = parse_values(spec, f"{kind} {name}")
        if kind == "set" and values.size != 1:
            raise argparse.ArgumentTypeError(
                f"{text!r}: --set takes one value; sweep with --param"
            )
        return name, values

    return parse


def _config_values(name: str, value: Any, path: str) -> np.ndarray:
    what = f"{path}: grid.{name}"
    if isinstance(value, str):
        return parse_values(value, what)
    if isinstance(value, dict):
        keys = {"start", "stop", "num"}
        if set(value) != keys:
            raise _ArgumentError(
                f"{what} must have the keys start, stop, num, got {sorted(value)}"
            )
        num = value["num"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise _ArgumentError(f"{what}: num must be a positive integer, got {num!r}")
        start = _number(str(value["start"]), what)
        stop = _number(str(value["stop"]), what)
        return _linspace(start, stop, num, what)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list) and value:
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _ArgumentError(f"{what}: {v!r} is not a number")
        return np.array([_number(str(v), what) for v in value])
    raise _ArgumentError(
        f"{what} must be a list of numbers, a string START:STOP:NUM or a table "
        f"{{start, stop, num}}, got {value!r}"
    )


_CONFIG_KEYS = {
    "model",
    "duration",
    "max_spikes",
    "max_steps",
    "chunk_size",
    "dtype",
    "out",
    "plot",
    "grid",
    "fixed",
}


_IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _check_output(flag: str, path: str, suffixes: tuple[str, ...] | None = None):
    """Refuse an output path before any work: its folder must exist, the path must
    not be a folder, a new file must be creatable there (tried, and removed again)
    and an existing regular file writable; and for an image its suffix must be one
    matplotlib writes. A link or another kind of file (a pipe) is left untouched."""
    target = pathlib.Path(path)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise _ArgumentError(f"{flag} {path}: must end in one of {', '.join(suffixes)}")
    folder = target.parent
    if not folder.is_dir():
        raise _ArgumentError(
            f"{flag} {path}: the folder {str(folder)!r} does not exist"
        )
    try:
        if target.is_dir():
            raise _ArgumentError(f"{flag} {path}: is a folder, not a file")
        if not os.path.lexists(target):
            with open(target, "xb"):  # (exclusive: never an existing file)
                pass
            target.unlink()
        elif target.is_file() and not target.is_symlink():
            if not os.access(target, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as e:
        raise _ArgumentError(
            f"{flag} {path}: cannot be written ({e.strerror})"
        ) from None


def _load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise _ArgumentError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise _ArgumentError(f"--config {path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise _ArgumentError(f"--config {path}: not UTF-8 text ({e.reason})") from None
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise _ArgumentError(
            f"--config {path}: unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(_CONFIG_KEYS)}"
        )
    for table in ("grid", "fixed"):
        if not isinstance(data.get(table, {}), dict):
            raise _ArgumentError(f"--config {path}: [{table}] must be a table")
    try:
        grid = {k: _config_values(k, v, path) for k, v in data.get("grid", {}).items()}
    except argparse.ArgumentTypeError as e:
        raise _ArgumentError(f"--config {e}") from None
    fixed = {}
    for k, v in data.get("fixed", {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _ArgumentError(
                f"--config {path}: fixed.{k} must be a number, got {v!r}"
            )
        try:
            fixed[k] = np.array([_number(str(v), f"{path}: fixed.{k}")])
        except argparse.ArgumentTypeError as e:
            raise _ArgumentError(f"--config {e}") from None
    data["grid"], data["fixed"] = grid, fixed
    return data


# -- sweep ---------------------------------------------------------------------------


def _sweep_settings(args) -> dict[str, Any]:
    """Merge `--config` with the flags (a flag given on the command line wins)."""
    defaults = {
        "model": "lif",
        "duration": 200.0,
        "max_spikes": 256,
        "max_steps": None,  # the layer's
        "chunk_size": None,
        "dtype": "float64",
        "out": "sweep.csv",
        "plot": None,
    }
    config = _load_config(args.config) if args.config else {}
    settings = {}
    for key, default in defaults.items():
        flag = getattr(args, key)
        settings[key] = flag if flag is not None else config.get(key, default)
    for flag, pairs in (("--param", args.param), ("--set", args.set)):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise _ArgumentError(
                f"{flag} {', '.join(repeated)} given more than once; give each "
                "parameter once (a list of values: NAME=V1,V2,...)"
            )
    # A flag overrides the file's entry for its parameter, swept or fixed.
    flagged = {name for name, _ in [*args.param, *args.set]}
    grid = {k: v for k, v in config.get("grid", {}).items() if k not in flagged}
    grid.update(dict(args.param))
    fixed = {k: v for k, v in config.get("fixed", {}).items() if k not in flagged}
    fixed.update(dict(args.set))
    settings["grid"], settings["fixed"] = grid, fixed

    if settings["model"] not in MODELS:
        raise _ArgumentError(
            f"model: {settings['model']!r} is not one of {sorted(MODELS)}"
        )
    if settings["dtype"] not in ("float32", "float64"):
        raise _ArgumentError(
            f"dtype: {settings['dtype']!r} is not 'float32' or 'float64'"
        )
    # Here, before the model's values are checked (and so before the run): in
    # float64 they are float64 values (with 64-bit types off, v_reset=0.999999999
    # read as v_threshold=1).
    _set_dtype(settings["dtype"])
    duration = settings["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise _ArgumentError(f"--duration must be a number (ms), got {duration!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise _ArgumentError(f"--duration must be > 0 (ms), got {duration!r}")
    for key in ("max_spikes", "max_steps", "chunk_size"):
        value = settings[key]
        if value is None and key != "max_spikes":
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _ArgumentError(f"{flag} must be a positive integer, got {value!r}")
        if value > MAX_BUDGET:
            raise _ArgumentError(
                f"{flag} must be at most {MAX_BUDGET} (an int32 count), got {value!r}"
            )
    if not grid:
        raise _ArgumentError(
            "nothing to sweep: give at least one --param NAME=VALUES (or a [grid] "
            "table in --config)"
        )
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_BUDGET:
        sizes = " x ".join(str(len(values)) for values in grid.values())
        raise _ArgumentError(
            f"the grid has {points} points ({sizes}); at most {MAX_BUDGET} (an "
            "int32 count)"
        )
    import snode_jax as sj

    cls = getattr(sj, MODELS[settings["model"]])
    allowed = ("drive",) + tuple(cls.parameter_names)
    for source, names in (("--param", grid), ("--set", fixed)):
        for name in names:
            if name not in allowed:
                raise _ArgumentError(
                    f"{source} {name}: not a parameter of the {settings['model']} "
                    f"model; allowed: {', '.join(allowed)}"
                )
    both = set(grid) & set(fixed)
    if both:
        raise _ArgumentError(
            f"{sorted(both)} given both as swept (--param, or --config's [grid]) "
            "and fixed (--set, or --config's [fixed])"
        )
    _check_model_values(cls, settings["model"], grid, fixed, settings["dtype"])
    out = str(settings["out"])
    if pathlib.Path(out).suffix not in (".csv", ".npz"):
        raise _ArgumentError(f"--out {out}: must end in .csv or .npz")
    _check_output("--out", out)
    if settings["plot"] is not None:
        _check_output("--plot", str(settings["plot"]), _IMAGE_SUFFIXES)
    if settings["plot"] is not None and len(grid) > 2:
        raise _ArgumentError(
            f"--plot draws one or two swept parameters, got {len(grid)}: "
            f"{', '.join(grid)}"
        )
    if settings["plot"] is not None:
        for name, values in grid.items():
            if len(np.unique(values)) != len(values):
                raise _ArgumentError(
                    f"--plot needs distinct values along each axis; {name} repeats "
                    f"one: {values.tolist()}"
                )
    settings["cls"] = cls
    return settings


def _check_model_values(cls, model: str, grid, fixed, dtype: str) -> None:
    """Each fixed value, and each value of each swept parameter (the others at their
    first value), is one the model accepts; the drive fits the dtype. (A
    combination of values the model refuses, such as `v_reset >= v_threshold` at
    some grid points only, is found when the sweep runs.)"""
    largest = float(np.finfo(dtype).max)
    for source, table in (("--set", fixed), ("--param", grid)):
        drive = table.get("drive")
        if drive is not None and np.any(np.abs(drive) > largest):
            raise _ArgumentError(
                f"{source} drive: values beyond the range of {dtype}, got "
                f"{drive[np.abs(drive) > largest].tolist()[:3]}"
            )
    base = {n: float(v[0]) for n, v in {**grid, **fixed}.items() if n != "drive"}
    for source, table in (("--set", fixed), ("--param", grid)):
        for name, values in table.items():
            if name == "drive":
                continue
            for value in np.unique(values):
                try:
                    cls(**{**base, name: float(value)})
                except (ValueError, TypeError) as e:
                    raise _ArgumentError(
                        f"{source} {name}={float(value)!r}: the {model} model refuses "
                        f"it: {e}"
                    ) from None


def run_sweep(settings: dict[str, Any], progress: bool) -> dict[str, np.ndarray]:
    """One neuron per grid point driven by a constant `drive` (current) for
    `duration` ms from rest: its spike count, rate, first and last spike."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import snode_jax as sj
    from snode_jax.sweep import grid, sweep_layer

    names = list(settings["grid"])
    points = grid({name: settings["grid"][name] for name in names})
    params = {name: float(v[0]) for name, v in settings["fixed"].items()}
    drive = params.pop("drive", 1.0)
    # Build the model with the first value of each swept parameter (a model built
    # without a parameter, such as the LIF without `t_ref`, has none to sweep).
    for name in names:
        if name != "drive":
            params[name] = float(points[name][0])
    dynamics = settings["cls"](**params)
    dtype = jnp.float64 if settings["dtype"] == "float64" else jnp.float32
    budget = (
        {} if settings["max_steps"] is None else {"max_steps": settings["max_steps"]}
    )
    layer = sj.SpikingODELayer(
        1, 1, dynamics, dtype=dtype, key=jax.random.key(0), **budget
    )
    # The drive is the weight of one input held at 1.
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.full((1, 1), drive, dtype))
    paths = {n: ("weight" if n == "drive" else f"dynamics.{n}") for n in names}
    duration = float(settings["duration"])

    def measure(sol):
        num = sol.num_spikes[0]
        times = sol.spike_times[0]
        return {
            "count": num,
            "first_spike_ms": times[0],
            "last_spike_ms": times[jnp.maximum(num - 1, 0)],
        }

    out = sweep_layer(
        layer,
        np.ones((1, 1)),
        {paths[n]: points[n] for n in names},
        interval=duration,
        max_spikes=settings["max_spikes"],
        measure=measure,
        chunk_size=settings["chunk_size"],
        progress=progress,
    )
    columns = {n: points[n] for n in names}
    columns["count"] = out["count"].astype(np.int64)
    columns["rate_hz"] = columns["count"] * (1000.0 / duration)
    columns["first_spike_ms"] = out["first_spike_ms"].astype(np.float64)
    columns["last_spike_ms"] = out["last_spike_ms"].astype(np.float64)
    return columns


def write_table(columns: dict[str, np.ndarray], path: str) -> None:
    """Write the columns as CSV (a header line, full precision) or NPZ."""
    if path.endswith(".npz"):
        np.savez(path, **columns)  # pyright: ignore[reportArgumentType]
        return
    names = list(columns)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for row in zip(*(columns[n] for n in names)):
            f.write(",".join(repr(v.item()) for v in row) + "\n")


def plot_sweep(
    columns: dict[str, np.ndarray], axes: dict[str, np.ndarray], path: str
) -> None:
    """The rate against one swept parameter (a line) or two (an image); `axes` are
    the grid's axes in the order given (the first varies slowest)."""
    plt = _import_pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    names = list(axes)
    shape = tuple(len(v) for v in axes.values())
    rate = columns["rate_hz"].reshape(shape)
    order = [np.argsort(v, kind="stable") for v in axes.values()]
    if len(names) == 1:
        ax.plot(axes[names[0]][order[0]], rate[order[0]], ".-")
        ax.set_xlabel(names[0])
        ax.set_ylabel("rate (Hz)")
    else:
        a, b = (axes[n][o] for n, o in zip(names, order))
        image = rate[order[0]][:, order[1]]
        mesh = ax.pcolormesh(b, a, image, shading="nearest")
        fig.colorbar(mesh, ax=ax, label="rate (Hz)")
        ax.set_xlabel(names[1])
        ax.set_ylabel(names[0])
    ax.set_title(f"{rate.size} points")
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
