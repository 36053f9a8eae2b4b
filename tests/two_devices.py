"""Runs under `jax.shard_map` on a mesh of two (forced host) devices, each given
other samples, and prints, as JSON, how each run compares with the same program
unsharded. Run by `test_shard_map.py` in a subprocess: the device count is fixed
when JAX starts.

- Gradients of a replicated layer over a sharded batch: the sum of the per-device
  gradients, which the custom derivative rules return summed over devices once.
- An event-driven run that stops early (spike buffer full, `throw=False`) on one
  device only, while the other runs to the end: each device's results (status,
  counts, times) equal the same samples' unsharded run.
- The same with `throw=True`: every device raises, rather than one raising and the
  other waiting for it in a collective."""

import json
import os
import sys

assert "xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", "")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

import snode_jax as sj  # noqa: E402

NI, N, T_END = 3, 4, 12.0
mesh = Mesh(np.asarray(jax.devices()[:2]), ("b",))
k = jax.random.split(jax.random.key(5), 6)
# Four samples, two per device.
x = jax.random.uniform(k[0], (4, 8, NI), jnp.float64, 0.0, 1.5)
times = jnp.sort(jax.random.uniform(k[1], (4, 6), jnp.float64, 0.0, T_END), axis=1)
sources = jax.random.randint(k[2], (4, 6), 0, NI)
lif = sj.SpikingODELayer(NI, N, dtype=jnp.float64, key=k[3])
lif = eqx.tree_at(lambda m: m.weight, lif, jnp.abs(lif.weight))
# Input spikes: a synaptic current, so that spike times move with the weights.
cuba = sj.SpikingODELayer(NI, N, sj.CubaLIFDynamics(), dtype=jnp.float64, key=k[3])
cuba = eqx.tree_at(lambda m: m.weight, cuba, jnp.abs(cuba.weight))
recurrent = sj.SpikingODELayer(
    NI, N, sj.CubaLIFDynamics(), recurrent=True, delay=0.5, dtype=jnp.float64, key=k[3]
)
recurrent = eqx.tree_at(
    lambda m: (m.weight, m.recurrent_weight),
    recurrent,
    (jnp.abs(recurrent.weight), 0.2 * recurrent.recurrent_weight),
)
adex = sj.SpikingODELayer(NI, N, sj.AdExDynamics(), dtype=jnp.float64, key=k[4])
adex = eqx.tree_at(lambda m: m.weight, adex, jnp.abs(adex.weight) * 3000.0)


def time_loss(sol):
    t = sol.spike_times
    return jnp.sum(jnp.where(jnp.isfinite(t), jnp.exp(-t / 50.0), 0.0))


def batch_grad(layer, loss):
    """The gradient of a loss summed over the (local) batch, as a list of arrays:
    the weights' and the neuron parameters' (these reach the custom derivative
    rules as they are, the weights through the currents)."""
    return lambda *a: jax.tree.leaves(
        eqx.filter(
            eqx.filter_grad(lambda m: jnp.sum(jax.vmap(lambda *s: loss(m, *s))(*a)))(
                layer
            ),
            eqx.is_inexact_array,
        )
    )


def sharded(f, n_args, out_specs):
    specs = tuple(P("b") for _ in range(n_args))
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=out_specs))


def rel_err(got, want):
    """The largest error over the arrays, each relative to its largest entry."""
    errs = [0.0]
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if np.any(b != 0):
            errs.append(float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
        else:
            errs.append(float(np.max(np.abs(a))))
    return max(errs)


out = {}

# -- gradients of a replicated layer: the devices' sum (out_specs=P(): replicated)
grads = {
    "dense lif": (
        batch_grad(lif, lambda m, xi: time_loss(m.simulate(xi, 1.0, 64))),
        (x,),
    ),
    "dense adex": (
        batch_grad(adex, lambda m, xi: time_loss(m.simulate(xi, 1.0, 64))),
        (x,),
    ),
    "events cuba": (
        batch_grad(
            cuba,
            lambda m, t, s: time_loss(
                m.simulate(sj.SpikeTrain(t, s), t_end=T_END, max_spikes=64)
            ),
        ),
        (times, sources),
    ),
    # The recurrent engine's checkpointed loop, whose iterations differ per device.
    "events recurrent": (
        batch_grad(
            recurrent,
            lambda m, t, s: time_loss(
                m.simulate(sj.SpikeTrain(t, s), t_end=T_END, max_spikes=64)
            ),
        ),
        (times, sources),
    ),
}
for name, (f, args) in grads.items():
    got = sharded(f, len(args), P())(*args)
    want = jax.jit(f)(*args)
    out[f"grad {name}"] = {
        "rel_err": rel_err(got, want),
        "norm": sum(float(jnp.abs(w).sum()) for w in want),
        "finite": all(bool(np.all(np.isfinite(g))) for g in got),
        "leaves": len(want),
    }

# -- a run that stops early on one device (its buffer full), and not on the other
quiet = jnp.full_like(times[:2], jnp.inf)  # device 0: no input
busy = jnp.stack([jnp.linspace(0.5, 8.0, 6)] * 2)  # device 1: drives every neuron
stop_times = jnp.concatenate([quiet, busy])
stop_sources = jnp.zeros_like(sources)
strong = eqx.tree_at(lambda m: m.weight, lif, jnp.full((N, NI), 3.0))


def stopping(t, s, throw):
    sols = jax.vmap(
        lambda ti, si: strong.simulate(
            sj.SpikeTrain(ti, si), t_end=T_END, max_spikes=2, throw=throw
        )
    )(t, s)
    return sols.spike_times, sols.counts, sols.result._value


got = sharded(lambda t, s: stopping(t, s, False), 2, P("b"))(stop_times, stop_sources)
want = jax.jit(lambda t, s: stopping(t, s, False))(stop_times, stop_sources)
out["stopped run"] = {
    "results": np.asarray(got[2]).tolist(),
    "want_results": np.asarray(want[2]).tolist(),
    "counts_equal": bool(np.array_equal(got[1], want[1])),
    "times_equal": bool(np.array_equal(got[0], want[0])),
    "spikes": int(np.sum(np.isfinite(np.asarray(want[0])))),
}


def stopping_grad(t, s):
    return batch_grad(
        strong,
        lambda m, ti, si: time_loss(
            m.simulate(sj.SpikeTrain(ti, si), t_end=T_END, max_spikes=2)
        ),
    )(t, s)


try:
    jax.block_until_ready(sharded(stopping_grad, 2, P())(stop_times, stop_sources))
    out["raised"] = None
except Exception as e:  # noqa: BLE001  (the message is what is checked)
    out["raised"] = str(e)

json.dump(out, sys.stdout)
