"""``python -m vecdb.ingest`` / ``vecdb ingest``: the ingestion jobs from the command line.

::

    online  SOURCE --collection C (--data DIR | --address HOST:PORT [--api-key K])
            [--tenant T] [--workers N] [--batch 5000] [--state FILE] [--id-start N]
            [--create-dim D --metric l2 --index hnsw] [--read-attempts 5]
    bulk    SOURCE --out DIR [--index spann|curator] [--dim D] [--metric l2] [--tenant T]
            [--params JSON]
            [--sample-rows N] [--batch N] [--memory-mb M] [--fill 0.8] [--search-ef EF]
    import  --data DIR --collection C --bulk DIR        (the data folder must be stopped)

Common: ``--ray-address`` to run on a Ray cluster instead of locally. Exit status 0 when every
row was ingested, 3 when some rows or shards were rejected (they are listed), 4 (online) when the
job is incomplete: some shard's reads kept failing with transient errors (storage unreachable
longer than ``--read-attempts`` lasted) or its batches could not be written because the server
was unreachable (UNAVAILABLE, DEADLINE_EXCEEDED, connection errors) through the retry rounds;
listed as ``incomplete:``, and running the same command again (same ``--state``) resumes it
from its acknowledged row; also 4 when the storage did not answer while the job was planned
(nothing ingested, the state untouched: run it again); 1/2 on errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from vecdb.errors import VecdbError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vecdb ingest", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("online", help="stream shards into a collection with N Ray workers")
    o.add_argument("source", nargs="+")
    o.add_argument("--collection", required=True)
    g = o.add_mutually_exclusive_group(required=True)
    g.add_argument("--data", help="embedded data folder")
    g.add_argument("--address", help="server host:port")
    o.add_argument("--api-key")
    o.add_argument("--tenant", default="default")
    o.add_argument("--workers", type=int, default=2)
    o.add_argument("--batch", type=int, default=5000)
    o.add_argument("--state")
    o.add_argument("--id-start", type=int, default=0)
    o.add_argument("--create-dim", type=int, help="create the collection with this dim if missing")
    o.add_argument("--metric", default="l2")
    o.add_argument("--index", default="flat")
    o.add_argument("--index-params", default="{}")
    o.add_argument("--read-attempts", type=int, default=5,
                   help="tries at one row of a transient read error (connection reset, timeout) "
                        "before the shard is given up and reported (default 5)")
    b = sub.add_parser("bulk", help="offline SPANN (or Curator) build into SST files")
    b.add_argument("source", nargs="+")
    b.add_argument("--out", required=True)
    b.add_argument("--dim", type=int)
    b.add_argument("--metric", default="l2")
    b.add_argument("--tenant", default="default")
    b.add_argument("--id-start", type=int, default=0)
    b.add_argument("--index", default="spann", choices=("spann", "curator"),
                   help="collection kind to build (curator: tree trained on a sample, rows "
                        "routed to leaves in parallel)")
    b.add_argument("--params", default="{}", help="SPANN (or Curator) creation knobs as JSON")
    b.add_argument("--sample-rows", type=int,
                   help="training sample (default ~10 rows per head, at least 200k)")
    b.add_argument("--batch", type=int, default=20_000)
    b.add_argument("--memory-mb", type=int, default=256)
    b.add_argument("--fill", type=float, default=0.8,
                   help="lists filled to this fraction of posting_limit (room for appends)")
    b.add_argument("--search-ef", type=int,
                   help="head graph beam with --head-search graph (default: head_ef)")
    b.add_argument("--head-search", default="groups", choices=("groups", "graph"),
                   help="map-stage candidate search: batched GEMMs over head groups or the graph")
    b.add_argument("--probes", type=int, default=8, help="head groups probed per vector")
    b.add_argument("--head-vectors", default="member", choices=("member", "centroid"),
                   help="a leaf's head: its member nearest the mean (SPANN) or the mean")
    i = sub.add_parser("import", help="import a bulk build into a stopped data folder")
    i.add_argument("--data", required=True)
    i.add_argument("--collection", required=True)
    i.add_argument("--bulk", required=True)
    for s in (o, b):
        s.add_argument("--ray-address")
    return p


def _why(e: dict) -> str:
    """The error's reason without the "file: row N: " it may start with (printed before it)."""
    head = f"{e['file']}: row {e['row']}: "
    return e["error"][len(head):] if e["error"].startswith(head) else e["error"]


