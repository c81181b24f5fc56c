"""One local Ray runtime for all ingestion tests (starting Ray costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from vecdb.ingest.online import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
