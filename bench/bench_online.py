"""Time `OnlineLayer.step` per call against a hand-written jitted closed-form LIF step.

One process; for each size (16, 256, 4096 neurons, 32 inputs) and dtype (float32,
float64) three steppers advance one 1 ms interval of held input per call, each call
followed by `block_until_ready`, called in turn (interleaved) so that load on a
shared machine hits all of them alike:

- `OnlineLayer.step`: the library's runner, `x` a device array of the layer's
  dtype (as for the baseline), and a second runner given NumPy rows (the host to
  device copy included);
- the compiled step alone: the jitted function `OnlineLayer.step` calls, on the
  runner's flat arrays (what a call adds around it is the difference);
- `filter_jit(layer.step)`: the layer's pure `step` under `eqx.filter_jit`, with
  the interval checked and both arguments converted by JAX on every call, for
  reference (the runner's step before it was compiled on flat arrays);
- the baseline: `jax.jit` of the closed-form held-current update with spike and
  reset (time to the first crossing, the period between spikes, the count, the
  voltage at the end), taking the weight, the voltage, `x` and the interval as
  arguments.

Reported: the median time per call over all timed calls, and the median over calls
of the ratio of each call to the baseline call next to it. Every stepper's counts
over the timed sequence are checked against the float64 closed form
(`tests/lif_reference.py`).

    python bench/bench_online.py            # writes the bench_online section
    python bench/bench_online.py --quick    # fewer calls, prints only
"""

import argparse
import os
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import lif_reference, machine_line, write_section  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax._checks import check_interval  # noqa: E402

INTERVAL = 1.0
N_INPUTS = 32
TAU, V_REST, V_TH, V_RESET, C_MEM = 20.0, 0.0, 1.0, 0.0, 1.0


@jax.jit
def closed_form_step(weight, v, x, interval):
    """One interval of held current for the LIF, in closed form: returns the voltage
    at its end and the spike count (any number of spikes)."""
    v_inf = V_REST + (weight @ x) * (TAU / C_MEM)
    above = v_inf > V_TH
    gap = jnp.where(above, v_inf - V_TH, 1.0)
    # Time to the first crossing from v (< threshold), and between spikes.
    t_first = TAU * jnp.log(jnp.where(above, (v_inf - v) / gap, 1.0))
    period = TAU * jnp.log(jnp.where(above, (v_inf - V_RESET) / gap, 2.0))
    fires = above & (t_first <= interval)
    count = jnp.where(fires, 1 + jnp.floor((interval - t_first) / period), 0)
    t_last = t_first + (count - 1) * period
    v_fired = v_inf + (V_RESET - v_inf) * jnp.exp(-(interval - t_last) / TAU)
    v_free = v_inf + (v - v_inf) * jnp.exp(-interval / TAU)
    return jnp.where(fires, v_fired, v_free), count.astype(v.dtype)


LABELS = {
    "online": "OnlineLayer.step",
    "online NumPy x": "OnlineLayer.step, NumPy x",
    "program": "compiled step alone",
    "filter_jit": "filter_jit(layer.step)",
    "closed form": "closed form",
}


_filter_jit_step = eqx.filter_jit(lambda layer, s, x, dt: layer.step(s, x, dt))


