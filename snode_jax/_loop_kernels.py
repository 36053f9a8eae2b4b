"""An opt-in setting of XLA's CPU backend: while loops compiled into one kernel."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_positive_int

_OPTION = "xla_cpu_small_while_loop_byte_threshold"
# The probe loop's buffers (float32, 4 KiB): above XLA's own limit of 1 KiB, below
# the smallest `max_bytes` accepted.
_PROBE_LENGTH = 1024
_MIN_BYTES = 2**16
# XLA reads the limit as an int64.
_MAX_BYTES = 2**63 - 1

# The `max_bytes` this process's backend started with, once set here.
_applied: int | None = None


def _with_option(flags: str, max_bytes: int) -> str:
    """`flags` (the value of `XLA_FLAGS`) with the loop option set to `max_bytes`:
    in a `--xla_backend_extra_options` flag of its own at the end (XLA merges the
    options of every such flag, the last value of an option winning; the others'
    are left as they are, quoted or not)."""
    return f"{flags} --xla_backend_extra_options={_OPTION}={max_bytes}".strip()


def _backend_started() -> bool:
    """Whether JAX has started its backends (and XLA read its flags), where this
    version of JAX tells; otherwise False (the probe then decides)."""
    try:
        from jax._src import xla_bridge
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if callable(started) else False


def _loops_compiled_whole() -> bool:
    """Whether XLA's CPU backend compiles a while loop of 4 KiB of buffers into one
    kernel (XLA marks such a loop as a call `xla_cpu_small_call`)."""

    def loop(x):
        def body(c, _):
            return jnp.where(c > 1, 0.0, c * 0.5 + 0.75), None

        return jax.lax.scan(body, x, None, length=8)[0]

    # (Under `jax.disable_jit` the scan would be unrolled: no loop to look at.)
    with jax.disable_jit(False):
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
    that limit to `max_bytes`, by appending
    `--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=<max_bytes>`
    to the environment variable `XLA_FLAGS` (XLA merges it with the extra options
    already there; the same can be set by hand before the process starts). On a
    2-core x86 machine (`bench/bench_loop_kernels.py`, `bench/RESULTS.md`) the
    exact LIF layer's `forward` took 0.84x its time at 64 x 256 neurons x 100
    intervals (float32 and float64; at 1 x 16 neurons within the noise between
    processes, whose medians and ratios there disagree), and the gradient programs
    of `bench/bench_grad.py` compiled in 0.92x (exact LIF) and 0.93x (AdEx) the
    time and ran as fast as before. `simulate` ran as fast as before: its interval
    loop holds a scatter (see below) and is not compiled whole, only the loops
    inside it are. Results are the same up to rounding (in the cases compared,
    spike times, counts and states to the bit, AdEx gradients with respect to the
    model's parameters to 1e-15 relative): only how the kernels are compiled and
    dispatched changes.

    XLA does not compile a loop whole where it holds an operation its single-kernel
    path lacks (a scatter, for one); that loop runs as before. A loop compiled whole
    runs on one thread, where its kernels could otherwise split the largest arrays
    between threads: with many thousands of neurons per call, measure both ways
    (`max_bytes` keeps the largest loops as they were).

    It applies to the whole process, and only if called before anything starts
    JAX's backend there (creating an array, querying the devices, lowering or
    compiling a function: XLA reads `XLA_FLAGS` then): call it at the start of a
    script, after the imports. Nothing in this library calls it.

    **Arguments:**

    - `max_bytes`: the largest loop (bytes of the buffers it reads and writes) to
        compile whole, an int from 2**16 to 2**63 - 1 (the default, 2**40: any
        loop).

    **Returns:**

    True if XLA now compiles loops whole (checked by compiling a small loop), or
    if an earlier call with the same `max_bytes` made it so. False, with
    `XLA_FLAGS` left as it was, if JAX's backend had already started (after an
    earlier call with another `max_bytes` too), or if `XLA_FLAGS` names a file of
    flags (add the option there).

    **Raises:**

    `TypeError` for a `max_bytes` that is not an int, `ValueError` for one out of
    that range.
    """
    global _applied
    max_bytes = check_positive_int("max_bytes", max_bytes)
    if not _MIN_BYTES <= max_bytes <= _MAX_BYTES:
        raise ValueError(
            f"`max_bytes` must be at least 2**16 and at most 2**63 - 1, got "
            f"{max_bytes!r}."
        )
    if _applied is not None or _backend_started():
        # XLA has read its flags: only a setting made here before can be in effect.
        return _applied == max_bytes
    before = os.environ.get("XLA_FLAGS")
    if before is not None and before.strip() and not before.lstrip().startswith("-"):
        # XLA reads the flags from the file this names.
        return False
    os.environ["XLA_FLAGS"] = _with_option(before or "", max_bytes)
    whole = False
    try:
        whole = _loops_compiled_whole()
    finally:
        if whole:
            _applied = max_bytes
        elif before is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = before
    return whole
