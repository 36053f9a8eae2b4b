"""An opt-in setting of XLA's CPU backend: while loops compiled into one kernel."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from ._misc import check_positive_int

_OPTION = "xla_cpu_small_while_loop_byte_threshold"
_EXTRA = "--xla_backend_extra_options"
# XLA's own limit: loops whose buffers take at most this many bytes.
_XLA_DEFAULT = 1024
# The probe loop's buffers (float32): above XLA's limit, at most the smallest
# `max_bytes` accepted.
_PROBE_LENGTH = 1024
_MIN_BYTES = 2**16


def _with_option(flags: str, max_bytes: int) -> str:
    """`flags` (the value of `XLA_FLAGS`) with the loop option set to `max_bytes`,
    kept inside an existing `--xla_backend_extra_options` (whose other options
    stay; a second occurrence of the flag would replace the first)."""
    setting = f"{_OPTION}={max_bytes}"
    pattern = re.compile(re.escape(_EXTRA) + r"=(\S*)")
    match = pattern.search(flags)
    if match is None:
        return f"{flags} {_EXTRA}={setting}".strip()
    options = [o for o in match.group(1).split(",") if o and not o.startswith(_OPTION)]
    value = ",".join(options + [setting])
    return flags[: match.start()] + f"{_EXTRA}={value}" + flags[match.end() :]


def _loops_compiled_whole() -> bool:
    """Whether XLA's CPU backend compiles a while loop of 4 KiB of buffers into one
    kernel (XLA marks such a loop as a call `xla_cpu_small_call`)."""

    def loop(x):
        def body(c, _):
            return jnp.where(c > 1, 0.0, c * 0.5 + 0.75), None

        return jax.lax.scan(body, x, None, length=8)[0]

    x = jax.device_put(np.ones(_PROBE_LENGTH, np.float32), jax.devices("cpu")[0])
    text = jax.jit(loop).lower(x).compile().as_text() or ""
    return 'xla_cpu_small_call="true"' in text


def single_kernel_loops(max_bytes: int = 2**40) -> bool:
    """Make XLA's CPU backend compile each while loop whose buffers take at most
    `max_bytes` bytes into one kernel, instead of running its body kernel by kernel.

    XLA:CPU runs a compiled program as a sequence of kernels, and a loop's body
    kernel after kernel on every iteration, each dispatched on its own. The
    simulations here are loops (over intervals, solver steps, spikes) whose
    bodies hold a dozen kernels or more over arrays of one value per neuron, so
    that dispatch is a large part of their time. XLA can compile a whole loop into
    one kernel, and does so for loops of at most 1 KiB of buffers; this raises
    that limit to `max_bytes`, by adding
    `--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=<max_bytes>`
    to the environment variable `XLA_FLAGS` (inside the `--xla_backend_extra_options`
    already there, if any; the same can be set by hand before the process starts).
    On a 2-core x86 machine (`bench/bench_loop_kernels.py`, `bench/RESULTS.md`)
    the exact LIF layer's `forward` took 0.84x its time at 64 x 256 neurons x 100
    intervals (float32 and float64) and 0.72-0.84x at 1 x 16 neurons, and the
    gradient programs of `bench/bench_grad.py` compiled in 0.92x (exact LIF) and
    0.93x (AdEx) the time, running as fast as before; `simulate`, whose interval
    loop holds a scatter (see below), ran as before. Results are the same up to
    rounding: only how the kernels are compiled and dispatched changes.

    XLA does not compile a loop whole where it holds an operation its single-kernel
    path lacks (a scatter, for one); that loop runs as before. A loop compiled whole
    runs on one thread, where its kernels could otherwise split the largest arrays
    between threads: with many thousands of neurons per call, measure both ways
    (`max_bytes` keeps the largest loops as they were).

    It applies to the whole process, and only if called before JAX's first
    computation there (XLA reads `XLA_FLAGS` when its CPU backend starts): call it
    at the start of a script. Nothing in this library calls it.

    **Arguments:**

    - `max_bytes`: the largest loop (bytes of the buffers it reads and writes) to
        compile whole, an int of at least 2**16 (the default: any loop).

    **Returns:**

    True if XLA now compiles loops whole (checked by compiling a small loop). False
    if JAX's CPU backend had already started with other settings: `XLA_FLAGS` is
    then left as it was.

    **Raises:**

    `TypeError` for a `max_bytes` that is not an int, `ValueError` for one below
    2**16.
    """
    max_bytes = check_positive_int("max_bytes", max_bytes)
    if max_bytes < _MIN_BYTES:
        raise ValueError(f"`max_bytes` must be at least 2**16, got {max_bytes!r}.")
    before = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = _with_option(before or "", max_bytes)
    if _loops_compiled_whole():
        return True
    if before is None:
        del os.environ["XLA_FLAGS"]
    else:
        os.environ["XLA_FLAGS"] = before
    return False
