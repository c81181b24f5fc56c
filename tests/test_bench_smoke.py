"""Every benchmark script runs end to end in its ``--smoke`` mode (tiny sizes), so none can rot.

Output goes to a temporary folder (VECDB_BENCH_RESULTS), never over the committed results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p.stem
    for p in (ROOT / "bench").glob("*.py")
    if p.stem not in ("__init__", "common", "datasets")
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_smoke(script, tmp_path):
    env = dict(os.environ, VECDB_BENCH_RESULTS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = list(tmp_path.glob("*.json"))
    assert written, f"bench.{script} --smoke wrote no JSON results"
    for path in written:
        doc = json.loads(path.read_text())
        assert doc["rows"], f"{path.name} has no result rows"
