"""Summarise finished Yin-Yang runs (`examples/yin_yang.py --out DIR`) as the
Markdown table of `examples/RESULTS.md`, with the mean and sample standard
deviation of the test accuracy over the runs.

    python examples/yin_yang_summary.py runs/paper0 runs/paper1 runs/paper2

A run without a test result (stopped before the end) is refused: the table is of
finished runs only.
"""

import argparse
import json
import os
import statistics
import sys


def row(run_dir: str) -> tuple[str, float]:
    path = os.path.join(run_dir, "metrics.json")
    with open(path) as f:
        metrics = json.load(f)
    if metrics.get("test") is None:  # (null while the run trains)
        raise SystemExit(f"{path}: no test result (the run did not finish)")
    config, epochs = metrics["config"], metrics["epochs"]
    if len(epochs) != config["epochs"]:
        raise SystemExit(
            f"{path}: {len(epochs)} epochs recorded, {config['epochs']} configured"
        )
    best = metrics["best"]["epoch"]
    if best == 0:  # no epoch beat the untrained network (no train accuracy for it)
        train_at_best = "n/a"
    else:
        at_best = epochs[best - 1]
        if at_best["epoch"] != best:
            raise SystemExit(
                f"{path}: best epoch {best}, but entry {best - 1} of its epochs is "
                f"epoch {at_best['epoch']}"
            )
        train_at_best = f"{at_best['train_accuracy']:.3f}"
    times = [e["epoch_time_s"] for e in epochs]
    test = metrics["test"]["accuracy"]
    cells = [
        config["seed"],
        best,
        f"{metrics['best']['val_accuracy']:.3f}",
        f"{test:.3f}",
        f"{train_at_best} / {epochs[-1]['train_accuracy']:.3f}",
        epochs[-1]["silent_hidden"],
        max(e["train_silent_label"] for e in epochs),
        f"{statistics.median(times):.1f}",
        f"{min(times):.1f}",
        f"{times[0]:.1f}",
        f"{sum(times):.0f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |", test


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output folders of finished runs")
    args = parser.parse_args(argv)
    header = (
        "| seed | best epoch | validation | test | train accuracy (best epoch / "
        "last) | silent hidden (last) | most silent-label samples in one epoch | "
        "median epoch (s) | fastest epoch (s) | first epoch (s) | total (s) |"
    )
    print(header)
    print("|" + "---:|" * 11)
    tests = []
    for run_dir in args.runs:
        line, test = row(run_dir)
        print(line)
        tests.append(test)
    mean = 100 * statistics.mean(tests)
    std = 100 * statistics.stdev(tests) if len(tests) > 1 else float("nan")
    print(
        f"\nTest accuracy over {len(tests)} runs: mean {mean:.2f} %, "
        f"std {std:.2f} % (sample standard deviation)."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
