"""The `sweep` command's settings (from flags or a TOML file), its run and its
outputs; the bad-argument error and the helpers the other commands share. Imported
by [`snode_jax.cli`][], which builds the parser and runs the commands."""

import argparse
import errno
import math
import os
import pathlib
import tomllib
from typing import Any

import numpy as np

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

    # (A list or a table is refused by name too: it is not hashable.)
    if not isinstance(settings["model"], str) or settings["model"] not in MODELS:
        raise _ArgumentError(
            f"model: {settings['model']!r} is not one of {sorted(MODELS)}"
        )
    if not isinstance(settings["dtype"], str) or settings["dtype"] not in (
        "float32",
        "float64",
    ):
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
