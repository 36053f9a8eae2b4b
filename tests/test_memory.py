"""`keep_freed_memory`: its argument checks, and, on glibc, that a block above
glibc's default mmap threshold then comes from the heap and stays there once freed
(in a fresh process each way: the setting is the process's)."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import snode_jax as sj


@pytest.mark.parametrize(
    "bad, error",
    [
        (0, ValueError),
        (-1, ValueError),
        (2**31, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("4096", TypeError),
        (None, TypeError),
    ],
)
def test_keep_freed_memory_rejects_a_bad_threshold(bad, error):
    with pytest.raises(error, match="`threshold` must be") as info:
        sj.keep_freed_memory(bad)
    assert repr(bad) in str(info.value)


def test_keep_freed_memory_takes_a_numpy_int(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # (changes nothing)
    assert sj.keep_freed_memory(np.int64(2**20)) is False


_MAPPED = """
import ctypes, sys
import numpy as np
import snode_jax as sj

class Info(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
            "keepcost"
        ).split()
    ]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert sj.keep_freed_memory() is True
before = libc.mallinfo2().hblkhd
block = np.ones(2**23)  # 64 MiB
mapped = libc.mallinfo2().hblkhd - before
del block
print(mapped, libc.mallinfo2().arena)
"""


def _glibc_with_mallinfo2():
    name, version = platform.libc_ver()
    if name != "glibc" or not sys.platform.startswith("linux"):
        return False
    major, minor = (int(p) for p in version.split(".")[:2])
    return (major, minor) >= (2, 33)


@pytest.mark.skipif(
    not _glibc_with_mallinfo2(), reason="glibc 2.33 or newer only (mallinfo2)"
)
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    # glibc's own environment settings would change the default.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }

    def run(mode):
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED, mode],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        mapped, heap = out.stdout.split()[-2:]
        return int(mapped), int(heap)

    # By default glibc maps a 64 MiB block from the kernel (fresh pages on every
    # allocation) and unmaps it when it is freed; once the setting is made, the
    # block comes from the heap, which keeps it after it is freed (the trim
    # threshold), for the next allocation.
    mapped, heap = run("default")
    assert mapped >= 2**26 and heap < 2**26
    mapped, heap = run("keep")
    assert mapped < 2**20 and heap >= 2**26


def test_keep_freed_memory_elsewhere_changes_nothing(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert sj.keep_freed_memory() is False