def _report_errors(errors: list[dict]) -> int:
    """Print the rejected rows/shards and the incomplete (resumable) shards; returns the exit
    status: 4 when a shard is incomplete (re-run to resume), else 3 when something was
    rejected, else 0."""
    final = [e for e in errors if not e.get("retryable")]
    again = [e for e in errors if e.get("retryable")]
    for e in final[:50]:
        print(f"rejected: {e['file']}: row {e['row']}: {_why(e)}", file=sys.stderr)
    if len(final) > 50:
        print(f"... and {len(final) - 50} more (see the job state file)", file=sys.stderr)
    for e in again:  # at most one per shard
        print(f"incomplete: {e['file']}: from row {e['row']}: {_why(e)}", file=sys.stderr)
    if again:
        print(f"{len(again)} shard(s) incomplete (transient read errors or sink unreachable): "
              f"run the same command again, with the same state file, to resume them",
              file=sys.stderr)
        return 4
    return 3 if final else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv``; returns the exit status."""
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "online":
            from vecdb.ingest.online import run_online
            from vecdb.ingest.sources import Retry

            create = None
            if a.create_dim:
                create = {"dim": a.create_dim, "metric": a.metric, "index": a.index,
                          "params": json.loads(a.index_params)}
            r = run_online(a.source, a.collection, data=a.data, address=a.address,
                           api_key=a.api_key, tenant=a.tenant, workers=a.workers,
                           batch_rows=a.batch, state_path=a.state, id_start=a.id_start,
                           create=create, ray_address=a.ray_address,
                           read_retry=Retry(attempts=a.read_attempts))
            print(f"ingested {r['rows_written']:,} rows into {a.collection!r} "
                  f"({r['rows_per_s']:,.0f} rows/s){'' if r['complete'] else ' (incomplete)'}; "
                  f"state: {r['state_path']}")
            return _report_errors(r["errors"])
        if a.cmd == "bulk" and a.index == "curator":
            from vecdb.ingest.bulk_curator import bulk_build_curator, main_summary

            m = bulk_build_curator(a.source, a.out, dim=a.dim, metric=a.metric,
                                   tenant=a.tenant, id_start=a.id_start,
                                   params=json.loads(a.params), sample_rows=a.sample_rows,
                                   batch_rows=a.batch, ray_address=a.ray_address)
            print(f"{main_summary(m)} -> {a.out}")
            return _report_errors(m["errors"])
        if a.cmd == "bulk":
            from vecdb.ingest.bulk import bulk_build_spann

            m = bulk_build_spann(a.source, a.out, dim=a.dim, metric=a.metric, tenant=a.tenant,
                                 id_start=a.id_start, params=json.loads(a.params),
                                 sample_rows=a.sample_rows, batch_rows=a.batch,
                                 memory_bytes=a.memory_mb << 20, ray_address=a.ray_address,
                                 fill=a.fill, search_ef=a.search_ef,
                                 head_search=a.head_search, probes=a.probes,
                                 head_vectors=a.head_vectors)
            print(f"built {m['rows']:,} rows, {m['heads']:,} heads in {m['seconds']:.1f}s "
                  f"-> {a.out}")
            return _report_errors(m["errors"])
        from vecdb.ingest.bulk import import_bulk

        r = import_bulk(a.data, a.collection, a.bulk)
        print(f"imported {r['rows']:,} rows as {a.collection!r} in {r['seconds']:.1f}s")
        return 0
    except VecdbError as e:
        from vecdb.ingest.sources import StorageUnavailable

        if isinstance(e, StorageUnavailable):  # planning: nothing ingested, run it again
            print(f"incomplete: {e}", file=sys.stderr)
            return 4
        print(f"error: {e}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
