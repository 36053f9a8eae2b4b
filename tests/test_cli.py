"""The `snode-jax` command line, run as `python -m snode_jax` in a subprocess (exit
codes, messages, files written), with the sweep's rows checked against the
closed-form LIF; argument errors that need no simulation also in-process."""

import argparse
import csv
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from snode_jax.cli import main, parse_values

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(_ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "snode_jax", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_exits_zero(tmp_path):
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: snode-jax")
    assert all(f"    {c} " in proc.stdout for c in ("demo", "sweep", "bench"))


@pytest.mark.parametrize(
    "command, expected",
    [("demo", "raster"), ("sweep", "START:STOP:NUM"), ("bench", "bench_layer.py")],
)
def test_command_help_exits_zero(command, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: snode-jax {command}") and expected in out


def _closed_form(drive, tau, t_ref, duration):
    """Count, first and last spike (ms) of the LIF (v_rest = v_reset = 0, threshold
    1, C = 1) from rest under a constant drive."""
    v_inf = drive * tau
    if v_inf <= 1.0:
        return 0, np.inf, np.inf
    free = tau * np.log(v_inf / (v_inf - 1.0))
    period = t_ref + free
    count = int(np.floor((duration - free) / period)) + 1
    return count, free, free + (count - 1) * period


def test_sweep_csv_rows_match_closed_form(tmp_path):
    proc = _run(
        "sweep",
        "--param",
        "drive=0:0.3:4",
        "--param",
        "tau_mem=10,25",
        "--set",
        "t_ref=1.5",
        "--duration",
        "150",
        "--chunk-size",
        "3",
        "--out",
        "rates.csv",
        "--plot",
        "rates.png",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 points" in proc.stdout
    with open(tmp_path / "rates.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "drive",
        "tau_mem",
        "count",
        "rate_hz",
        "first_spike_ms",
        "last_spike_ms",
    ]
    drives, taus = np.linspace(0, 0.3, 4), [10.0, 25.0]
    assert [(float(r["drive"]), float(r["tau_mem"])) for r in rows] == [
        (d, t) for d in drives for t in taus
    ]
    spiking = 0
    for r in rows:
        count, first, last = _closed_form(
            float(r["drive"]), float(r["tau_mem"]), 1.5, 150.0
        )
        assert int(r["count"]) == count
        assert float(r["rate_hz"]) == pytest.approx(count * 1000.0 / 150.0, rel=1e-15)
        # float64 closed form on both sides: agreement to rounding.
        for key, value in (("first_spike_ms", first), ("last_spike_ms", last)):
            assert float(r[key]) == pytest.approx(value, rel=1e-12, abs=0)
        spiking += count > 0
    assert spiking >= 4
    assert (tmp_path / "rates.png").stat().st_size > 5_000


def test_sweep_config_toml_to_npz(tmp_path):
    (tmp_path / "grid.toml").write_text(
        'model = "lif"\nduration = 100.0\nout = "r.npz"\n'
        "[grid]\n"
        "drive = [0.08, 0.2]\n"
        "tau_mem = {start = 10.0, stop = 30.0, num = 3}\n"
        "[fixed]\nv_threshold = 1.0\n"
    )
    # A flag overrides the file: 50 ms instead of 100.
    proc = _run(
        "sweep", "--config", "grid.toml", "--duration", "50", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "r.npz")
    assert out["drive"].shape == (6,)
    for d, t, c in zip(out["drive"], out["tau_mem"], out["count"]):
        assert c == _closed_form(d, t, 0.0, 50.0)[0]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("sweep", "--param", "tau_mem=abc"), 2, "--param.*'abc' is not a number"),
        (("sweep", "--param", "drive=0:1:x"), 2, "NUM in '0:1:x'"),
        (("sweep", "--param", "bogus=1,2"), 2, "bogus: not a parameter.*tau_mem"),
        (("sweep",), 2, "nothing to sweep"),
        (("sweep", "--param", "drive=1", "--out", "r.txt"), 2, ".csv or .npz"),
        (("sweep", "--param", "drive=1", "--config", "none.toml"), 2, "none.toml"),
        (("sweep", "--config", "bad.toml"), 2, r"bad.toml: grid.tau_mem: 'x' is not a"),
        (("sweep", "--param", "drive=1", "--duration", "-3"), 2, "--duration"),
        (
            ("sweep", "--param", "drive=1", "--max-spikes", "9999999999"),
            2,
            "--max-spikes must be at most 2147483647",
        ),
        (
            ("sweep", "--param", "drive=1", "--max-steps", "9999999999"),
            2,
            "--max-steps must be at most 2147483647",
        ),
        (("sweep", "--param", "drive=1", "--max-steps", "0"), 2, "must be >= 1"),
        # A budget of 3 steps (2 spikes) per run: drive 1 fires 14 times in 200 ms.
        (
            ("sweep", "--param", "drive=1", "--max-steps", "3", "--no-progress"),
            1,
            r"Increase `max_steps`.* \(--max-steps\)",
        ),
        (("sweep", "--config", "steps.toml", "--no-progress"), 1, r"\(--max-steps\)"),
        (("sweep", "--param", "drive=1", "--model", "hh"), 2, "invalid choice: 'hh'"),
        (("sweep", "--param", "drive=1", "--set", "t_ref=1,2"), 2, "one value"),
        (("sweep", "--param", "drive=1", "--set", "drive=2"), 2, "both as swept"),
        (
            ("sweep", "--config", "both.toml"),
            2,
            r"\['drive'\] given both as swept \(--param, or --config's \[grid\]\)",
        ),
        (
            ("sweep", "--param", "drive=1", "--param", "a=1", "--param", "b=1")
            + ("--model", "izhikevich", "--param", "c=1", "--plot", "p.png"),
            2,
            "one or two swept",
        ),
        (
            ("sweep", "--param", "tau_mem=10,20", "--param", "tau_mem=30"),
            2,
            "--param tau_mem given more than once",
        ),
        (("sweep", "--set", "drive=1", "--set", "drive=2"), 2, "--set drive given"),
        (("sweep", "--param", "drive=1", "--out", "no/such/r.csv"), 2, "--out no/"),
        (("sweep", "--param", "drive=1", "--plot", "p.txt"), 2, "--plot p.txt: must"),
        (("demo", "--out", "demo.txt"), 2, "--out demo.txt: must end in"),
        # Outputs that cannot be written are refused before the run (they failed
        # after it, with status 1 and an OSError that did not name the flag).
        (("demo", "--out", "folder.png"), 2, "--out folder.png: is a folder"),
        (("sweep", "--param", "drive=1", "--plot", "folder.png"), 2, "is a folder"),
        (
            ("sweep", "--param", "drive=1", "--out", "x" * 300 + ".csv"),
            2,
            r"--out x+\.csv: cannot be written \(",
        ),
        (
            ("sweep", "--param", "drive=1", "--plot", "x" * 300 + ".png"),
            2,
            r"--plot x+\.png: cannot be written \(",
        ),
        # One value cannot include both ends (the stop was dropped).
        (
            ("sweep", "--param", "drive=0.1:0.5:1"),
            2,
            r"'0.1:0.5:1': one value \(NUM = 1\) cannot include both ends 0.1 and 0.5",
        ),
        (("sweep", "--config", "num1.toml"), 2, r"grid.drive: one value \(NUM = 1\)"),
        (("bench", "nonexistent"), 2, "invalid choice: 'nonexistent'"),
        (("bench", "--reps", "0"), 2, "--reps must be >= 1"),
        (("demo", "--intervals", "0"), 2, "--intervals must be >= 1"),
        (("demo", "--seed", "-1"), 2, "--seed: must be an integer from 0 to"),
        (("demo", "--seed", "99999999999999999999"), 2, "--seed: must be an integer"),
        (("demo", "--seed", "1.5"), 2, "--seed: '1.5' is not an integer"),
        (("demo", "--intervals", "100000000000"), 1, "that many --intervals do"),
        ((), 2, "required: COMMAND"),
        # Values the model refuses are bad arguments too, named with their flag.
        (
            ("sweep", "--param", "tau_mem=10,-5", "--no-progress"),
            2,
            r"--param tau_mem=-5.0: the lif model refuses it: `tau_mem` must be > 0",
        ),
        (
            ("sweep", "--param", "drive=1", "--set", "v_reset=2", "--no-progress"),
            2,
            r"--set v_reset=2.0: the lif model refuses it: `v_reset` must be <",
        ),
        (
            ("sweep", "--param", "drive=1e39", "--dtype", "float32"),
            2,
            "--param drive: values beyond the range of float32",
        ),
        (
            ("sweep", "--param", "drive=0:1:100000000000"),
            2,
            "100000000000 values in '0:1:100000000000' do not fit in memory",
        ),
        # The grid's size, before it is built (refused after 31 s, status 1).
        (
            (
                "sweep",
                "--param",
                "tau_mem=1:2:50000",
                "--param",
                "v_threshold=1:2:50000",
            ),
            2,
            r"the grid has 2500000000 points \(50000 x 50000\); at most 2147483647",
        ),
        # A config file's fixed values are checked as its grid's (NaN reached the
        # run), its counts too, and a file that is not text is named.
        (
            ("sweep", "--config", "nan.toml"),
            2,
            r"nan.toml: fixed.tau_mem: 'nan' is not",
        ),
        (
            ("sweep", "--config", "huge.toml"),
            2,
            "grid.drive: 100000000000 values do not fit in memory",
        ),
        (("sweep", "--config", "binary.toml"), 2, r"binary.toml: not UTF-8 text"),
        # A model or dtype that is not a string (a list is not hashable).
        (("sweep", "--config", "list.toml"), 2, r"model: \['lif'\] is not one of"),
        (("sweep", "--config", "table.toml"), 2, r"dtype: \{\} is not 'float32'"),
        # A run that fails on the duration names it.
        (
            (
                "sweep",
                "--param",
                "drive=0.1",
                "--duration",
                "1e39",
                "--dtype",
                "float32",
            )
            + ("--no-progress",),
            1,
            r"`interval` must keep the run's end time finite .* \(--duration\)",
        ),
    ],
)
def test_bad_arguments_in_process(args, code, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A grid whose list holds something other than a number.
    (tmp_path / "bad.toml").write_text('model = "lif"\n[grid]\ntau_mem = [5, "x"]\n')
    # A step budget in a config file.
    (tmp_path / "steps.toml").write_text("max_steps = 3\n[grid]\ndrive = [1.0]\n")
    # A parameter in both tables of a config file.
    (tmp_path / "both.toml").write_text("[grid]\ndrive = [1, 2]\n[fixed]\ndrive = 3\n")
    (tmp_path / "num1.toml").write_text("[grid]\ndrive = {start=1, stop=2, num=1}\n")
    (tmp_path / "nan.toml").write_text("[grid]\ndrive = [1]\n[fixed]\ntau_mem = nan\n")
    (tmp_path / "huge.toml").write_text(
        "[grid]\ndrive = {start=0, stop=1, num=100000000000}\n"
    )
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    (tmp_path / "list.toml").write_text('model = ["lif"]\n[grid]\ndrive = [1.0]\n')
    (tmp_path / "table.toml").write_text("dtype = {}\n[grid]\ndrive = [1.0]\n")
    (tmp_path / "folder.png").mkdir()
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's own errors
        status = e.code
    assert status == code
    import re

    assert re.search(message, capsys.readouterr().err)
    # Nothing written: no output left behind by a refused command.
    assert {p.name for p in tmp_path.iterdir()} <= {
        "bad.toml", "steps.toml", "both.toml", "num1.toml", "nan.toml", "huge.toml",
        "binary.toml", "folder.png", "list.toml", "table.toml"
    }  # fmt: skip


def test_output_through_a_link_keeps_the_link(tmp_path, monkeypatch):
    """The check that an output can be written leaves a link alone: the results
    go where it points, even where that file does not exist yet (the check had
    created the target, then removed the link)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link.csv").symlink_to("real/target.csv")
    assert (
        main(["sweep", "--param", "drive=0.1", "--out", "link.csv", "--no-progress"])
        == 0
    )
    assert (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "real" / "target.csv").read_text().startswith("drive,count")


def test_bad_arguments_exit_codes_in_subprocess(tmp_path):
    proc = _run("sweep", "--param", "tau_mem=abc", cwd=tmp_path)
    assert proc.returncode == 2
    assert "argument --param" in proc.stderr and "'abc'" in proc.stderr
    # A failed run: the simulation refuses a point (inside compiled code), here a
    # combination of values each of which the model accepts.
    proc = _run(
        "sweep", "--param", "v_reset=0,0.5", "--param", "v_threshold=1,0.4",
        "--set", "drive=0.2", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "snode-jax sweep: error:" in proc.stderr
    assert "need v_reset < v_threshold" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_flags_override_the_file_and_float64_values_stay_float64(tmp_path):
    """In a fresh process (64-bit types off until the command turns them on): a
    value that float32 cannot hold is checked in float64, the default `--dtype`
    (it was refused as beyond float32's range); a flag overrides the file's
    entry for its parameter, swept or fixed (it was refused as given both ways)."""
    (tmp_path / "grid.toml").write_text("[grid]\ntau_mem = [10.0, 20.0]\n")
    proc = _run(
        "sweep", "--config", "grid.toml", "--set", "tau_mem=15", "--param", "drive=1",
        "--set", "v_threshold=1e39", "--duration", "5", "--no-progress", "--out",
        "r.csv", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "r.csv").read_text().splitlines()
    # One point (the file's tau_mem axis gave way), no spike below 1e39.
    assert rows[0].startswith("drive,count") and rows[1].startswith("1.0,0,")
    assert len(rows) == 2


def test_interrupted_sweep_exits_130(tmp_path, capsys, monkeypatch):
    import snode_jax.cli as cli

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "run_sweep", interrupt)
    assert main(["sweep", "--param", "drive=1", "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == "snode-jax sweep: interrupted"


def test_parse_values():
    np.testing.assert_array_equal(parse_values("10:50:5"), [10, 20, 30, 40, 50])
    np.testing.assert_array_equal(parse_values("1,2.5, 4"), [1, 2.5, 4])
    np.testing.assert_array_equal(parse_values("3"), [3.0])
    np.testing.assert_array_equal(parse_values("0.5:0.5:1"), [0.5])
    for bad in ("", "1,,2", "1:2", "1:2:0", "1:2:3:4", "nan", "1:inf:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_values(bad)


def test_bench_builtin_and_script(capsys):
    assert main(["bench", "--quick", "--reps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tutorial" in out and "8 x 64 x 100 x 32" in out
    # A script of bench/, its own options after its name (--help: prints only).
    assert main(["bench", "rk_step", "--help"]) == 0


def test_demo_writes_png(tmp_path):
    proc = _run("demo", "--out", "raster.png", "--intervals", "50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Total spikes" in proc.stdout
    data = (tmp_path / "raster.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_bench_names_every_script():
    from snode_jax.cli import BENCH_SCRIPTS

    scripts = {p.name for p in (_ROOT / "bench").glob("bench_*.py")} | {"compare.py"}
    assert set(BENCH_SCRIPTS.values()) == scripts


def test_a_refused_float64_sweep_leaves_64_bit_types_as_they_were(tmp_path, capsys):
    # `--dtype float64` switches JAX's 64-bit types on before the config's other
    # values are checked; `main` called in-process left them on after refusing
    # the duration, for a run that never happened.
    (tmp_path / "neg.toml").write_text("duration = -1.0\n[grid]\ndrive = [1.0]\n")
    argv = ["sweep", "--config", str(tmp_path / "neg.toml"), "--dtype", "float64"]
    jax.config.update("jax_enable_x64", False)
    try:
        assert main([*argv, "--no-progress"]) == 2
        assert jax.config.read("jax_enable_x64") is False
    finally:
        jax.config.update("jax_enable_x64", True)
    assert "--duration must be > 0 (ms), got -1.0" in capsys.readouterr().err
