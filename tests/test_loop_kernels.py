"""`single_kernel_loops`: its argument checks and how it merges `XLA_FLAGS`; and, in
fresh processes (the setting is the process's, read when JAX's backend starts),
that it takes effect before the first computation, that the library's loops are
then compiled into one kernel with results that match the closed form and SciPy,
and that it changes nothing once the backend has started."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import snode_jax as sj
from snode_jax._loop_kernels import _OPTION, _with_option

from .lif_reference import lif_reference
from .scipy_reference import adex_rhs, simulate_reference
from .test_models import ADEX


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (2**16 - 1, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_single_kernel_loops_rejects_a_bad_size(bad, error):
    before = os.environ.get("XLA_FLAGS")
    with pytest.raises(error, match="`max_bytes` must be") as info:
        sj.single_kernel_loops(bad)
    assert repr(bad) in str(info.value)
    assert os.environ.get("XLA_FLAGS") == before


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", f"--xla_backend_extra_options={_OPTION}=65536"),
        (
            "--xla_cpu_enable_fast_math=false",
            f"--xla_cpu_enable_fast_math=false --xla_backend_extra_options={_OPTION}"
            "=65536",
        ),
        # Other extra options stay; an earlier value of this one is replaced.
        (
            f"--xla_backend_extra_options=a=1,{_OPTION}=5,b=2 --xla_dump_to=/tmp/d",
            f"--xla_backend_extra_options=a=1,b=2,{_OPTION}=65536 --xla_dump_to=/tmp/d",
        ),
    ],
)
def test_single_kernel_loops_merges_xla_flags(flags, expected):
    assert _with_option(flags, 2**16) == expected


_CHILD = """
import json, os, sys
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import snode_jax as sj

if sys.argv[1] == "late":
    jnp.ones(2).block_until_ready()  # the backend starts first
    before = os.environ.get("XLA_FLAGS")
    on = sj.single_kernel_loops()
    print(json.dumps({"on": on, "unchanged": os.environ.get("XLA_FLAGS") == before}))
    sys.exit()

on = sj.single_kernel_loops()
out = {"on": on, "flags": os.environ["XLA_FLAGS"]}
# The exact LIF path.
layer = sj.SpikingODELayer(3, 5, key=jax.random.key(0), dtype=jnp.float64)
x = np.random.default_rng(0).uniform(0.0, 1.5, (40, 3))
run = jax.jit(lambda x: layer.simulate(x, 1.0, max_spikes=256))
text = run.lower(x).compile().as_text()
out["whole"] = text.count('xla_cpu_small_call="true"')
sol = run(x)
out["weight"] = np.asarray(layer.weight).tolist()
out["counts"] = np.asarray(sol.counts).tolist()
out["times"] = np.where(np.isfinite(sol.spike_times), sol.spike_times, -1).tolist()
# The adaptive path (Dopri5): one AdEx neuron.
params = json.loads(sys.argv[2])
adex = sj.SpikingODELayer(1, 1, sj.AdExDynamics(**params), key=jax.random.key(0),
                          rtol=1e-10, atol=1e-10)
adex = eqx.tree_at(lambda m: m.weight, adex, jnp.full((1, 1), 800.0))
sol = adex.simulate(np.ones((4, 1)), 25.0, max_spikes=32)
out["adex_ok"] = bool(sol.result == sj.RESULTS.successful)
t = np.asarray(sol.spike_times[0])
out["adex_times"] = t[np.isfinite(t)].tolist()
print(json.dumps(out))
"""


def _child(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_single_kernel_loops_compiles_the_loops_whole():
    out = _child("early", json.dumps(ADEX))
    assert out["on"] is True
    assert f"{_OPTION}={2**40}" in out["flags"]
    # The interval scan and the walk's loops, each compiled into one kernel.
    assert out["whole"] >= 1
    weight = np.asarray(out["weight"])
    x = np.random.default_rng(0).uniform(0.0, 1.5, (40, 3))
    ref = lif_reference(weight, x, 1.0)
    assert ref.counts.sum() > 10
    np.testing.assert_array_equal(np.asarray(out["counts"]), ref.counts)
    times = np.asarray(out["times"])
    expected = ref.padded_times(256)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(times >= 0, finite)
    # float64 closed forms of the same times, over 40 ms.
    np.testing.assert_allclose(times[finite], expected[finite], rtol=0, atol=1e-10)

    assert out["adex_ok"]
    ref_times, _ = simulate_reference(
        *adex_rhs(ADEX), [ADEX["E_L"], 0.0], [800.0] * 4, 25.0
    )
    assert len(ref_times) >= 3
    assert len(out["adex_times"]) == len(ref_times)
    # rtol = atol = 1e-10 against DOP853 at 1e-12.
    np.testing.assert_allclose(out["adex_times"], ref_times, rtol=0, atol=1e-6)


def test_single_kernel_loops_changes_nothing_once_jax_runs():
    out = _child("late")
    assert out == {"on": False, "unchanged": True}
