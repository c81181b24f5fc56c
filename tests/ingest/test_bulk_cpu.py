"""The bulk build's cheaper map/reduce pieces give what the plain numpy they replace gives: the
run histograms (``_sorted_counts`` vs ``np.unique``), the reduce's list order (``_list_order`` vs
``np.lexsort``) and the reduce's output vs a reference written record by record (the cap keeping
non-nearest records by distance, ties, split hub lists left out of the postings, runs whose slots
cross vector files: the gather's fallback, which refuses slots outside every vector file), and
the map's worker memory readings (one on each worker's first batch of every build)."""

from __future__ import annotations

import numpy as np
import pytest

from vecdb.index._spann_parts import record_dtype
from vecdb.ingest import bulk
from vecdb.ingest.bulk import _list_order, _reduce_task, _sorted_counts, run_dtype


def test_sorted_counts_is_unique_with_counts():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 5000):
        a = np.sort(rng.integers(0, 40, n).astype(np.int32))
        u, c = np.unique(a, return_counts=True)
        v, d = _sorted_counts(a)
        assert np.array_equal(u, v) and np.array_equal(c, d)
        assert v.dtype == u.dtype and d.dtype == c.dtype


_POOL = np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf], dtype=np.float32)


def _distances(n: int, rng: np.random.Generator) -> np.ndarray:
    """Half standard normal (ip: negative distances too), half from a small pool: ties, -0.0
    next to +0.0 (lexsort ties them), infinities; shuffled."""
    d = rng.choice(_POOL, n)
    d[: n // 2] = rng.standard_normal(n // 2).astype(np.float32)
    return rng.permutation(d)


def _records(n: int, rng: np.random.Generator, lists: int) -> np.ndarray:
    r = np.empty(n, run_dtype())
    r["lid"] = rng.integers(0, lists, n)
    r["sec"] = rng.random(n) < 0.7
    r["d"] = _distances(n, rng)
    r["slot"] = rng.permutation(n)
    return r


def test_list_order_is_lexsort():
    rng = np.random.default_rng(1)
    for n, lists in ((0, 1), (1, 1), (50, 3), (20_000, 300), (20_000, 2**31 - 1)):
        r = _records(n, rng, lists)
        assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))
    r = _records(1000, rng, 10)
    r["d"][::7] = np.nan  # never from finite vectors: lexsort itself
    assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))
    r["sec"][::5] = 2
    assert np.array_equal(_list_order(r), np.lexsort((r["d"], r["sec"], r["lid"])))


def _reference(runs: list[np.ndarray], V: np.ndarray, heads: np.ndarray, cap: int, dim: int,
               leave_out: tuple[int, ...] = ()) -> tuple[dict[bytes, bytes], dict[int, bytes]]:
    """Postings written record by record: per list, nearest-list records then by distance (ties
    in run order), the first max(primaries, cap) kept, each with its vector from the whole vector
    array. Lists in ``leave_out`` (split hub lists) get no keys; their kept records are returned
    too (list id -> the records' bytes)."""
    cat = np.concatenate(runs)
    out, kept = {}, {}
    for h in range(len(heads)):
        r = cat[cat["lid"] == h]
        r = r[np.lexsort((r["d"], r["sec"]))]
        r = r[: max(int((r["sec"] == 0).sum()), cap)]
        rec = np.zeros(len(r), record_dtype(dim))
        rec["slot"], rec["ver"] = r["slot"], 1
        for i, s in enumerate(r["slot"].tolist()):
            rec["vec"][i] = V[s]
        if h in leave_out:
            kept[h] = rec.tobytes()
            continue
        key = h.to_bytes(8, "big")
        out[b"H" + key] = heads[h].tobytes()
        out[b"P" + key] = rec.tobytes()
    return out, kept


