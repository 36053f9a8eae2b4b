"""Plot a network trained by `examples/yin_yang.py`: its decision regions over the
unit square (with the test set on top), and the spikes of one test sample through
the network.

    pip install -e ".[examples]"
    python examples/yin_yang_plot.py runs/yy0 --png examples/yin_yang.png
"""

import argparse
import importlib.util
import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import snode_jax as sj  # noqa: E402
from snode_jax.datasets import YIN_YANG_CLASS_NAMES, yin_yang  # noqa: E402

_EXAMPLE = pathlib.Path(__file__).resolve().parent / "yin_yang.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("yin_yang_example", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(run_dir):
    """The example module, the run's config and its best network."""
    ex = _load_example()
    run = pathlib.Path(run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    config = metrics["config"]
    skeleton = ex.make_network(
        jax.random.key(config["seed"]), config["hidden"], config["readout"]
    )
    net = eqx.tree_deserialise_leaves(run / "best.eqx", skeleton)
    return ex, metrics, net


def predict(ex, net, features, readout, batch_size=1000):
    """Predicted classes (-1 for no output spike or a failed run)."""

    @eqx.filter_jit
    def classes(net, trains):
        scores, fired, ok = jax.vmap(ex._forward, in_axes=(None, 0))(net, trains)
        pred = jax.vmap(ex._predict, in_axes=(0, 0, None))(scores, fired, readout)
        return jnp.where(ok, pred, -1)

    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        if len(chunk) < batch_size:  # one shape, one compilation
            pad = np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)
            out.append(
                np.asarray(classes(net, ex.encode(np.concatenate([chunk, pad]))))[
                    : len(chunk)
                ]
            )
        else:
            out.append(np.asarray(classes(net, ex.encode(chunk))))
    return np.concatenate(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="directory written by yin_yang.py --out")
    parser.add_argument("--png", default="yin_yang.png")
    parser.add_argument("--grid", type=int, default=120, help="points per axis")
    parser.add_argument("--sample", type=int, default=0, help="test sample index")
    args = parser.parse_args(argv)
    ex, metrics, net = load(args.run)
    readout = metrics["config"]["readout"]

    g = np.linspace(0, 1, args.grid)
    xx, yy = np.meshgrid(g, g)
    grid = np.stack([xx.ravel(), yy.ravel(), 1 - xx.ravel(), 1 - yy.ravel()], 1)
    regions = predict(ex, net, grid, readout).reshape(xx.shape)
    x_test, y_test = yin_yang(split="test")
    pred_test = predict(ex, net, x_test, readout)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.8))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    cmap = matplotlib.colors.ListedColormap(["#cccccc"] + colors)
    ax0.imshow(
        regions + 1,
        origin="lower",
        extent=(0, 1, 0, 1),
        cmap=cmap,
        vmin=0,
        vmax=3,
        alpha=0.35,
        interpolation="nearest",
    )
    for k, name in enumerate(YIN_YANG_CLASS_NAMES):
        sel = y_test == k
        ax0.scatter(x_test[sel, 0], x_test[sel, 1], s=6, c=colors[k], label=name)
    wrong = pred_test != y_test
    ax0.scatter(
        x_test[wrong, 0],
        x_test[wrong, 1],
        s=30,
        facecolors="none",
        edgecolors="k",
        linewidths=0.8,
        label="misclassified",
    )
    test = metrics["test"]
    ax0.set_title(f"decision regions; test accuracy {test['accuracy']:.3f}")
    ax0.set_xlabel("x")
    ax0.set_ylabel("y")
    ax0.legend(loc="upper right", fontsize=7)

    # One test sample through the network.
    sample = x_test[args.sample : args.sample + 1]
    train = ex.encode(sample)
    one = jax.tree.map(lambda a: a[0], train)
    nsol = ex.simulate(net, one, throw=True)
    for t, s in zip(np.asarray(one.times), np.asarray(one.sources)):
        ax1.plot([t], [s], "|", color="k", ms=8)
    rows = 5
    hidden = np.asarray(nsol.layers[0].spike_times)
    for j, times in enumerate(hidden):
        times = times[np.isfinite(times)]
        ax1.plot(times, np.full(times.shape, rows + j), "|", color="0.4", ms=3)
    rows += hidden.shape[0]
    if isinstance(nsol.output, sj.Solution):
        out = np.asarray(nsol.output.spike_times)
        for k, times in enumerate(out):
            times = times[np.isfinite(times)]
            row = rows + 4 * k + 4
            ax1.plot(times, np.full(times.shape, row), "|", color=colors[k], ms=10)
            if len(times):
                ax1.plot(times[:1], [row], "o", color=colors[k], ms=5)
        decides = "first output spike (dot) decides"
    else:  # a readout: each output's largest voltage, at its time
        top = int(np.argmax(np.asarray(nsol.output.max_voltage)))
        for k, t in enumerate(np.asarray(nsol.output.max_time)):
            size = 9 if k == top else 4
            ax1.plot([t], [rows + 4 * k + 4], "o", color=colors[k], ms=size)
        decides = "largest output voltage (big dot, at its time) decides"
    ax1.axhline(4.5, color="0.8", lw=0.5)
    ax1.axhline(rows + 0.5, color="0.8", lw=0.5)
    ax1.set_xlim(0, ex.T_END)
    ax1.set_xlabel("time (ms)")
    ax1.set_ylabel("inputs | hidden neurons | outputs")
    ax1.set_title(f"test sample {args.sample}, class {y_test[args.sample]}: {decides}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
