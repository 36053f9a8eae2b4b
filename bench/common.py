"""Helpers shared by the benchmark and example scripts (not part of the package).

Holds the fixed-step Euler LIF baseline written in JAX, a timing helper, and the
import of the closed-form reference that the tests use.
"""

import contextlib
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.lif_reference import lif_reference  # noqa: E402


def euler_lif(dynamics, weight, inputs, interval, dt, record=False):
    """Fixed-step forward-Euler LIF, threshold checked after every step.

    Returns counts `(T, n)`; with `record=True` also the spike mask of every step
    `(T, steps_per_interval, n)` (a spike is timed at the end of its step).
    """
    n_sub = int(round(float(interval) / dt))
    if not np.isclose(n_sub * dt, float(interval)):
        raise ValueError(f"interval {interval} is not a multiple of dt {dt}")
    currents = inputs @ weight.T
    tau, vr, th, vres, cm = (
        dynamics.tau_mem,
        dynamics.v_rest,
        dynamics.v_threshold,
        dynamics.v_reset,
        dynamics.C_mem,
    )
    dtype = currents.dtype
    tau, vr, th, vres, cm = (jnp.asarray(p, dtype) for p in (tau, vr, th, vres, cm))

    def one_interval(v, current):
        drive = current / cm

        # The count is kept in the loop: the step's spike mask is stacked only
        # where it is recorded (stacked and summed, it cost the float32 run 1.2x).
        def one_step(carry, _):
            v, count = carry
            v = v + dt * (-(v - vr) / tau + drive)
            spike = v >= th
            carry = (jnp.where(spike, vres, v), count + spike)
            return carry, spike if record else None

        zero = jnp.zeros(v.shape, jnp.int32)
        (v, count), spikes = jax.lax.scan(one_step, (v, zero), None, length=n_sub)
        return v, ((count, spikes) if record else count)

    v0 = jnp.broadcast_to(vr, (weight.shape[0],))
    _, out = jax.lax.scan(one_interval, v0, currents)
    return out


def euler_spike_times(mask, interval, dt):
    """Absolute spike times per neuron from a `(T, steps, n)` spike mask."""
    mask = np.asarray(mask)
    T, n_sub, n = mask.shape
    flat = mask.reshape(T * n_sub, n)
    step_end = (np.arange(T * n_sub) + 1) * dt
    return [step_end[flat[:, i]] for i in range(n)]


def max_time_error(times, ref_times):
    """Largest distance from a reference spike to the nearest spike of the same
    neuron in `times` (`+inf` padding ignored). Missing or extra spikes are counted
    separately, as count mismatches."""
    err = 0.0
    for a, b in zip(times, ref_times, strict=True):
        a, b = np.sort(np.asarray(a)), np.asarray(b)
        a = a[np.isfinite(a)]
        if len(a) == 0 or len(b) == 0:
            continue
        idx = np.clip(np.searchsorted(a, b), 1, len(a)) - 1
        nearest = np.minimum(
            np.abs(b - a[idx]), np.abs(b - a[np.minimum(idx + 1, len(a) - 1)])
        )
        err = max(err, float(nearest.max()))
    return err


def block(x):
    return jax.block_until_ready(x)


def interleaved_timings(fns: dict, args: dict, reps: int, alternate: bool = False):
    """Compile each function, then time them round-robin `reps` times (with
    `alternate`, the order reversed every round: no function always first).

    Returns `(compile_s, times_s)`: first-call seconds, and per-function lists.
    """
    compile_s, times = {}, {k: [] for k in fns}
    for k, f in fns.items():
        t0 = time.perf_counter()
        block(f(*args[k]))
        compile_s[k] = time.perf_counter() - t0
    order = list(fns)
    for _ in range(reps):
        for k in order:
            t0 = time.perf_counter()
            block(fns[k](*args[k]))
            times[k].append(time.perf_counter() - t0)
        if alternate:
            order.reverse()
    return compile_s, times


def compile_then_run(fn, args, reps: int):
    """`jax.jit(fn)` traced and lowered, compiled, then called `reps` times on
    `args`: `(lower s, compile s, median call s, first call's value)`."""
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    value = block(compiled(*args))
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        block(compiled(*args))
        runs.append(time.perf_counter() - t)
    return t1 - t0, t2 - t1, statistics.median(runs), value


def alternate_children(script: str, settings: dict, rounds: int) -> dict:
    """Run `script` in a fresh Python process once per setting, `rounds` times,
    alternating between the settings (for settings a process reads once, such as
    XLA's flags). `settings` maps a name to `(args, env)` (`env` None: this
    process's environment). Returns each name's list of what its children printed
    last, as JSON."""
    results = {name: [] for name in settings}
    for _ in range(rounds):
        for name, (args, env) in settings.items():
            proc = subprocess.run(
                [sys.executable, os.path.abspath(script), *args],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(name, results[name][-1], file=sys.stderr, flush=True)
    return results


@contextlib.contextmanager
def base_package(folder: str):
    """Another checkout's `snode_jax` folder, imported as `snode_jax_base` next to
    this checkout's package: it is copied to a temporary directory under that
    name (the package imports itself relatively; an editable install of this
    checkout takes precedence over `PYTHONPATH`), removed on exit."""
    tmp = tempfile.mkdtemp()
    try:
        shutil.copytree(folder, os.path.join(tmp, "snode_jax_base"))
        sys.path.insert(0, tmp)
        yield importlib.import_module("snode_jax_base")
    finally:
        sys.path.remove(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def largest_difference(a, b) -> float:
    """The largest difference between the array leaves of `a` and `b`, relative to
    the largest magnitude of each leaf of `b`."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(float(np.max(np.abs(y))), np.finfo(y.dtype).tiny)
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def median_ratio(times, key, base):
    return statistics.median(
        a / b for a, b in zip(times[key], times[base], strict=True)
    )


def machine_line() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
        f"Python {platform.python_version()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )


__all__ = [
    "euler_lif",
    "euler_spike_times",
    "alternate_children",
    "compile_then_run",
    "interleaved_timings",
    "base_package",
    "lif_reference",
    "machine_line",
    "write_section",
    "max_time_error",
    "median_ratio",
]


def write_section(name: str, text: str, path=None) -> None:
    """Replace (or append) the block between `<!-- name:start/end -->` markers."""
    path = path or os.path.join(ROOT, "bench", "RESULTS.md")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block_text = f"{start}\n{text.rstrip()}\n{end}\n"
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + block_text + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block_text
    with open(path, "w") as f:
        f.write(new)
