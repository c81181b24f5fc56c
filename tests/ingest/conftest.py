"""One local Ray runtime for all ingestion tests (starting Ray costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from vecdb.ingest.online import init_ray

    # every worker registers the fault-injecting ``faulty://`` filesystem (test_read_faults)
    init_ray(num_cpus=2, runtime_env={"worker_process_setup_hook":
                                      "vecdb.ingest.testing.register"})
    yield ray
    ray.shutdown()
