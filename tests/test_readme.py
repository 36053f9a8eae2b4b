"""The README's Python examples run as written: every ```python block, in order,
in one namespace (later blocks use what earlier ones define), in a fresh process
with JAX's defaults (float32; the tests enable float64) and in a temporary
directory (the examples write `net.nir` and `raster.png`)."""

import pathlib
import re
import subprocess
import sys

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = r"^```python\n(.*?)^```"  # (multiline, dot matches newlines)

# Runs the blocks, printing "ran <i>" after each; a failing block raises with
# its number in the traceback's file name.
_RUNNER = """
import pathlib, re, sys
text = pathlib.Path(sys.argv[1]).read_text()
blocks = re.findall(sys.argv[2], text, re.M | re.S)
ns = {"__name__": "readme"}
for i, block in enumerate(blocks, 1):
    exec(compile(block, f"README.md python block {i}", "exec"), ns)
    print("ran", i, flush=True)
"""


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(_BLOCK, _README.read_text(), re.M | re.S)
    assert len(blocks) >= 6  # the API tour, training, networks, NIR, plots, sweeps
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(_README), _BLOCK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [line for line in proc.stdout.splitlines() if line.startswith("ran ")]
    assert ran == [f"ran {i}" for i in range(1, len(blocks) + 1)], proc.stdout
    for written in ("net.nir", "raster.png"):
        assert (tmp_path / written).stat().st_size > 0, written
