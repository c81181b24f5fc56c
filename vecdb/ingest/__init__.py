"""vecdb.ingest: ingestion jobs on Ray (online streaming upserts, offline SPANN bulk build).

::

    from vecdb import ingest
    # online: N Ray workers upsert validated batches into a running collection, resumable
    ingest.run_online("shards/", "docs", data="./data", tenant="acme", workers=2)
    ingest.run_online("shards/*.parquet", "docs", address="host:50051", api_key=KEY)
    # offline: heads + posting lists + SST files, then an atomic import into a stopped folder
    out = ingest.bulk_build_spann("shards/", "./bulk-out", dim=128, tenant="acme")
    ingest.import_bulk("./data", "docs", "./bulk-out")
    # offline Curator: tree trained on a sample, rows routed to leaves by parallel tasks
    ingest.bulk_build_curator("shards/", "./cur-out", dim=128, tenant="acme")
    ingest.import_bulk("./data", "docs2", "./cur-out")

``main(argv)`` is the command line (``python -m vecdb.ingest --help``; ``vecdb ingest`` calls it).
Sources: ``sources.py``; Ray Data datasource over them (``ShardDatasource``, ``map_shards``; the
bulk map/route stages and the online path read through it): ``dataset.py``; map-stage head
search: ``heads.py``; job state and progress: ``state.py``; sinks: ``sinks.py``; online path:
``online.py``; offline paths: ``bulk.py`` (SPANN), ``bulk_curator.py`` (Curator).
"""

from __future__ import annotations

from vecdb.ingest.sources import Columns, discover, plan, read_batches
from vecdb.ingest.state import JobState, Progress


def run_online(*args, **kwargs):
    """See ``vecdb.ingest.online.run_online`` (imported lazily: Ray is an optional extra)."""
    from vecdb.ingest.online import run_online as f

    return f(*args, **kwargs)


def bulk_build_spann(*args, **kwargs):
    """See ``vecdb.ingest.bulk.bulk_build_spann``."""
    from vecdb.ingest.bulk import bulk_build_spann as f

    return f(*args, **kwargs)


def bulk_build_curator(*args, **kwargs):
    """See ``vecdb.ingest.bulk_curator.bulk_build_curator``."""
    from vecdb.ingest.bulk_curator import bulk_build_curator as f

    return f(*args, **kwargs)


def import_bulk(*args, **kwargs):
    """See ``vecdb.ingest.bulk.import_bulk``."""
    from vecdb.ingest.bulk import import_bulk as f

    return f(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Command line; see ``vecdb.ingest.cli``."""
    from vecdb.ingest.cli import main as f

    return f(argv)


__all__ = ["run_online", "bulk_build_spann", "bulk_build_curator", "import_bulk", "main",
           "Columns", "discover", "plan", "read_batches", "JobState", "Progress"]