def run(n_neurons, dtype, calls, seed=0):
    dyn = sj.ODELIFDynamics(TAU, V_REST, V_TH, V_RESET, C_MEM)
    layer = sj.SpikingODELayer(
        N_INPUTS, n_neurons, dyn, dtype=dtype, key=jax.random.key(seed)
    )
    rng = np.random.default_rng(seed)
    inputs = (rng.standard_normal((calls, N_INPUTS)) * 0.5).astype(dtype)
    xs = [jnp.asarray(row) for row in inputs]  # device arrays, made before timing
    dt = jnp.asarray(INTERVAL, dtype)
    weight = layer.weight

    online = sj.OnlineLayer(layer)
    online_np = sj.OnlineLayer(layer)
    program = sj.OnlineLayer(layer)._compiled  # the runner's jitted step
    arrays, state_leaves = online._arrays, online._state_leaves
    state = layer.init_state()
    v = layer.init_state().v
    counts = {k: [] for k in LABELS}

    def call_online(k):
        c = online.step(xs[k], INTERVAL)
        return c

    def call_online_np(k):
        return online_np.step(inputs[k], INTERVAL)

    def call_program(k):
        nonlocal state_leaves
        state_leaves, c, _ = program(arrays, state_leaves, xs[k], dt)
        return c

    def call_filter_jit(k):
        nonlocal state
        check_interval(INTERVAL)
        x, interval = jnp.asarray(xs[k]), jnp.asarray(INTERVAL, dtype)
        state, c = _filter_jit_step(layer, state, x, interval)
        return c

    def call_closed_form(k):
        nonlocal v
        v, c = closed_form_step(weight, v, xs[k], dt)
        return c

    fns = {
        "online": call_online,
        "online NumPy x": call_online_np,
        "program": call_program,
        "filter_jit": call_filter_jit,
        "closed form": call_closed_form,
    }
    first = {}
    for name, f in fns.items():  # compile (and check) on the first input
        t0 = time.perf_counter()
        counts[name].append(jax.block_until_ready(f(0)))
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in fns}
    for k in range(1, calls):
        for name, f in fns.items():
            t0 = time.perf_counter()
            c = jax.block_until_ready(f(k))
            times[name].append(time.perf_counter() - t0)
            counts[name].append(c)
    ref = lif_reference(np.asarray(weight, np.float64), inputs, INTERVAL)
    wrong = {
        name: int(np.sum(np.stack([np.asarray(c) for c in cs]) != ref.counts))
        for name, cs in counts.items()
    }
    base = times["closed form"]
    return {
        "median_us": {k: 1e6 * statistics.median(t) for k, t in times.items()},
        "ratio": {
            k: statistics.median(a / b for a, b in zip(t, base, strict=True))
            for k, t in times.items()
        },
        "first_s": first,
        "wrong": wrong,
        "ref_spikes": int(ref.counts.sum()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls, no file output")
    p.add_argument(
        "--calls", type=int, default=3000, help="calls per setting (the first compiles)"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 256, 4096])
    args = p.parse_args()
    calls = 200 if args.quick else args.calls
    rows = []
    t_start = time.perf_counter()
    for n in args.sizes:
        for dtype in (np.float32, np.float64):
            r = run(n, dtype, calls)
            rows.append((n, np.dtype(dtype).name, r))
            summary = ", ".join(
                f"{LABELS[k]} {r['median_us'][k]:.1f} us ({r['ratio'][k]:.2f}x)"
                for k in LABELS
            )
            print(
                f"n={n} {np.dtype(dtype).name}: {summary}; count mismatches "
                f"{r['wrong']} of {r['ref_spikes']} spikes",
                flush=True,
            )
    if args.quick:
        return
    minutes = (time.perf_counter() - t_start) / 60
    cmd = "python bench/bench_online.py" + (
        f" --calls {args.calls}" if args.calls != 3000 else ""
    )
    lines = [
        "## Online stepping: `OnlineLayer.step` vs a jitted closed-form step "
        "(`bench/bench_online.py`)",
        "",
        f"Command: `{cmd}` (took {minutes:.1f} min)  ",
        f"Machine: {machine_line()}, shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run)",
        "",
        f"One interval of 1 ms per call, {N_INPUTS} inputs, x ~ N(0, 1) * 0.5, "
        f"LIF tau_mem = {TAU:g} ms, threshold {V_TH:g}, reset {V_RESET:g}. "
        f"{calls - 1} timed calls per stepper and setting after a first (compiling) "
        "call, the steppers called in turn, each call blocked on its result; "
        "median time per call (us), and in brackets the median over calls of the "
        "ratio to the closed-form call made next to it. *Closed form*: `jax.jit` of "
        "the hand-written held-current update with spike and reset (weight, "
        "voltage, x, interval as arguments). *OnlineLayer.step* gets `x` as a "
        "device array of the layer's dtype, like the closed form; *NumPy x* a NumPy "
        "row (the copy to the device included). *Compiled step alone*: the jitted "
        "function OnlineLayer.step calls, on its flat arrays (the rest of a call "
        "is the difference). *filter_jit(layer.step)*: the "
        "layer's pure step under `eqx.filter_jit`, with the interval checked and "
        "converted per call (the runner's step before it was compiled on flat "
        "arrays). Count mismatches: (call, neuron) cells that differ from the "
        "float64 closed form (`tests/lif_reference.py`), for OnlineLayer.step / "
        "filter_jit(layer.step) / closed form (in float32 the hand-written closed "
        "form, rounding too, has some as well).",
        "",
        "| neurons | dtype | "
        + " | ".join(LABELS.values())
        + " | first call: OnlineLayer / closed form (s) | count mismatches "
        "(of reference spikes) |",
        "|---:|---|" + "---:|" * len(LABELS) + "---|---|",
    ]
    for n, dname, r in rows:
        med, ratio, first, wrong = r["median_us"], r["ratio"], r["first_s"], r["wrong"]
        cells = " | ".join(
            f"{med[k]:.1f}" + ("" if k == "closed form" else f" ({ratio[k]:.2f}x)")
            for k in LABELS
        )
        lines.append(
            f"| {n} | {dname} | {cells} | {first['online']:.2f} / "
            f"{first['closed form']:.2f} | {wrong['online']} / {wrong['filter_jit']}"
            f" / {wrong['closed form']} (of {r['ref_spikes']}) |"
        )
    write_section("bench_online", "\n".join(lines))


if __name__ == "__main__":
    main()