def _write_case(folder, rng: np.random.Generator, V: np.ndarray, lists: np.ndarray,
                weights: np.ndarray, vec_cuts: list[int], run_cuts: list[int]
                ) -> tuple[list[np.ndarray], list[str], list[tuple[int, str]]]:
    """Vector files cut at ``vec_cuts``, one run per ``run_cuts`` piece (one map batch: 3
    records per vector, the first its nearest list; list ids drawn from ``lists`` with
    ``weights``, distances from ``_distances``), each sorted by list id as the map writes it."""
    n = len(V)
    (folder / "sst").mkdir(parents=True)
    vec_files = []
    for i, lo in enumerate(vec_cuts):
        hi = vec_cuts[i + 1] if i + 1 < len(vec_cuts) else n
        np.save(folder / f"vec-{i}.npy", V[lo:hi])
        vec_files.append((lo, str(folder / f"vec-{i}.npy")))
    runs, paths = [], []
    for i, lo in enumerate(run_cuts):
        hi = run_cuts[i + 1] if i + 1 < len(run_cuts) else n
        slots = np.repeat(np.arange(lo, hi), 3)  # up to 3 replicas per vector
        r = np.empty(len(slots), run_dtype())
        r["lid"] = rng.choice(lists, len(slots), p=weights / weights.sum())
        r["sec"] = np.arange(len(slots)) % 3 != 0
        r["d"] = _distances(len(slots), rng)
        r["slot"] = slots
        r = r[np.argsort(r["lid"], kind="stable")]
        np.save(folder / f"run-{i}.npy", r)
        runs.append(r)
        paths.append(str(folder / f"run-{i}.npy"))
    return runs, paths, vec_files


def _records_of(raw: bytes, dim: int) -> list[bytes]:
    size = record_dtype(dim).itemsize
    return sorted(raw[i:i + size] for i in range(0, len(raw), size))


_H, _WIDE = 30, 4200
# (runs' cuts, vector files' cuts, reduce ranges (lo, hi, task), split lists, list count);
# "wide": its non-empty lists lie around the 4096-list cut of its range [7, 4200) (at 4103),
# the split one (4150) past it
_REDUCE_CASES = {
    "aligned": ([0, 300, 600], [0, 300, 600], [(0, 11, 0), (11, 30, 1)], {}, _H),
    "crossing": ([0, 400], [0, 250, 610], [(0, 11, 0), (11, 30, 1)], {}, _H),
    "split": ([0, 300, 600], [0, 300, 600], [(0, 3, 0), (3, 11, 1), (11, 30, 2)],
              {5: (_H, 3)}, _H),
    "wide": ([0, 450], [0, 450], [(0, 7, 0), (7, _WIDE, 1)], {4150: (_WIDE, 2)}, _WIDE),
}


@pytest.mark.parametrize("name", list(_REDUCE_CASES))
def test_reduce_matches_a_record_by_record_reference(tmp_path, sst_items, name):
    """Runs aligned with the vector files (one map batch each) and runs that cross vector files;
    lists whose primaries exceed the cap (only they are kept), lists under the cap that keep
    their nearest non-primary records by distance and drop the rest, lists kept whole; a split
    hub list left out of the postings (its kept records in the split parts) in a range not
    starting at 0, and a range of more than 4096 lists (the postings are written per 4096):
    same postings as the reference, dropped records counted."""
    run_cuts, vec_cuts, ranges, split, lists = _REDUCE_CASES[name]
    rng = np.random.default_rng(2)
    dim, cap, n = 8, 20, 900
    V = rng.standard_normal((n, dim)).astype(np.float32)
    # list sizes from ~8 to ~250 records (~3 to ~85 primaries) around cap = 20
    w = np.array([6, 4, 3, 2, 1.5, 2.5, 1, 0.7, 0.4, 0.2] * 3, dtype=np.float64)
    ids = np.arange(_H) if lists == _H else np.r_[0:5, 4090:4110, 4150:4155]
    heads = rng.standard_normal((lists, dim)).astype(np.float32)
    np.save(tmp_path / f"heads-{name}.npy", heads)
    folder = tmp_path / name
    runs, paths, vec_files = _write_case(folder, rng, V, ids, w, vec_cuts, run_cuts)
    cat = np.concatenate(runs)
    size = np.bincount(cat["lid"], minlength=lists)
    prim = np.bincount(cat["lid"][cat["sec"] == 0], minlength=lists)
    if lists == _H:  # the cap's three cases are all there
        assert ((prim >= cap) & (size > prim)).any()  # only the nearest-list records kept
        assert ((prim < cap) & (size > cap)).any()  # nearest non-primaries kept, rest dropped
        assert ((size <= cap) & (size > prim)).any()  # kept whole, non-primaries included
    res = _reduce_task(ranges, paths, str(tmp_path / f"heads-{name}.npy"), dim, cap,
                       vec_files, str(folder), split, 1.0, 0, 2 * cap)
    got = dict(sst_items(folder))
    want, kept = _reference(runs, V, heads, cap, dim, tuple(split))
    new = {k: v for k, v in got.items() if int.from_bytes(k[1:], "big") >= lists}
    assert {k: v for k, v in got.items() if k not in new} == want
    assert sum(r["dropped"] for r in res) > 0
    assert sum(r["records"] + r["dropped"] for r in res) == len(cat)
    for h, (first, reserved) in split.items():
        r = next(r for r in res if r["lo"] <= h < r["lo"] + len(r["sizes"]))
        assert r["sizes"][h - r["lo"]] == -1
        kept_n = len(kept[h]) // record_dtype(dim).itemsize
        assert cap < kept_n <= reserved * cap  # over the cap, within its reserved ids' room
        assert 2 <= len(r["new_ids"]) <= reserved  # split in parts, within its reserved ids
        assert r["new_ids"].tolist() == list(range(first, first + len(r["new_ids"])))
        parts = [new[b"P" + int(i).to_bytes(8, "big")] for i in r["new_ids"].tolist()]
        assert _records_of(b"".join(parts), dim) == _records_of(kept[h], dim)
        assert len(new) == 2 * len(r["new_ids"])  # a head and a posting per part, no more
    if not split:
        assert not new


