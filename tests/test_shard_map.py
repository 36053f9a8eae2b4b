"""Runs inside `jax.shard_map` with its default `check_vma=True`: every loop carry
varies over the mesh axes as the inputs do, custom derivative rules return
cotangents typed like their primals, and no collective sits inside a loop or branch
(whose trip counts and choices can differ from device to device: such a collective
would wait forever for the devices that left the loop).

A one-device mesh: the varying-axis types are checked at trace time whatever the
mesh size."""

import json
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import snode_jax as sj

from .lif_reference import lif_reference

B, T, NI, N = 2, 6, 3, 4
INTERVAL = 1.0
T_END = 12.0


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.asarray(jax.devices()[:1]), ("b",))


@pytest.fixture(scope="module")
def data():
    k = jax.random.split(jax.random.key(3), 6)
    x = jax.random.uniform(k[0], (B, T, NI), jnp.float64, 0.0, 1.5)
    times = jax.random.uniform(k[1], (B, 5), jnp.float64, 0.0, T_END)
    sources = jax.random.randint(k[2], (B, 5), 0, NI)
    lif = sj.SpikingODELayer(NI, N, dtype=jnp.float64, key=k[3])
    lif = eqx.tree_at(lambda m: m.weight, lif, jnp.abs(lif.weight) * 0.5)
    return x, times, sources, lif, k[4]


def _time_loss(sol):
    t = sol.spike_times
    return jnp.sum(jnp.where(jnp.isfinite(t), jnp.exp(-t / 50.0), 0.0))


def _cases(data):
    """name -> (function of the sharded arrays, which arrays)."""
    x, times, sources, lif, key = data
    adex = sj.SpikingODELayer(NI, N, sj.AdExDynamics(), dtype=jnp.float64, key=key)
    adex = eqx.tree_at(lambda m: m.weight, adex, jnp.abs(adex.weight) * 300.0)
    refractory = eqx.tree_at(lambda m: m.dynamics, lif, sj.ODELIFDynamics(t_ref=1.0))
    recurrent = sj.SpikingODELayer(
        NI, N, sj.CubaLIFDynamics(), recurrent=True, delay=0.5, key=key
    )
    net = sj.SpikingODENetwork([lif, sj.LeakyReadout(N, 2, key=key)])

    def train(t, s):
        return sj.SpikeTrain(t, s)

    per_sample = lambda f: lambda *a: jax.vmap(f)(*a)
    grad_w = lambda loss, layer: eqx.filter_grad(loss)(layer).weight
    return {
        # The closed-form walk, its slot times and the closed-form tangents'
        # primitive (per-sample gradients: the primitive folded under `vmap`).
        "lif": (
            per_sample(
                lambda xi: grad_w(
                    lambda m: _time_loss(m.simulate(xi, INTERVAL, max_spikes=16)), lif
                )
            ),
            "dense",
        ),
        # The refractory walk and the run split at save times.
        "refractory save_times": (
            per_sample(
                lambda xi: (
                    refractory.simulate(
                        xi, INTERVAL, max_spikes=16, save_times=jnp.array([0.5, 2.5])
                    ).saved_states.v
                )
            ),
            "dense",
        ),
        # The derivative of a run split at save times (its pieces hold no spike
        # buffer).
        "save_times gradient": (
            per_sample(
                lambda xi: grad_w(
                    lambda m: jnp.sum(
                        m.simulate(
                            xi, INTERVAL, save_times=jnp.array([0.5, 2.5, 4.0])
                        ).saved_states.v
                    ),
                    lif,
                )
            ),
            "dense",
        ),
        # The adaptive loop, its crossing search and its rerun adjoint (a gradient
        # of a batch, so JAX batches the custom VJP).
        "adex": (
            lambda xb: grad_w(
                lambda m: jnp.sum(
                    jax.vmap(
                        lambda xi: _time_loss(m.simulate(xi, INTERVAL, max_spikes=16))
                    )(xb)
                ),
                adex,
            )[None],
            "dense",
        ),
        # The feed-forward event engine and its replay gradient.
        "events": (
            per_sample(
                lambda t, s: grad_w(
                    lambda m: _time_loss(
                        m.simulate(train(t, s), t_end=T_END, max_spikes=16)
                    ),
                    lif,
                )
            ),
            "events",
        ),
        # Event-driven, with save times.
        "events save_times": (
            per_sample(
                lambda t, s: (
                    lif.simulate(
                        train(t, s),
                        t_end=T_END,
                        max_spikes=16,
                        save_times=jnp.array([2.0, 5.0]),
                    ).saved_states.v
                )
            ),
            "events",
        ),
        # The recurrent event engine and its checkpointed loop's gradient.
        "recurrent events": (
            per_sample(
                lambda t, s: (
                    recurrent.simulate(
                        train(t, s), t_end=T_END, max_spikes=16
                    ).spike_times
                )
            ),
            "events",
        ),
        "recurrent events gradient": (
            per_sample(
                lambda t, s: (
                    eqx.filter_grad(
                        lambda m: _time_loss(
                            m.simulate(train(t, s), t_end=T_END, max_spikes=16)
                        )
                    )(recurrent).recurrent_weight
                )
            ),
            "events",
        ),
        # A network with a readout, differentiated.
        "network": (
            per_sample(
                lambda t, s: (
                    eqx.filter_grad(
                        lambda n: jnp.sum(
                            n.simulate(train(t, s), t_end=T_END).output.max_voltage
                        )
                    )(net)
                    .layers[0]
                    .weight
                )
            ),
            "events",
        ),
    }


