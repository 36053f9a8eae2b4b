"""`single_kernel_loops`: its argument checks and the flag it appends to `XLA_FLAGS`;
and, in fresh processes (the setting is the process's, read when JAX's backend
starts), that it takes effect before the backend starts, that the library's loops
are then compiled into one kernel (none without it) with results that match the
closed form and SciPy, that its size limit holds, and that it changes nothing once
the backend has started or where `XLA_FLAGS` names a file."""

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
    [
        (0, ValueError),
        (2**16 - 1, ValueError),
        (2**63, ValueError),  # XLA reads an int64 (and would fail every compile)
        (1.5, TypeError),
        (True, TypeError),
    ],
)
def test_single_kernel_loops_rejects_a_bad_size(bad, error):
    before = os.environ.get("XLA_FLAGS")
    with pytest.raises(error, match="`max_bytes` must be") as info:
        sj.single_kernel_loops(bad)
    assert repr(bad) in str(info.value)
    assert os.environ.get("XLA_FLAGS") == before


@pytest.mark.parametrize(
    "flags",
    [
        "",
        "--xla_cpu_enable_fast_math=false",
        # Other extra options stay as they are, quoted or not; an earlier value of
        # this one is overridden by the last flag.
        '--xla_backend_extra_options="a,b" --xla_dump_to=/tmp/d',
        f"--xla_backend_extra_options=a=1,{_OPTION}=5",
    ],
)
def test_single_kernel_loops_appends_its_own_flag(flags):
    option = f"--xla_backend_extra_options={_OPTION}=65536"
    assert _with_option(flags, 2**16) == f"{flags} {option}".strip()


_CHILD = """
import json, os, sys
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import snode_jax as sj

mode = sys.argv[1]
out = {}
if mode in ("late", "late_probe"):
    jnp.ones(2).block_until_ready()  # the backend starts first
    if mode == "late_probe":  # as where JAX does not tell: the probe decides
        sj._loop_kernels._backend_started = lambda: False
    before = os.environ.get("XLA_FLAGS")
    out["on"] = sj.single_kernel_loops()
    out["unchanged"] = os.environ.get("XLA_FLAGS") == before
    print(json.dumps(out))
    sys.exit()
if mode == "file":
    before = os.environ.get("XLA_FLAGS")
    out["on"] = sj.single_kernel_loops()
    out["unchanged"] = os.environ.get("XLA_FLAGS") == before
    out["runs"] = float(jnp.sum(jnp.ones(3)))
    print(json.dumps(out))
    sys.exit()

def whole(f, *args):
    text = jax.jit(f).lower(*args).compile().as_text()
    return text.count('xla_cpu_small_call="true"')

def loop(x):
    def body(c, _):
        return jnp.where(c > 1, 0.0, c * 0.5 + 0.75), None
    return jax.lax.scan(body, x, None, length=8)[0]

if mode == "limit":
    out["on"] = sj.single_kernel_loops(2**16)
    # Loops of 16 KiB and of 1 MiB of float32 buffers.
    out["small"] = whole(loop, jnp.ones(4096, jnp.float32))
    out["large"] = whole(loop, jnp.ones(2**18, jnp.float32))
    print(json.dumps(out))
    sys.exit()

if mode == "on":
    out["on"] = sj.single_kernel_loops()
    out["flags"] = os.environ["XLA_FLAGS"]
    out["again"] = sj.single_kernel_loops()
    out["other"] = sj.single_kernel_loops(2**20)
# The exact LIF path, 256 neurons (its loops are over XLA's own 1 KiB limit).
layer = sj.SpikingODELayer(3, 256, key=jax.random.key(0), dtype=jnp.float64)
x = np.random.default_rng(0).uniform(0.0, 1.5, (40, 3))
run = lambda x: layer.simulate(x, 1.0, max_spikes=256)
out["whole"] = whole(run, x)
if mode == "on":
    sol = jax.jit(run)(x)
    out["weight"] = np.asarray(layer.weight).tolist()
    out["counts"] = np.asarray(sol.counts).tolist()
    out["times"] = np.where(np.isfinite(sol.spike_times), sol.spike_times, -1).tolist()
    # The adaptive path (Dopri5): one AdEx neuron.
    params = json.loads(sys.argv[2])
    adex = sj.SpikingODELayer(1, 1, sj.AdExDynamics(**params), key=jax.random.key(0),
                              rtol=1e-10, atol=1e-10, dtype=jnp.float64)
    adex = eqx.tree_at(lambda m: m.weight, adex, jnp.full((1, 1), 800.0))
    sol = adex.simulate(np.ones((4, 1)), 25.0, max_spikes=32)
    out["adex_ok"] = bool(sol.result == sj.RESULTS.successful)
    t = np.asarray(sol.spike_times[0])
    out["adex_times"] = t[np.isfinite(t)].tolist()
print(json.dumps(out))
"""


def _child(*args, flags=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags is not None:
        env["XLA_FLAGS"] = flags
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
    out = _child("on", json.dumps(ADEX))
    assert out["on"] is True
    assert out["flags"].endswith(f"{_OPTION}={2**40}")
    # A second call: the same setting is in effect, another is not.
    assert out["again"] is True
    assert out["other"] is False
    # Loops of `simulate` compiled into one kernel, where XLA by default compiles
    # none of them (the same program in a process without the setting).
    assert out["whole"] >= 1
    assert _child("off")["whole"] == 0

    weight = np.asarray(out["weight"])
    x = np.random.default_rng(0).uniform(0.0, 1.5, (40, 3))
    ref = lif_reference(weight, x, 1.0)
    assert ref.counts.sum() > 100
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


def test_single_kernel_loops_takes_its_size_limit():
    out = _child("limit")
    assert out == {"on": True, "small": 1, "large": 0}


@pytest.mark.parametrize("mode", ["late", "late_probe"])
@pytest.mark.parametrize("flags", [None, "--xla_cpu_enable_fast_math=false"])
def test_single_kernel_loops_changes_nothing_once_jax_runs(mode, flags):
    out = _child(mode, flags=flags)
    assert out == {"on": False, "unchanged": True}


def test_single_kernel_loops_leaves_a_file_of_flags_alone(tmp_path):
    # XLA_FLAGS naming a file: XLA reads the flags from it.
    path = tmp_path / "flags.txt"
    path.write_text("--xla_cpu_enable_fast_math=false\n")
    out = _child("file", flags=str(path))
    assert out == {"on": False, "unchanged": True, "runs": 3.0}