@pytest.mark.parametrize("parts, match", [
    ([(100, 300), (400, 500)], "below the first vector file"),  # slots 0..99
    ([(0, 300), (300, 300)], "past the vector file"),  # slots 600..899: past the last file
    ([(0, 300), (400, 500)], "past the vector file"),  # slots 300..399: a gap between files
])
def test_reduce_refuses_slots_outside_the_vector_files(tmp_path, parts, match):
    """A record whose slot no vector file holds (below the first file's offset, past a file's
    rows) raises: the gather's fallback used to read the last file with negative rows."""
    rng = np.random.default_rng(3)
    n, dim = 900, 8
    V = rng.standard_normal((n, dim)).astype(np.float32)
    _, paths, _ = _write_case(tmp_path, rng, V, np.arange(10), np.ones(10), [0], [0, 450])
    files = []
    for i, (off, rows) in enumerate(parts):  # (first slot, rows) of each vector file
        np.save(tmp_path / f"part-{i}.npy", V[off:off + rows])
        files.append((off, str(tmp_path / f"part-{i}.npy")))
    np.save(tmp_path / "heads.npy", rng.standard_normal((10, dim)).astype(np.float32))
    with pytest.raises(RuntimeError, match=match):
        _reduce_task([(0, 10, 0)], paths, str(tmp_path / "heads.npy"), dim, 5, files,
                     str(tmp_path))


def test_map_reads_worker_memory_on_the_first_batch_of_every_build(tmp_path, monkeypatch):
    """A worker reads its memory on its first batch of a build and then at most every
    MEMORY_EVERY_S: a build starting right after another on the same (reused) worker still gets
    a reading on its first batch (the last reading's time is reset when the heads change)."""
    pytest.importorskip("rocksdict")
    from vecdb.ingest.dataset import Piece
    from vecdb.ingest.sources import Batch

    calls = []
    monkeypatch.setattr(bulk, "memory_now", lambda: calls.append(1) or {"rss": len(calls)})
    monkeypatch.setattr(bulk, "MEMORY_EVERY_S", 1e9)  # no second reading inside a build
    monkeypatch.setattr(bulk, "_MEM_AT", [-float("inf")])
    monkeypatch.setattr(bulk, "_HEADS", {})
    rng = np.random.default_rng(4)
    dim, rows = 8, 50
    cfg = {"candidates": 4, "replica_count": 2, "eps1": 10.0}

    def build(name: str) -> str:
        out = tmp_path / name
        for d in ("sst", "vecs", "runs", "ids"):
            (out / d).mkdir(parents=True)
        np.save(out / "heads.npy", rng.standard_normal((6, dim)).astype(np.float32))
        return str(out)

    def batch(out: str, start: int) -> dict:
        b = Batch(shard="s", start=start, end=start + rows, rows=np.arange(start, start + rows),
                  vectors=rng.standard_normal((rows, dim)).astype(np.float32))
        res = bulk._map_block(Piece(0, b), offsets=[0], dim=dim, metric="l2", cfg=cfg,
                              tenant_ids={"t": 1}, tenant="t", id_start=0, out=out,
                              graph_path=None, search_ef=8)
        assert res["good"] == rows
        return res

    a, b = build("a"), build("b")
    got = [batch(a, 0), batch(a, rows), batch(b, 0), batch(b, rows), batch(a, 2 * rows)]
    assert [r.get("mem") for r in got] == [{"rss": 1}, None, {"rss": 2}, None, {"rss": 3}]