CASES = [
    "lif",
    "refractory save_times",
    "save_times gradient",
    "adex",
    "events",
    "events save_times",
    "recurrent events",
    "recurrent events gradient",
    "network",
]


_COLLECTIVES = ("psum", "pmax", "pmin", "ppermute", "all_gather", "all_to_all")


def _is_collective(eqn) -> bool:
    return any(c in eqn.primitive.name for c in _COLLECTIVES)


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for s in v if isinstance(v, (list, tuple)) else [v]:
            j = getattr(s, "jaxpr", s)
            if hasattr(j, "eqns"):
                yield j


def _unsynchronised_collectives(jaxpr, inside=False) -> int:
    """Collectives inside a while loop or a branch (whose trip counts and choices
    may differ between devices)."""
    found = 0
    for eqn in jaxpr.eqns:
        found += inside and _is_collective(eqn)
        here = inside or eqn.primitive.name in ("while", "cond")
        for j in _subjaxprs(eqn):
            found += _unsynchronised_collectives(j, here)
    return found


@pytest.mark.parametrize("name", CASES)
def test_traces_with_varying_axis_checks(mesh, data, name):
    x, times, sources, *_ = data
    f, kind = _cases(data)[name]
    args = (x,) if kind == "dense" else (times, sources)
    specs = tuple(P("b") for _ in args)
    sharded = jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=P("b"))
    jaxpr = jax.make_jaxpr(sharded)(*args)
    assert _unsynchronised_collectives(jaxpr.jaxpr) == 0


def test_unsynchronised_collective_check_can_fail(mesh):
    # The check above finds a collective in a loop of per-device length.
    def f(x):
        def body(c):
            i, v = c
            return i + 1, v + jax.lax.psum(v, "b")

        return jax.lax.while_loop(lambda c: c[0] < x[0], body, (x[0] * 0, x))[1]

    sharded = jax.shard_map(f, mesh=mesh, in_specs=P("b"), out_specs=P("b"))
    jaxpr = jax.make_jaxpr(sharded)(jnp.arange(2.0))
    assert _unsynchronised_collectives(jaxpr.jaxpr) == 1


def test_sharded_run_matches_closed_form_and_unsharded_gradient(mesh, data):
    x, times, sources, lif, _ = data
    f, _ = _cases(data)["lif"]

    def both(xb):
        sims = jax.vmap(lambda xi: lif.simulate(xi, INTERVAL, max_spikes=16))(xb)
        return sims.counts, sims.spike_times, f(xb)

    sharded = jax.shard_map(both, mesh=mesh, in_specs=P("b"), out_specs=P("b"))
    counts, spike_times, grads = jax.jit(sharded)(x)
    assert int(jnp.sum(counts)) > 0
    for b in range(B):
        ref = lif_reference(lif.weight, np.asarray(x[b]), INTERVAL)
        np.testing.assert_array_equal(np.asarray(counts[b]), ref.counts)
        # Spike times to float64 rounding of times of ~10 ms.
        np.testing.assert_allclose(
            np.asarray(spike_times[b]), ref.padded_times(16), rtol=0, atol=1e-12
        )
    # With one device the gradient of a closed-over (replicated) layer is that of
    # the unsharded program; on several, the sum over devices.
    np.testing.assert_allclose(grads, jax.jit(f)(x), rtol=1e-12, atol=1e-14)


def test_two_devices_match_unsharded():
    """On two (forced host) devices, in a subprocess (`two_devices.py`): gradients
    of a replicated layer are the sum of the devices' (a missing or repeated sum
    over devices is off by a factor of 2); a run whose loop stops early on one
    device only gives each device's unsharded status, counts and times; and an error on
    one device raises on both (else the process aborts, the other device waiting
    in a collective)."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2".strip(),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
    )
    script = pathlib.Path(__file__).with_name("two_devices.py")
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for name in ("dense lif", "dense adex", "events cuba", "events recurrent"):
        grad = out[f"grad {name}"]
        assert grad["finite"] and grad["norm"] > 0, (name, grad)
        # Float64 sums in another order (the adaptive steps' included); a wrong
        # number of sums over the devices is off by O(1).
        assert grad["rel_err"] < 1e-10, (name, grad)
    stopped = out["stopped run"]
    buffer_full = int(sj.RESULTS.spike_buffer_full._value)
    assert stopped["want_results"] == [0, 0, buffer_full, buffer_full]
    assert stopped["results"] == stopped["want_results"]
    assert stopped["spikes"] > 0
    assert stopped["counts_equal"] and stopped["times_equal"]
    assert out["raised"] is not None
    assert "More spikes occurred than fit in the spike buffer" in out["raised"]
