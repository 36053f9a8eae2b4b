"""Where a compiled program's time goes, operation by operation.

Profiles the programs that issue-level targets are measured on (`bench_layer.py`'s
`forward` and `simulate`, `bench_grad.py`'s LIF and AdEx gradients) with XLA's
per-operation trace events on CPU (`--xla_cpu_enable_xprof_traceme=true`, set here
before JAX starts) under `jax.profiler`, and sums the self time of every executed
operation (a fusion, a loop, a conditional, a scatter: what XLA's CPU runtime
launches one by one) by the JAX source path it was staged from (its `op_name`,
e.g. `transpose(jvp(vmap(jit(integrate))))/while/body/...`): which part of a run,
its spike record or its derivative takes the time, and how many operations a call
launches. Each launch costs about a microsecond under the profiler, whatever its
size, so programs of many small operations read slower than they run: the table
gives each group's share of the profiled time beside the wall time of unprofiled
calls. Those calls run the same compiled program (the trace events are compiled in
for the whole process), so their times are not those of `bench_layer.py`'s and
`bench_grad.py`'s tables: compare shares, not milliseconds.

    python bench/bench_profile.py          # writes the bench_profile section
    python bench/bench_profile.py --program grad --batch 64 --intervals 100 \\
        --dtype float64 --depth 8          # one program, printed only
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time

# Before JAX's backend starts: the CPU runtime then emits an event per operation.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_xprof_traceme=true"]
).strip()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from bench_grad import (  # noqa: E402
    adaptive_loss,
    make,
    make_adaptive,
    probe_counts,
    probe_lif,
)
from bench_layer import INTERVAL, workload  # noqa: E402
from common import machine_line, write_section  # noqa: E402

# (program, batch, neurons, intervals, dtype): the targets' workloads.
DEFAULT = [
    ("forward", 64, 256, 100, "float32"),
    ("simulate", 64, 256, 100, "float32"),
    ("grad", 64, 256, 100, "float64"),
    ("grad", 1, 256, 1600, "float64"),
    ("grad-adex", 1, 256, 10, "float64"),  # (256 neurons, 10 ms intervals)
]

# The wrappers every operation of a program is staged under.
_WRAPPER = re.compile(r"^(jit\((<lambda>|loss)\)/)+")


def program(name, batch, neurons, intervals, dtype):
    """`(function of (arrays, x), arrays, x, label)`: the layer's arrays are
    arguments, its other fields closed over."""
    dt = np.dtype(dtype).type
    if name in ("forward", "simulate"):
        layer, x = workload(batch, neurons, intervals, 32, dt)

        def one(lay, xb):
            if name == "forward":
                return lay.forward(xb, INTERVAL)
            sol = lay.simulate(xb, INTERVAL, max_spikes=32)
            return sol.counts, sol.spike_times

        fn = jax.vmap(one, in_axes=(None, 0))
        label = f"`{name}`" + ("(max_spikes=32)" if name == "simulate" else "")
    elif name == "grad":
        probed = probe_lif(intervals, 0.3, dt, batch)
        layer, x, _, fn = make(intervals, 0.3, dt, probed[2], batch)
        label = "LIF value and gradient (`bench_grad.py`, drive 0.3)"
    elif name == "grad-adex":
        layer, x = make_adaptive(intervals)
        sol = layer.simulate(x, 10.0, max_spikes=0, throw=False)
        _, fn = adaptive_loss(10.0, probe_counts(sol)[2])
        label = "AdEx value and gradient (`bench_grad.py --adaptive`)"
    else:
        raise ValueError(f"--program: unknown {name!r}")
    # (From what ran: `grad-adex` is one sample in float64, whatever was asked.)
    samples = x.shape[0] if x.ndim == 3 else 1
    label = f"{label}: {samples} x {layer.n_neurons} x {intervals}, {x.dtype}"
    arrays, rest = eqx.partition(layer, eqx.is_array)
    return jax.jit(lambda a, x: fn(eqx.combine(a, rest), x)), arrays, x, label


def self_times(folder):
    """Per executed operation event: `(hlo_op, self time in us)`, the time of the
    operations launched inside it (a loop's body) taken out."""
    (path,) = glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    threads = collections.defaultdict(list)
    for e in ops:
        threads[e["tid"]].append(e)
    out = []
    for es in threads.values():
        es.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack, inner = [], collections.Counter()
        for i, e in enumerate(es):
            while stack and es[stack[-1]]["ts"] + es[stack[-1]]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                inner[stack[-1]] += e["dur"]
            stack.append(i)
        out += [(e["args"]["hlo_op"], e["dur"] - inner[i]) for i, e in enumerate(es)]
    return out


def profile(name, batch, neurons, intervals, dtype, calls, depth, top):
    fn, arrays, x, label = program(name, batch, neurons, intervals, dtype)
    compiled = fn.lower(arrays, x).compile()
    source = {}
    for m in re.finditer(r'%([\w.\-]+) = .*?op_name="([^"]*)"', compiled.as_text()):
        source.setdefault(m.group(1), _WRAPPER.sub("", m.group(2)))
    jax.block_until_ready(compiled(arrays, x))
    walls = []
    for _ in range(max(calls, 5)):
        t = time.perf_counter()
        jax.block_until_ready(compiled(arrays, x))
        walls.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(arrays, x))
        events = self_times(folder)
    time_of, count = collections.Counter(), collections.Counter()
    for op, us in events:
        path = source.get(op, "(no source path: copies, XLA's own fusions)")
        group = "/".join(path.split("/")[:depth])
        time_of[group] += us / calls
        count[group] += 1 / calls
    total = sum(time_of.values())
    lines = [
        f"### {label}",
        "",
        f"Unprofiled: {statistics.median(walls) * 1e3:.2f} ms per call (median of "
        f"{len(walls)}). Profiled: {total / 1e3:.2f} ms of operations per call, "
        f"{sum(count.values()):,.0f} launched.",
        "",
        "| staged from | operations per call | ms per call (profiled) | share |",
        "|---|---:|---:|---:|",
    ]
    for group, us in time_of.most_common(top):
        lines.append(
            f"| `{group}` | {count[group]:,.0f} | {us / 1e3:.2f} | {us / total:.1%} |"
        )
    rest = total - sum(us for _, us in time_of.most_common(top))
    if rest > 0:
        lines.append(f"| (the rest) | | {rest / 1e3:.2f} | {rest / total:.1%} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--program", choices=["forward", "simulate", "grad", "grad-adex"])
    p.add_argument("--batch", type=int, default=64, help="not grad-adex (1)")
    p.add_argument("--neurons", type=int, default=256, help="forward, simulate")
    p.add_argument("--intervals", type=int, default=100)
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="not grad-adex (float64)",
    )
    p.add_argument("--calls", type=int, default=3, help="profiled calls")
    p.add_argument("--depth", type=int, default=6, help="path components kept")
    p.add_argument("--top", type=int, default=12, help="groups listed")
    a = p.parse_args()
    for name, value in (("calls", a.calls), ("depth", a.depth), ("top", a.top)):
        if value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    if a.program is not None:
        config = (a.program, a.batch, a.neurons, a.intervals, a.dtype)
        print(profile(*config, a.calls, a.depth, a.top))
        return
    tables = []
    for config in DEFAULT:
        tables.append(profile(*config, a.calls, a.depth, a.top))
        print(tables[-1] + "\n", flush=True)
    text = "\n".join(
        [
            "## Where the time goes: operation by operation (`bench/bench_profile.py`)",
            "",
            f"Command: `python bench/bench_profile.py --calls {a.calls} "
            f"--depth {a.depth} --top {a.top}`  ",
            f"Machine: {machine_line()}  ",
            __doc__.split("\n\n")[1].replace("\n", " "),
            "",
            "\n\n".join(tables),
        ]
    )
    write_section("bench_profile", text)


if __name__ == "__main__":
    main()
