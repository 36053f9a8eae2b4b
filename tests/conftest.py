"""Shared fixtures. Float64 is enabled at import, before any test builds an array."""

import itertools
import os
import pathlib
import sys

import jax
import pytest
from hypothesis import settings

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
