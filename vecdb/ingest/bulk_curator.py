"""Offline bulk build of a Curator collection on Ray, imported into a stopped data folder with
``import_bulk`` (the same import as the SPANN bulk build).

::

    shards --(1) sample tasks (bulk._sample_task)--> sample (``train_sample`` rows by default)
           --driver: CuratorIndex.train_tree (Curator's own hierarchical k-means)--> tree
    shards --(2) Ray Data: read (``dataset.ShardDatasource``, one task per shard) fused with
               ``map_batches(_route_block)``; per batch, with the tree loaded once per worker
               process from ``tree.npz``: vectors/acl/payload SST (keys = slots, one disjoint
               range per batch; bulk's ``write_engine_rows``), the prepared vectors (a .npy per
               batch) and (slot, leaf) arrays per batch (``CuratorIndex.route``: where ``add``
               would put it)
    import_bulk: Database.import_sst (engine): SST files ingested, maps rebuilt from them; the
               Curator index adopted (``curator_adopter``): the trained tree plus, per task,
               ``place_routed`` of its vectors at their precomputed leaves with the engine's
               access lists; checkpoint, reopen, count, rename into place.

Why this split: in the serial path every ``Collection.upsert`` routes its vectors through the
tree under the collection's write lock (one core), and the tree is trained early on a small
prefix and retrained as the data grows (8x by default). Here the tree is trained once, on a
sample standing for all rows, and the routing (the per-vector CPU work: one centroid scan per
tree level) runs in parallel tasks next to the SST writing. What stays serial is the import:
the engine's scan of the ingested families, placing and granting (native, cheap per vector) and
the checkpoint.

Memory: a route task holds one batch (``batch_rows``) plus the tree (a few MB). The driver holds
the sample. Curator is an in-memory index: the process that imports (and later serves) the
collection holds every vector in RAM (``N x dim x 4`` bytes) plus its shortlists; nothing in the
build itself holds more than a batch.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vecdb.errors import FailedPrecondition, InvalidArgument
from vecdb.ingest import cpu
from vecdb.ingest.bulk import (
    _fold_hist,
    _rss,
    _SstSink,
    check_unique_ids,
    fresh_out,
    sample_stage,
    save_ids,
    write_engine_rows,
)
from vecdb.ingest.dataset import map_shards
from vecdb.ingest.sources import (
    DEFAULT_COLUMNS,
    Columns,
    check_dim,
    discover,
    plan,
)
from vecdb.ingest.state import write_json_atomic

ENGINE_FAMILIES = ("vectors", "acl", "payload")


def _curator(dim: int, metric: str, params: dict[str, Any]):
    """A validated, empty ``CuratorIndex`` for ``params`` (bad knobs: InvalidArgument)."""
    from vecdb.index.curator import CuratorIndex

    return CuratorIndex(dim, metric, **params)


_TREES: dict[tuple, Any] = {}


def route_index(out: str, dim: int, metric: str, params: dict[str, Any]):
    """The build's ``CuratorIndex`` over its trained tree (``out/tree.npz``), made once per
    worker process and build (keyed by the tree file's identity)."""
    from vecdb.index.curator import CuratorIndex

    path = os.path.join(out, "tree.npz")
    st = os.stat(path)
    key = (path, st.st_ino, st.st_mtime_ns, dim, metric, repr(sorted(params.items())))
    if key not in _TREES:
        _TREES.clear()
        with np.load(path) as z:
            tree = {k: z[k] for k in z.files}
        _TREES[key] = CuratorIndex.with_tree(dim, metric, tree, **params)
    return _TREES[key]


def _route_block(piece: Any, *, offsets: list[int], dim: int, metric: str,
                 params: dict[str, Any], tenant_ids: dict[str, int], tenant: str, id_start: int,
                 out: str) -> dict[str, Any]:
    """The route stage's Ray Data function, on one batch of one shard (``dataset.Piece``):
    engine rows (SSTs), prepared vectors (a .npy the import reads) and each valid row's leaf
    (``parts/leaves-<shard>-<row>.npz``: slots int64, leaves int32). Files are named after the
    shard number and the batch's first good row (a retried task rewrites the same files)."""
    from vecdb.kernels import prepare

    t0 = time.perf_counter()
    b = piece.batch
    split = {"read": 0.0, "engine_rows": 0.0, "route": 0.0}
    res: dict[str, Any] = {"shard": b.shard, "good": len(b), "errors": piece.errors, "sst": {},
                           "split": split}
    if piece.failed or not len(b):
        res.update(good=0, rss=_rss(), seconds=time.perf_counter() - t0)
        if piece.failed:
            res["failed"] = piece.failed
        return res
    idx = route_index(out, dim, metric, params)
    X = prepare(b.vectors, dim, metric)
    lo, hi = int(b.rows[0]), int(b.rows[-1]) + 1
    tag = f"{piece.shard:06d}-{lo:012d}"
    t2 = time.perf_counter()
    split["read"] += t2 - t0
    slots = (offsets[piece.shard] + b.rows).astype(np.int64)
    sst = {f: _SstSink(os.path.join(out, "sst", f"{f}-{tag}.sst"), f)
           for f in ENGINE_FAMILIES}
    maps = os.path.join(out, "sst", f"maps-{tag}.npy")
    ids = write_engine_rows(sst, b, X, slots, tenant_ids, tenant, id_start, maps)
    vec_path = os.path.join(out, "parts", f"vec-{tag}.npy")
    vecs = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(hi - lo, dim))
    vecs[b.rows - lo] = X
    vecs.flush()
    del vecs
    t3 = time.perf_counter()
    split["engine_rows"] += t3 - t2
    leaves = idx.route(X)
    leaf_path = os.path.join(out, "parts", f"leaves-{tag}.npz")
    np.savez(leaf_path, slots=slots, leaves=leaves)
    # the batch's leaf counts go to a file, not into the result: a few thousand leaves made it
    # tens of KB, past Ray's inline limit into the object store the driver maps
    hist_path = os.path.join(out, "parts", f"hist-{tag}.npy")
    np.save(hist_path, np.stack(np.unique(leaves, return_counts=True)).astype(np.int64))
    split["route"] += time.perf_counter() - t3
    files = {f: s.finish() for f, s in sst.items()}
    offset = int(offsets[piece.shard] + lo)
    res.update(sst={f: p for f, p in files.items() if p}, maps=maps, rss=_rss(),
               seconds=time.perf_counter() - t0, offset=offset,
               part={"offset": offset, "vectors": os.path.basename(vec_path),
                     "leaves": os.path.basename(leaf_path), "rows": len(b)},
               leaf_hist=hist_path,
               **save_ids(ids, os.path.join(out, "ids"), tag))
    return res


