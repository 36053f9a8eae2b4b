"""Forward-pass timings for A/B comparisons of two checkouts of the library.

Run it once per checkout, in alternating processes, and compare the printed JSON:
`PYTHONPATH=<checkout> python bench/bench_forward_ab.py` (in an environment without
an editable install of snode_jax, which would take precedence over `PYTHONPATH`; the
printed `snode_jax` path says which was imported). Times `eqx.filter_jit`
forward passes of (a) 4096 AdEx / Izhikevich neurons on Tsit5 (rtol 3e-7), 5
intervals of 20 ms with drives of 300-1500 pA / 3-15, and (b) the exact LIF at
64 x 256 neurons x 100 intervals x 32 inputs under `jax.vmap`, `forward` and
`simulate(max_spikes=128)`; minimum over the repetitions, in seconds.
"""

import json
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import snode_jax as sj  # noqa: E402


def best_time(f, *args, reps=5):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    out = {"snode_jax": sj.__file__}
    models = [
        ("adex", sj.AdExDynamics(), (300.0, 1500.0)),
        ("izhikevich", sj.IzhikevichDynamics(), (3.0, 15.0)),
    ]
    for name, dyn, (lo, hi) in models:
        n = 4096
        layer = sj.SpikingODELayer(
            1,
            n,
            dyn,
            solver=sj.Tsit5(),
            rtol=3e-7,
            atol=3e-7,
            dt_init=0.01,
            max_steps=20000,
            key=jax.random.key(0),
        )
        weight = jnp.asarray(rng.uniform(lo, hi, (n, 1)))
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        forward = eqx.filter_jit(lambda lyr, x: lyr.forward(x, 20.0))
        out[name] = best_time(forward, layer, jnp.ones((5, 1)))
    for dtype in (jnp.float32, jnp.float64):
        layer = sj.SpikingODELayer(32, 256, key=jax.random.key(0), dtype=dtype)
        xb = jnp.asarray(rng.standard_normal((64, 100, 32)) * 0.5, dtype)
        forward = eqx.filter_jit(
            jax.vmap(lambda lyr, x: lyr.forward(x, 1.0), (None, 0))
        )
        out["lif_" + jnp.dtype(dtype).name] = best_time(forward, layer, xb, reps=11)
        simulate = eqx.filter_jit(
            jax.vmap(
                lambda lyr, x: lyr.simulate(x, 1.0, max_spikes=128).spike_times,
                (None, 0),
            )
        )
        out["lif_simulate_" + jnp.dtype(dtype).name] = best_time(
            simulate, layer, xb, reps=11
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
