"""Shared fixtures: the real data sets under ../shared/data and a GPU marker that skips cleanly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import vecdb

DATA = Path(os.environ.get("VECDB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data set not found at {path} (set VECDB_DATA)")
    return path


def load_set(name: str) -> dict:
    """Load ``../shared/data/<name>`` as a dict of numpy arrays (+ info)."""
    root = _need(DATA / name)
    out = {p.stem: np.load(p) for p in root.glob("*.npy")}
    info = root / "info.json"
    if info.exists():
        out["info"] = json.loads(info.read_text())
    return out


@pytest.fixture(scope="session")
def sift5k() -> dict:
    return load_set("sift-5k")


@pytest.fixture(scope="session")
def mnist10k() -> dict:
    return load_set("mnist-10k")


@pytest.fixture(scope="session")
def glove_wordnet() -> dict:
    return load_set("glove-wordnet")


def _gpu_available() -> bool:
    try:
        from vecdb.kernels import cupy_backend

        return cupy_backend.available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs cupy and a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- a real ``vecdb serve`` process per test module (server and client tests) -----------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ``vecdb serve`` process on 127.0.0.1 (free port, bootstrap admin key)."""
    from vecdb.server.testing import ServerProcess

    with ServerProcess(str(tmp_path_factory.mktemp("srv") / "data")) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server):
    """An admin SDK client of ``server``."""
    with vecdb.Client(server.address, api_key=server.api_key, retry_s=2) as c:
        yield c