def bulk_build_curator(source: str | Sequence[str], out: str, *, dim: int | None = None,
                       metric: str = "l2", tenant: str = "default", id_start: int = 0,
                       params: dict[str, Any] | None = None,
                       columns: Columns = DEFAULT_COLUMNS, sample_rows: int | None = None,
                       batch_rows: int = 20_000, ray_address: str | None = None,
                       num_cpus: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Build a Curator collection's files from ``source`` into folder ``out`` (see module doc);
    ``import_bulk(data, name, out)`` then makes it a collection of a stopped data folder.

    ``params``: Curator creation knobs (nlist, fanout, leaf_size, max_sl_size, train_sample,
    ...), the same as ``create_collection(index="curator", params=...)``. ``sample_rows``: the
    tree's training sample (default ``train_sample``, what a retrain samples); below
    ``train_size`` valid rows the tree stays a single leaf, as in the serial index. Slots are
    global row numbers; ids the Parquet id column or ``id_start`` + row number; owner the
    Parquet tenant column or ``tenant``; bad rows and shards are reported in
    ``manifest["errors"]`` (file, row) and skipped. Writes ``out/manifest.json`` and returns it.
    """

    from vecdb.ingest.online import init_ray
    from vecdb.kernels import check_metric

    metric = check_metric(metric)
    params = dict(params or {})
    if sample_rows is not None and (isinstance(sample_rows, bool)
                                    or not isinstance(sample_rows, int) or sample_rows < 1):
        raise InvalidArgument(f"sample_rows must be a positive int, got {sample_rows!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidArgument(f"batch_rows must be a positive int, got {batch_rows!r}")
    t_start = time.perf_counter()
    files = discover(source)
    shards, rejected = plan(files, columns)
    dim = check_dim(dim, shards)
    try:
        proto = _curator(dim, metric, params)
    except TypeError as e:
        raise InvalidArgument(f"bad Curator parameter(s) {sorted(params)}: {e}") from None
    cfg = proto.params
    fresh_out(out, ("sst", "parts", "ids"))
    init_ray(ray_address, num_cpus)
    stages: dict[str, dict[str, Any]] = {}
    total = sum(s.rows for s in shards)

    def log(msg: str) -> None:
        if progress:
            print(f"bulk-curator: {msg}", flush=True)

    # (1) sample + tree
    t0 = time.perf_counter()
    c0 = cpu.snapshot()
    want = cfg["train_sample"] if sample_rows is None else sample_rows
    p = min(1.0, 1.05 * want / max(1, total))  # a little over, then trimmed to ``want``
    sample, n_good, errors, failed, names, _ = sample_stage(
        shards, dim, metric, p, cfg["seed"], batch_rows, columns, rejected, tenant)
    if len(sample) > want:  # Bernoulli sampling overshoots a little: keep exactly ``want``
        pick = np.random.default_rng(cfg["seed"]).choice(len(sample), want, replace=False)
        sample = sample[np.sort(pick)]
    t1 = time.perf_counter()
    c1 = cpu.snapshot()
    if n_good == 0:
        raise FailedPrecondition("no valid vectors in the source")
    trained = n_good >= cfg["train_size"] and len(sample) > 0
    tree = proto.train_tree(sample, n_good) if trained else proto._single_leaf()
    trained_on = n_good if trained and len(tree["parent"]) > 1 else 0
    np.savez(os.path.join(out, "tree.npz"), **tree)
    stages["sample"] = {"seconds": t1 - t0, "rows": int(len(sample)),
                        "cpu_seconds": cpu.cpu_between(c0, c1)}
    stages["train"] = {"seconds": time.perf_counter() - t1, "nodes": int(len(tree["parent"])),
                       "leaves": int(np.sum(np.diff(tree["child_ptr"]) == 0)),
                       "cpu_seconds": cpu.cpu_between(c1, cpu.snapshot()),
                       "driver_peak_rss": _rss()}
    del sample, proto
    log(f"tree of {stages['train']['nodes']} nodes from a {stages['sample']['rows']}-row sample "
        f"({stages['sample']['seconds'] + stages['train']['seconds']:.1f}s)")
    tenant_ids = {t: i for i, t in enumerate(sorted(names))}

    # (2) route + engine rows
    t0 = time.perf_counter()
    c0 = cpu.snapshot()
    todo = [s for s in shards if s.path not in failed]
    hist = np.zeros(len(tree["parent"]), dtype=np.int64)

    def fold(r: dict[str, Any]) -> dict[str, Any]:
        """Add a batch's leaf counts to the totals as it arrives (as the SPANN build does with
        its list histogram) and keep only its small metadata."""
        leaf_hist = r.pop("leaf_hist", None)  # the file _route_block wrote; deleted once added
        if leaf_hist is not None:
            _fold_hist(leaf_hist, hist)
        return r

    res, rd = map_shards(todo, dim, _route_block, {
        "offsets": [s.offset for s in todo], "dim": dim, "metric": metric, "params": params,
        "tenant_ids": tenant_ids, "tenant": tenant, "id_start": id_start, "out": out},
        batch_rows=batch_rows, columns=columns, on_result=fold)
    res.sort(key=lambda r: r.get("offset", -1))  # key order of the SST files
    sst: dict[str, list[str]] = {f: [] for f in ENGINE_FAMILIES}
    sst["postings"] = []
    rows = 0
    for r in res:
        rows += r["good"]
        if "failed" in r:
            errors += r["errors"][-1:]  # the shard failure (its row errors came with sampling)
            continue
        for f, path in r["sst"].items():
            sst[f].append(path)
    ids_check = check_unique_ids(res)
    shutil.rmtree(os.path.join(out, "ids"), ignore_errors=True)
    maps = [r["maps"] for r in res if "maps" in r]
    part_list = sorted((r["part"] for r in res if "part" in r), key=lambda x: x["offset"])
    leaf_rows = hist[hist > 0]
    stages["route"] = {"seconds": time.perf_counter() - t0, "rows": rows, "tasks": len(todo),
                       "cpu_seconds": cpu.cpu_between(c0, cpu.snapshot()),
                       "task_seconds": sum(r["seconds"] for r in res), "batches": len(res),
                       "ray_data": {"operators": rd["operators"], "fused": rd["fused"]},
                       "id_check": ids_check,
                       "task_split": {k: sum(r["split"][k] for r in res)
                                      for k in ("read", "engine_rows", "route")},
                       "leaves_used": int(len(leaf_rows)),
                       "max_leaf_rows": int(leaf_rows.max()) if len(leaf_rows) else 0,
                       "worker_peak_rss": max((r["rss"] for r in res), default=0)}
    log(f"route: {rows} rows into {len(leaf_rows)} leaves ({stages['route']['seconds']:.1f}s)")
    del res
    manifest = {"format": 1, "kind": "curator", "dim": dim, "metric": metric, "params": params,
                "config": cfg, "tree": "tree.npz", "trained_on": int(trained_on),
                "rows": rows, "slots": total, "tenants": sorted(tenant_ids, key=tenant_ids.get),
                "sst": sst, "maps": maps, "parts": part_list, "errors": errors, "stages": stages,
                "seconds": time.perf_counter() - t_start,
                "sst_bytes": sum(os.path.getsize(f) for fs in sst.values() for f in fs)}
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


def curator_adopter(man: dict[str, Any], bulk_dir: str,
                    chunk: int = 1 << 18) -> Callable[[Any, Any], Any]:
    """The ``adopt`` hook of ``Database.import_sst`` for a Curator bulk build: a
    ``CuratorIndex`` with the build's trained tree, each task's vectors placed at the leaves the
    task computed (``place_routed``; no routing here) with the access lists of the engine's maps
    (owner + grants, read from the ingested families). ``chunk`` rows at a time: the vectors go
    straight from the task files into the index's own matrix."""
    def adopt(store, st):
        from vecdb.index.curator import CuratorIndex

        with np.load(os.path.join(bulk_dir, man["tree"])) as z:
            tree = {k: z[k] for k in z.files}
        idx = CuratorIndex.with_tree(man["dim"], man["metric"], tree, int(man["trained_on"]),
                                     **man["params"])
        idx.reserve(int(man["slots"]))
        for part in man["parts"]:
            with np.load(os.path.join(bulk_dir, "parts", part["leaves"])) as z:
                slots, leaves = z["slots"], z["leaves"]
            if len(slots) and (slots.max() >= st.high or (st.slot_owner[slots] < 0).any()):
                raise FailedPrecondition(f"bulk part {part['leaves']}: slots missing from the "
                                         f"ingested vectors")
            mm = np.load(os.path.join(bulk_dir, "parts", part["vectors"]), mmap_mode="r")
            for s in range(0, len(slots), chunk):
                sl = slots[s:s + chunk]
                X = np.ascontiguousarray(mm[sl - int(part["offset"])])
                idx.place_routed(X, sl, leaves[s:s + chunk], st.acl_csr(sl))
            del mm
        return idx

    return adopt


def main_summary(man: dict[str, Any]) -> str:
    """One line for the command line: rows, tree, time."""
    return (f"built {man['rows']:,} rows, a tree of {man['stages']['train']['nodes']:,} nodes "
            f"in {man['seconds']:.1f}s")
