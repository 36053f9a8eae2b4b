"""Quickstart: a spiking ODE layer with exact spike times.

Runs the tutorial's example (16 LIF neurons, 32 inputs, 100 intervals of 1 ms),
the online step-by-step mode, and compares this layer and fixed-step Euler
(dt = 0.1 ms and 0.01 ms) against the closed-form solution.

    python examples/quickstart.py
"""

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
)
from common import (  # noqa: E402
    euler_lif,
    euler_spike_times,
    lif_reference,
    max_time_error,
)

import snode_jax as sj  # noqa: E402


def timed(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))  # compile
    t0 = time.perf_counter()
    for _ in range(reps):
        out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0) / reps


def main():
    dynamics = sj.ODELIFDynamics(
        tau_mem=20.0, v_rest=0.0, v_threshold=1.0, v_reset=0.0, C_mem=1.0
    )
    layer = sj.SpikingODELayer(
        n_inputs=32,
        n_neurons=16,
        dynamics=dynamics,
        dt_init=0.1,
        dt_min=0.001,
        key=jax.random.key(0),
    )

    # Process 100 input samples, each held for a 1 ms interval.
    rng = np.random.default_rng(42)
    inputs = rng.standard_normal((100, 32)).astype(np.float32) * 0.5

    spike_counts = layer.forward(inputs, interval=1.0)
    print(f"Shape: {spike_counts.shape}")
    print(f"Total spikes: {int(spike_counts.sum())}")
    print(f"Mean rate: {float(spike_counts.mean()):.3f} spikes/interval")

    sol = layer.simulate(inputs, interval=1.0, max_spikes=64)
    first = np.asarray(sol.spike_times[0])
    print(f"Neuron 0 spike times (ms): {np.round(first[np.isfinite(first)], 6)}")

    print("\nOnline (step-by-step) mode:")
    online = sj.OnlineLayer(layer)
    online.reset()
    online_rng = np.random.default_rng(7)
    shown = 0
    for t in range(100):
        x = online_rng.standard_normal(32).astype(np.float32) * 0.5
        counts = np.asarray(online.step(x, interval=1.0))
        if counts.sum() > 0 and shown < 8:
            shown += 1
            v = np.asarray(online.voltage)
            print(
                f"t={t}: neurons {np.flatnonzero(counts)} fired, "
                f"voltage range [{v.min():.3f}, {v.max():.3f}]"
            )

    # -- accuracy and cost against the closed-form solution -----------------------
    ref = lif_reference(layer.weight, inputs, 1.0)
    n_ref = int(ref.counts.sum())
    duration_s = inputs.shape[0] * 1.0 / 1000.0
    x = jnp.asarray(inputs, jnp.float64)

    print(f"\nAgainst the closed-form solution ({n_ref} spikes, 1600 counts):")
    header = (
        f"{'method':<22} {'mismatched counts':>18} {'max spike-time error (ms)':>26} "
        f"{'steps per simulated s':>22} {'wall time (ms)':>15}"
    )
    print(header)

    simulate = eqx.filter_jit(lambda x: layer.simulate(x, 1.0, max_spikes=64))
    sol, wall = timed(simulate, x)
    err = max_time_error(np.asarray(sol.spike_times), ref.spike_times)
    wrong = int(np.sum(np.asarray(sol.counts) != ref.counts))
    steps = float(np.mean(np.asarray(sol.steps_per_second)))
    print(
        f"{'snode_jax (exact)':<22} {wrong:>18d} {err:>26.2e} {steps:>22,.0f} "
        f"{wall * 1e3:>15.3f}"
    )
    for dt in (0.1, 0.01):
        fn = jax.jit(
            lambda x, dt=dt: euler_lif(dynamics, layer.weight, x, 1.0, dt, record=True)
        )
        (counts, mask), wall = timed(fn, x)
        times = euler_spike_times(mask, 1.0, dt)
        err = max_time_error(times, ref.spike_times)
        wrong = int(np.sum(np.asarray(counts) != ref.counts))
        steps = 1.0 / (dt / 1000.0) if duration_s else 0.0
        print(
            f"{f'Euler dt={dt} ms':<22} {wrong:>18d} {err:>26.2e} {steps:>22,.0f} "
            f"{wall * 1e3:>15.3f}"
        )


if __name__ == "__main__":
    main()
