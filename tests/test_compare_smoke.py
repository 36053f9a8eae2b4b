"""Smoke test of `bench/compare.py --quick` in the plain test environment (no peers).

Runs the script in a subprocess, as a user would, and checks that it prints the
comparison table with an exact snode_jax row, that it writes the Markdown section
only where `--results` says, and that it leaves `bench/RESULTS.md` and
`bench/compare.png` alone.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "compare.py"
GUARDED = [ROOT / "bench" / "RESULTS.md", ROOT / "bench" / "compare.png"]


def _stamp(path):
    return path.stat().st_mtime_ns if path.exists() else None


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.slow
def test_compare_quick(tmp_path):
    before = {p: _stamp(p) for p in GUARDED}
    results = tmp_path / "results.md"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout

    header = next(ln for ln in out.splitlines() if ln.startswith("| method |"))
    columns = _cells(header)
    mism_col = columns.index("count mismatches / reference spikes")
    err_col = columns.index("max spike-time error (ms)")
    rows = [_cells(ln) for ln in out.splitlines() if ln.startswith("| ")]
    exact = [r for r in rows if r[0] == "snode_jax" and r[1].startswith("exact")]
    assert len(exact) == 1, out
    wrong, total = (int(v) for v in exact[0][mism_col].split(" / "))
    assert wrong == 0 and total > 0, exact[0]
    assert float(exact[0][err_col]) < 1e-9, exact[0]
    # the other always-present methods ran too (no "failed" rows)
    methods = {r[0] for r in rows}
    assert {"snode_jax", "Euler (JAX)", "diffrax Event"} <= methods, methods
    assert not any("failed" in r[-1] for r in rows), out

    text = results.read_text()
    assert "<!-- compare:start -->" in text and "| snode_jax | exact" in text
    assert {p: _stamp(p) for p in GUARDED} == before
