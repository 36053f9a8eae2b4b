"""Time the float64 logarithm in vector operations (`snode_jax._math.log`) against
XLA's own, alone and where the exact LIF takes it, in one process.

The LIF module binds the function when it is imported (`snode_jax._lif.log`):
each variant is traced and compiled ahead of time with one or the other bound
(JAX's caches cleared in between), then all are called in turn, in alternating
order, `--reps` times.

    python bench/bench_log.py            # writes the bench_log section of RESULTS.md
    python bench/bench_log.py --quick    # small sizes, prints only
"""

import argparse
import statistics

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    interleaved_timings,
    machine_line,
    median_ratio,
    write_section,
)

import snode_jax as sj  # noqa: E402
from snode_jax import _lif, _math  # noqa: E402

N_INPUTS, N_INTERVALS, MAX_SPIKES = 32, 100, 32


def compiled(fn, log, *args):
    """`fn` traced with the LIF's `log` bound to `log`."""
    jax.clear_caches()
    saved = _lif.log
    _lif.log = log
    try:
        return eqx.filter_jit(fn).lower(*args).compile()
    finally:
        _lif.log = saved


def alone(n, reps):
    rows = []
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 50.0, n))
    fns = {
        "XLA's log, float32": jax.jit(jnp.log),
        "XLA's log": jax.jit(jnp.log),
        "vector log": jax.jit(_math.log),
    }
    args = {k: (x.astype(jnp.float32) if "32" in k else x,) for k in fns}
    # Single calls here take about a millisecond: four times the repetitions.
    _, times = interleaved_timings(fns, args, 4 * reps, alternate=True)
    for k, ts in times.items():
        ns = statistics.median(ts) / n * 1e9
        ratio = median_ratio(times, k, "XLA's log")
        rows.append(f"| {k} | {ns:.2f} | {ratio:.2f} |")
        print(rows[-1], flush=True)
    return rows


def layer_rows(batch, n_neurons, reps):
    rows = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, N_INTERVALS, N_INPUTS)) * 0.5
    x = jnp.asarray(x)
    fns = {
        "forward": lambda lay, xb: lay.forward(xb, 1.0),
        f"simulate(max_spikes={MAX_SPIKES})": lambda lay, xb: (
            lay.simulate(xb, 1.0, max_spikes=MAX_SPIKES).spike_times
        ),
    }
    for t_ref in (None, 2.0):
        dyn = sj.ODELIFDynamics(tau_mem=20.0, t_ref=t_ref)
        layer = sj.SpikingODELayer(
            N_INPUTS, n_neurons, dyn, dtype=jnp.float64, key=jax.random.key(0)
        )
        for name, f in fns.items():
            f = jax.vmap(f, in_axes=(None, 0))
            variants = {
                "xla": compiled(f, jnp.log, layer, x),
                "vector": compiled(f, _math.log, layer, x),
            }
            outs = {k: np.asarray(c(layer, x)) for k, c in variants.items()}
            finite = np.isfinite(outs["xla"])
            same = np.array_equal(finite, np.isfinite(outs["vector"]))
            diff = np.max(np.abs(outs["xla"][finite] - outs["vector"][finite]))
            args = {k: (layer, x) for k in variants}
            _, times = interleaved_timings(variants, args, reps, alternate=True)
            rows.append(
                f"| {'none' if t_ref is None else t_ref} | {name} "
                f"| {statistics.median(times['xla']) * 1e3:.2f} "
                f"| {statistics.median(times['vector']) * 1e3:.2f} "
                f"| {median_ratio(times, 'vector', 'xla'):.2f} "
                f"| {'yes' if same else 'NO'} | {diff:.1e} |"
            )
            print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="small sizes, print only")
    a = p.parse_args()
    n = 2**14 if a.quick else 2**18
    batch, n_neurons = (4, 64) if a.quick else (64, 256)
    one = alone(n, a.reps)
    lif = layer_rows(batch, n_neurons, a.reps)
    if a.quick:
        return
    text = "\n".join(
        [
            "## The float64 logarithm on CPU (`bench/bench_log.py`)",
            "",
            f"Command: `python bench/bench_log.py --reps {a.reps}`  ",
            f"Machine: {machine_line()}  ",
            "XLA:CPU evaluates its float64 `log` a value at a time; "
            "`snode_jax._math.log` is fdlibm's logarithm written in vector "
            "operations (under one ulp), used for float64 on CPU by the exact LIF "
            "(a logarithm per neuron and interval where it is refractory, two per "
            "slot of the recorded spike times; not under differentiation, where "
            "it made the refractory gradient slower). Each variant compiled ahead of "
            "time, all called in turn in one process, in alternating order; the "
            "ratio is the median of per-repetition ratios.",
            "",
            f"Alone, {n} values uniform in [1, 50] (float64 unless stated):",
            "",
            "| function | ns per value | to XLA's float64 log |",
            "|---|---:|---:|",
            *one,
            "",
            f"Exact LIF layer, float64, `jax.vmap` over {batch} samples x "
            f"{n_neurons} neurons x {N_INTERVALS} intervals of 1 ms x {N_INPUTS} "
            "inputs N(0, 0.5^2), the layer passed as an argument. *Spike times*: "
            "the same spikes (which times are finite), and the largest difference "
            "of a time (ms):",
            "",
            "| t_ref (ms) | function | XLA's log (ms) | vector log (ms) "
            "| vector / XLA | same spikes | largest time difference |",
            "|---|---|---:|---:|---:|---|---:|",
            *lif,
        ]
    )
    write_section("bench_log", text)


if __name__ == "__main__":
    main()
