"""One local Ray runtime for all ingestion tests (starting Ray costs seconds), and the bulk
build's SST files read back (``sst_items``), what an online test stored (``stored``)."""

from __future__ import annotations

import numpy as np
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


def _sst_items(folder) -> list[tuple[bytes, bytes]]:
    """Every key/value of the SST files in ``folder/sst``, ingested into a fresh store at
    ``folder/db`` (ascending keys)."""
    import rocksdict

    db = rocksdict.Rdict(str(folder / "db"), options=rocksdict.Options(raw_mode=True))
    try:
        for f in sorted((folder / "sst").iterdir()):
            db.ingest_external_file([str(f)])
        return list(db.items())
    finally:
        db.close()


@pytest.fixture
def sst_items():
    """``_sst_items`` for the bulk reduce tests (a fixture: a test module importing another test
    module, or this conftest, loads it a second time); skips without rocksdict."""
    pytest.importorskip("rocksdict")
    return _sst_items


def _stored(tmp_path) -> tuple[list[int], np.ndarray]:
    """(ids, vectors) of tenant ``t`` in collection ``c`` of the data folder ``tmp_path/db``:
    what an online-ingest test wrote there."""
    import vecdb

    db = vecdb.open(str(tmp_path / "db"))
    try:
        col = db.collection("c")
        ids = col.ids("t")
        return ids.tolist(), col.get(ids, tenant="t").vectors
    finally:
        db.close()


@pytest.fixture
def stored():
    """``_stored`` for the online-ingest tests (a fixture, as ``sst_items``)."""
    return _stored
