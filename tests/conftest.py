"""Shared fixtures. Float64 is enabled at import, before any test builds an array."""

import itertools
import os
import pathlib
import shutil
import sys
import tempfile

# XLA's backend (LLVM) optimisations are off for the tests, and for the examples
# and command lines they run in subprocesses: compiling is most of the suite's
# time, and these programs run briefly. Results differ from optimised code by
# rounding only (measured: 1e-7 relative in float32 and 2e-16 in float64 on the
# closed-form LIF, 1e-11 on adaptive steps), which every tolerance here allows for.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU fusion emitters are off as well: the older emitters compile these
# loop-heavy programs in about 60 % of the time (measured: test_network.py and
# test_gradients.py, 144 s -> 82 s on 2 cores; one AdEx gradient, 9.0 s -> 6.0 s)
# and give the same gradients to the last bit there; the programs run ~1.5x slower.
# A `xla_cpu_use_fusion_emitters` already in `XLA_FLAGS` is kept:
# `JAX_DISABLE_MOST_OPTIMIZATIONS=0 XLA_FLAGS=--xla_cpu_use_fusion_emitters=true`
# tests the programs as users compile them.
# XLA's CPU compiler splits each program's machine code into 32 parts compiled in
# parallel; here it makes one. At optimisation level 0 with the older emitters,
# some CubaLIF programs compiled in 32 parts gave wrong results (the cause is not
# known) after edits of `_cuba.py` that changed no value (checked on 100,000
# random arguments): spike times off by up to 1.2 ms, a threshold search returning
# its first iterate; which tests failed moved with each edit and with an added
# `jax.debug.print`. One part
# (or up to 8), optimisation level 1, the fusion emitters, or code limited to SSE4.2
# each compiled them right, and optimised code passed every test. One part costs
# nothing here, where the xdist workers already keep both cores busy (measured on 2
# cores: test_network.py and test_gradients.py 81 s against 86 s in 32 parts; the
# whole suite 499 s, against 537-575 s); level 1 would have cost 1.3x (114 s), the
# fusion emitters ~1.9x. An `xla_cpu_parallel_codegen_split_count` already in
# `XLA_FLAGS` is kept.
_FLAGS = {
    "xla_cpu_use_fusion_emitters": "false",
    "xla_cpu_parallel_codegen_split_count": "1",
}
_given = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_given] + [f"--{k}={v}" for k, v in _FLAGS.items() if k not in _given]
).strip()

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Property tests: few, small, reproducible examples and no per-example deadline (the
# first example of a new shape pays for compilation). HYPOTHESIS_PROFILE=thorough
# runs more.
settings.register_profile(
    "snode", max_examples=12, deadline=None, derandomize=True, database=None
)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "snode"))

_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """Compiled programs go to a persistent cache in a temporary directory for
    this run, shared by the xdist workers, every test module (the compiled
    functions are dropped after each, see below) and the examples the tests run in
    subprocesses: a program compiled again (another worker, another test building
    the same function) is loaded instead of compiled. Every program is cached, the
    smallest too: about half the suite's ~4400 compilations are the same small
    programs again (a `jnp` operation run outside `jit` on a shape seen before, in
    another module or worker), and loading them beats compiling them (measured:
    test_properties, test_gradients, test_errors and test_reliability with `-n 2`,
    92-97 s with a 0.2 s minimum, 78-83 s without). Set `JAX_COMPILATION_CACHE_DIR`
    to keep a cache of your own."""
    if _CACHE not in os.environ:
        os.environ[_CACHE] = tempfile.mkdtemp(prefix="snode-jax-test-cache-")
        config._snode_owns_cache = True  # removed at the end by this process
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def pytest_unconfigure(config):
    if getattr(config, "_snode_owns_cache", False):
        shutil.rmtree(os.environ.pop(_CACHE), ignore_errors=True)


@pytest.fixture
def getkey():
    """A function returning a fresh PRNG key on every call (deterministic per test)."""
    counter = itertools.count()
    base = jax.random.key(5678)

    def _getkey():
        return jax.random.fold_in(base, next(counter))

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled functions after each test module. Every executable holds
    memory mappings of its machine code; one process that runs the whole suite
    would otherwise pass the kernel's limit on mappings (vm.max_map_count, 65530)
    and abort inside XLA's compiler."""
    yield
    jax.clear_caches()


def pytest_collection_modifyitems(config, items):
    """Under `pytest-xdist --dist loadgroup` (see `[tool.pytest.ini_options]`), the
    tests of one module that use a module-scoped fixture of it (a compiled loss, a
    reference run) go to one worker, which builds the fixture once; every other test
    is scheduled on its own."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        if defs is None:
            continue
        module = item.nodeid.split("::")[0]
        if any(
            d.scope == "module" and d.baseid == module
            for name in item.fixturenames
            for d in defs.name2fixturedefs.get(name, ())
        ):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
