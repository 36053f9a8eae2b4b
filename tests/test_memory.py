"""`keep_freed_memory`: its argument checks, and, on glibc, that a block above
glibc's default mmap threshold then comes from the heap (in a fresh process each
way: the setting is the process's)."""

import platform
import subprocess
import sys

import pytest

import snode_jax as sj


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, True, "4096"])
def test_keep_freed_memory_rejects_a_bad_threshold(bad):
    with pytest.raises(ValueError, match="`threshold` must be an int") as info:
        sj.keep_freed_memory(bad)
    assert repr(bad) in str(info.value)


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
print(libc.mallinfo2().hblkhd - before)
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
    def mapped(mode):
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    # By default glibc maps a 64 MiB block from the kernel (fresh pages on every
    # allocation); once the setting is made it comes from the heap.
    assert mapped("default") >= 2**26
    assert mapped("keep") < 2**20


def test_keep_freed_memory_elsewhere_changes_nothing(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert sj.keep_freed_memory() is False
