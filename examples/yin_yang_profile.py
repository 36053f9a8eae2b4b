"""Where a training step of `examples/yin_yang.py` spends its time, on a trained
network (a run directory written by the example): the value and gradient of the
loss on one batch of 256 training samples, the forward pass, and each layer's
forward pass on its own, with the loop iterations each layer's event engine takes
(the largest over the batch is what a `vmap`ped loop runs) and the hidden spikes
per sample.

    pip install -e ".[examples]"
    python examples/yin_yang_profile.py runs/yy0 [runs/yy1 ...] [--reps 5]
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from yin_yang_plot import load

from snode_jax.datasets import yin_yang


def _timed(f, *args, reps: int):
    """(median seconds per call, seconds of the first call with compilation)."""
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), first


def profile(run_dir: str, reps: int = 5, batch: int = 256) -> dict:
    ex, metrics, net = load(run_dir)
    features, labels = yin_yang(split="train")
    trains = ex.encode(features[:batch])
    labels = jnp.asarray(labels[:batch])
    hidden_spikes, out_spikes = ex.MAX_SPIKES
    hidden_after, out_after = ex.AFTER_MAX_SPIKES

    @eqx.filter_jit
    def value_and_grad(net, trains, labels):
        params, rest = eqx.partition(net, ex.trainable(net))

        def loss(p):
            return ex.batch_loss(eqx.combine(p, rest), trains, labels)[0]

        return jax.value_and_grad(loss)(params)

    @eqx.filter_jit
    def forward(net, trains):
        return jax.vmap(ex._forward, in_axes=(None, 0))(net, trains)

    def hidden_run(layer, train):
        return layer.simulate(
            train,
            t_end=ex.T_END,
            max_spikes=hidden_spikes,
            after_max_spikes=hidden_after,
            throw=False,
        )

    @eqx.filter_jit
    def hidden(net, trains):
        sol = jax.vmap(hidden_run, in_axes=(None, 0))(net.layers[0], trains)
        return sol.spike_times, sol.stats["num_events"]

    @eqx.filter_jit
    def drive_of(net, trains):
        def one(train):
            return hidden_run(net.layers[0], train).spike_train(throw=False)

        return jax.vmap(one)(trains)

    @eqx.filter_jit
    def output(net, drive):
        def one(train):
            return net.layers[1].simulate(
                train,
                t_end=ex.T_END,
                max_spikes=out_spikes,
                after_max_spikes=out_after,
                throw=False,
            )

        sol = jax.vmap(one)(drive)
        return sol.spike_times, sol.stats["num_events"]

    drive = drive_of(net, trains)
    _, hidden_events = hidden(net, trains)
    _, output_events = output(net, drive)
    spikes_per_sample = jnp.sum(jnp.isfinite(drive.times), axis=-1)
    row = dict(
        run=run_dir,
        hidden_spikes_per_sample=float(jnp.mean(spikes_per_sample)),
        hidden_iterations=(int(jnp.max(hidden_events)), float(jnp.mean(hidden_events))),
        output_iterations=(int(jnp.max(output_events)), float(jnp.mean(output_events))),
    )
    for name, f, args in (
        ("value_and_grad", value_and_grad, (net, trains, labels)),
        ("forward", forward, (net, trains)),
        ("hidden_forward", hidden, (net, trains)),
        ("output_forward", output, (net, drive)),
    ):
        row[name] = _timed(f, *args, reps=reps)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of yin_yang.py")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    print(
        "| run | hidden spikes per sample | hidden loop iterations (max / mean) "
        "| output loop iterations (max / mean) | value and gradient (ms) "
        "| forward (ms) | hidden forward (ms) | output forward (ms) "
        "| gradient compile (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        r = profile(run, reps=args.reps)
        print(
            f"| {run} | {r['hidden_spikes_per_sample']:.1f} "
            f"| {r['hidden_iterations'][0]} / {r['hidden_iterations'][1]:.1f} "
            f"| {r['output_iterations'][0]} / {r['output_iterations'][1]:.1f} "
            f"| {1e3 * r['value_and_grad'][0]:.1f} | {1e3 * r['forward'][0]:.1f} "
            f"| {1e3 * r['hidden_forward'][0]:.1f} "
            f"| {1e3 * r['output_forward'][0]:.1f} "
            f"| {r['value_and_grad'][1]:.1f} |"
        )


if __name__ == "__main__":
    main()
