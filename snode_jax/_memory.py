"""An opt-in setting of the C library's allocator for batched gradients on Linux."""

import ctypes
import ctypes.util
import platform
import sys

from ._checks import check_positive_int

# `mallopt` parameters of glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# `mallopt` takes a C int.
_MAX_THRESHOLD = 2**31 - 1


def keep_freed_memory(threshold: int = _MAX_THRESHOLD) -> bool:
    """Make glibc's `malloc` keep the memory that XLA frees, for the next call to
    reuse, instead of returning it to the system.

    XLA allocates the temporaries of a compiled program anew at every call and frees
    them afterwards. glibc serves a block over 32 MiB (the most its own threshold
    grows to) with fresh pages from the kernel each time and returns them when it is
    freed, so the program's first touch of every page is a page fault. Batched
    gradients hold far more than that (123 MiB at 64 samples x 256 neurons x 100
    intervals in float32). In an A/B of an earlier version on a 2-core x86 machine
    (`bench/bench_grad_ab.py`, `bench/RESULTS.md`), the value and gradient of a
    spike-time loss over 1600 intervals of 256 neurons took 62 % (float32) and 64 %
    (float64) of its time with glibc keeping freed memory (the same setting,
    through glibc's environment variables); gradients now hold less there.

    Sets glibc's trim threshold to `threshold` bytes (freed memory at the top of the
    heap is kept, up to that much) and its mmap threshold to the same (smaller blocks
    come from the heap, where freed memory is reused). Blocks of `threshold` bytes or
    more (at most 2 GiB: `mallopt` takes a C int) are still mapped freshly; the
    environment variables `MALLOC_TRIM_THRESHOLD_` and `MALLOC_MMAP_THRESHOLD_`, set
    before the process starts, do the same without that cap. It applies to the whole
    process from this call on, and the process then keeps its peak memory rather
    than giving it back. Nothing in this library calls it: call it once at the start
    of a training script.

    **Arguments:**

    - `threshold`: bytes, an int from 1 to `2**31 - 1` (the default).

    **Returns:**

    True if both settings were made. False where the C library is not glibc (nothing
    changed), or where glibc refused a setting (some releases cap the mmap threshold
    at 32 MiB; the trim threshold is then set, the mmap one not).

    **Raises:**

    `TypeError` for a `threshold` that is not an int, `ValueError` for one outside
    that range.
    """
    threshold = check_positive_int("threshold", threshold)
    if threshold > _MAX_THRESHOLD:
        raise ValueError(
            f"`threshold` must be at most 2**31 - 1 bytes (a C int), got {threshold!r}."
        )
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trim = bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and trim
