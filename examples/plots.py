"""The figures of the README's "Plots" section, drawn with `snode_jax.plot`.

- `docs/raster.png`: a random input spike train (20 sources, 100 ms) and the spikes
  of the 30 CubaLIF neurons it drives, on the event-driven engine.
- `docs/voltage.png`: the membrane voltage of two of those neurons, saved every
  0.1 ms with `simulate(..., save_times=...)`, with the threshold and the spikes.
- `docs/fi_curve.png`: firing rate against held input current (f-I curves) of the
  LIF, simulated and in closed form, and of the AdEx neuron.

    pip install -e ".[plot]" && python examples/plots.py [output_dir]
"""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax import plot  # noqa: E402

T_END = 100.0


def spiking_layer():
    """20 input sources firing at random times, into 30 CubaLIF neurons."""
    rng = np.random.default_rng(0)
    n_spikes = rng.poisson(8, 20)  # ~80 Hz each over 100 ms
    times = np.concatenate([np.sort(rng.uniform(0, T_END, k)) for k in n_spikes])
    sources = np.repeat(np.arange(20), n_spikes)
    train = sj.SpikeTrain(jnp.asarray(times), jnp.asarray(sources))
    dyn = sj.CubaLIFDynamics(tau_mem=10.0, tau_syn=5.0)
    layer = sj.SpikingODELayer(20, 30, dyn, key=jax.random.key(3))
    layer = eqx.tree_at(lambda m: m.weight, layer, layer.weight * 0.05 + 0.02)
    return layer, train


def raster_figure(layer, train, path):
    sol = layer.simulate(train, t_end=T_END, max_spikes=64)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    plot.raster(train, ax=top, t_end=T_END, color="0.4")
    top.set_ylabel("input")
    top.set_xlabel("")
    plot.raster(sol, ax=bottom)
    fig.suptitle("Spike raster: input spike train and CubaLIF layer (event-driven)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return sol


def voltage_figure(layer, train, path):
    save = jnp.linspace(0.0, T_END, 1001)
    sol = layer.simulate(train, t_end=T_END, max_spikes=64, save_times=save)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    plot.voltage_traces(sol, layer, neurons=[12, 0], ax=ax, linewidth=1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Membrane voltage (saved every 0.1 ms), threshold and spikes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def firing_rates(dynamics, currents, duration, **layer_kwargs):
    """Spikes per second of one neuron per current, held for `duration` ms."""
    n = len(currents)
    layer = sj.SpikingODELayer(1, n, dynamics, key=jax.random.key(0), **layer_kwargs)
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(currents)[:, None])
    counts = layer.forward(np.ones((1, 1)), duration)
    return 1000.0 * np.asarray(counts[0]) / duration


def fi_figure(path):
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.0))
    # LIF (tau 20 ms, threshold 1, C 1): rate = 1 / (tau log(I tau / (I tau - 1))).
    currents = np.linspace(0.0, 0.3, 31)
    rates = firing_rates(sj.ODELIFDynamics(tau_mem=20.0), currents, 1000.0)
    plot.rate_curve(currents, rates, ax=left, label="simulated (1 s)")
    fine = np.linspace(0.0501, 0.3, 200)
    exact = 1000.0 / (20.0 * np.log(fine * 20.0 / (fine * 20.0 - 1.0)))
    plot.rate_curve(
        fine, exact, ax=left, label="closed form", marker="", linestyle="--", color="k"
    )
    left.set_title("LIF")
    # AdEx (Brette & Gerstner 2005 parameters), on the adaptive Runge-Kutta path.
    currents = np.linspace(0.0, 1500.0, 16)
    rates = firing_rates(sj.AdExDynamics(), currents, 1000.0, max_steps=20000)
    plot.rate_curve(currents, rates, ax=right, xlabel="input current (pA)", color="C3")
    right.set_title("AdEx")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(out_dir: pathlib.Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    layer, train = spiking_layer()
    sol = raster_figure(layer, train, out_dir / "raster.png")
    print(f"raster: {int(np.asarray(sol.counts).sum())} spikes of 30 neurons")
    voltage_figure(layer, train, out_dir / "voltage.png")
    fi_figure(out_dir / "fi_curve.png")
    for name in ("raster.png", "voltage.png", "fi_curve.png"):
        print(out_dir / name, (out_dir / name).stat().st_size, "bytes")


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parent.parent
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs")
