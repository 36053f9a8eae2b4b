"""The f-I curve of the LIF neuron with a refractory period, from a parameter sweep.

A 100 x 100 grid of constant drive `I` x membrane time constant `tau_mem` (10,000
single-neuron runs of 200 ms, vmapped and sharded across the available devices by
`snode_jax.sweep`), with the firing rate measured from the spike intervals and
checked against the closed form

    rate = 1 / (t_ref + tau_mem * ln((v_inf - v_reset) / (v_inf - v_threshold))),
    v_inf = v_rest + I * tau_mem / C_mem      (0 when v_inf <= v_threshold),

and the spike counts against those the closed form gives for 200 ms from rest.

    python examples/fi_curve.py                      # writes examples/fi_curve.png
    python examples/fi_curve.py --drives 20 --taus 20 --plot none
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax.sweep import grid, sweep_layer  # noqa: E402

# Fixed parameters (mV-like units, ms, C_mem = 1 so the drive is in units of
# v / ms): the rheobase is I = v_threshold / tau_mem.
V_REST, V_RESET, V_THRESHOLD, C_MEM, T_REF = 0.0, 0.0, 1.0, 1.0, 2.0


def closed_form_period(drive, tau_mem, t_ref=T_REF):
    """Inter-spike interval (ms) of the LIF at constant drive; `inf` below rheobase."""
    drive, tau_mem = np.broadcast_arrays(np.asarray(drive, float), tau_mem)
    v_inf = V_REST + drive * tau_mem / C_MEM
    fires = v_inf > V_THRESHOLD
    safe = np.where(fires, v_inf, V_THRESHOLD + 1.0)
    free = tau_mem * np.log((safe - V_RESET) / (safe - V_THRESHOLD))
    return np.where(fires, t_ref + free, np.inf)


def closed_form_rate(drive, tau_mem, t_ref=T_REF):
    """Firing rate (Hz) of the LIF at constant drive: 0 below rheobase."""
    return 1000.0 / closed_form_period(drive, tau_mem, t_ref)


def closed_form_count(drive, tau_mem, duration, t_ref=T_REF):
    """Spikes in `[0, duration]` ms from rest (`v_rest = v_reset`): the first at
    `period - t_ref`, then one per period."""
    period = closed_form_period(drive, tau_mem, t_ref)
    first = period - t_ref
    with np.errstate(invalid="ignore"):
        n = np.floor((duration - first) / period) + 1
    return np.where(np.isfinite(period) & (first <= duration), n, 0).astype(int)


def measure(sol):
    """Spike count, and the first and last spike times of the single neuron."""
    num = sol.num_spikes[0]
    times = sol.spike_times[0]
    last = times[jnp.maximum(num - 1, 0)]
    return {"count": num, "first": times[0], "last": last}


def fi_sweep(drives, taus, *, duration=200.0, chunk_size=None, progress=False):
    """Run the grid `drives x taus` (drive slowest) and return the measurements.

    **Returns:** a dict of arrays of shape `(len(drives), len(taus))`: `count`,
    `first`, `last` (ms, `inf` without spikes) and `rate_isi` (Hz, from the spike
    intervals; 0 with fewer than two spikes), with the grid's `drive` and `tau_mem`.
    """
    layer = sj.SpikingODELayer(
        1,
        1,
        sj.ODELIFDynamics(
            tau_mem=20.0,
            v_rest=V_REST,
            v_threshold=V_THRESHOLD,
            v_reset=V_RESET,
            C_mem=C_MEM,
            t_ref=T_REF,
        ),
        dtype=jnp.float64,
        key=jax.random.key(0),
    )
    # The drive is the weight of one input held at 1 for the whole run.
    points = grid({"weight": drives, "dynamics.tau_mem": taus})
    max_spikes = int(duration / T_REF) + 2  # the refractory period bounds the rate
    out = sweep_layer(
        layer,
        np.ones((1, 1)),
        points,
        interval=duration,
        max_spikes=max_spikes,
        measure=measure,
        chunk_size=chunk_size,
        progress=progress,
    )
    shape = (len(drives), len(taus))
    res = {k: np.asarray(v).reshape(shape) for k, v in out.items()}
    res["drive"] = points["weight"].reshape(shape)
    res["tau_mem"] = points["dynamics.tau_mem"].reshape(shape)
    two = res["count"] >= 2
    span = np.where(two, res["last"], 1.0) - np.where(two, res["first"], 0.0)
    res["rate_isi"] = np.where(two, 1000.0 * (res["count"] - 1) / span, 0.0)
    return res


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "The plot needs matplotlib: pip install -e '.[examples]'"
        ) from e
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    drives, taus = res["drive"][:, 0], res["tau_mem"][0]
    fine = np.linspace(drives.min(), drives.max(), 1000)
    for j in np.linspace(0, len(taus) - 1, 5).round().astype(int):
        (line,) = ax0.plot(
            fine, closed_form_rate(fine, taus[j]), lw=1, label=f"{taus[j]:.0f} ms"
        )
        ax0.plot(drives, res["rate_isi"][:, j], ".", ms=3, color=line.get_color())
    ax0.set_xlabel("drive I (threshold / ms)")
    ax0.set_ylabel("rate (Hz)")
    ax0.set_title("f-I curves: closed form (lines), sweep (dots)")
    ax0.legend(title="tau_mem", fontsize=8)
    mesh = ax1.pcolormesh(taus, drives, res["rate_isi"], shading="nearest")
    fig.colorbar(mesh, ax=ax1, label="rate (Hz)")
    ax1.set_xlabel("tau_mem (ms)")
    ax1.set_ylabel("drive I (threshold / ms)")
    ax1.set_title(f"{res['drive'].size} points, t_ref = {T_REF} ms")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drives", type=int, default=100, help="drive values")
    parser.add_argument("--taus", type=int, default=100, help="tau_mem values")
    parser.add_argument("--duration", type=float, default=200.0, help="ms per run")
    parser.add_argument("--chunk-size", type=int, default=None, help="per device")
    parser.add_argument(
        "--plot",
        default=str(pathlib.Path(__file__).with_suffix(".png")),
        help="output image ('none' for no plot)",
    )
    args = parser.parse_args(argv)
    drives = np.linspace(0.0, 0.5, args.drives)
    taus = np.linspace(5.0, 50.0, args.taus)

    t0 = time.perf_counter()
    res = fi_sweep(
        drives,
        taus,
        duration=args.duration,
        chunk_size=args.chunk_size,
        progress=True,
    )
    wall = time.perf_counter() - t0
    print(
        f"{res['drive'].size} points on {jax.device_count()} device(s) in "
        f"{wall:.2f} s (with compilation)"
    )

    exact = closed_form_rate(res["drive"], res["tau_mem"])
    two = res["count"] >= 2
    rel = np.abs(res["rate_isi"][two] - exact[two]) / exact[two]
    print(f"points with >= 2 spikes: {int(two.sum())}; rate from spike intervals")
    if rel.size:
        print(f"  max relative error against the closed form: {rel.max():.2e}")
    else:
        print("  (no point to compare: raise --duration or the largest drive)")
    count_rate = 1000.0 * res["count"] / args.duration
    err = np.abs(count_rate - exact)
    print(
        f"rate from counts (count / {args.duration:g} ms): max error "
        f"{err.max():.3f} Hz (bound for a finite run: 1000 / T = "
        f"{1000.0 / args.duration:.3f} Hz)"
    )
    expected = closed_form_count(res["drive"], res["tau_mem"], args.duration)
    wrong = int(np.sum(res["count"] != expected))
    print(f"spike counts differing from the closed form: {wrong} of {expected.size}")
    if args.plot != "none":
        plot(res, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
