"""Ray Data over vecdb's shards: a ``Datasource`` whose blocks are validated batches of
``sources.read_batches`` (one code path for formats, validation and error reporting), and
``map_shards``, the fused read + transform the bulk builds run their map stage with.

::

    ds = ray.data.read_datasource(ShardDatasource(shards, dim, batch_rows=20_000))
    # one read task per shard (or per ``rows_per_task`` rows of one); one block per batch
    ds.map_batches(fn, batch_size=None, batch_format="pyarrow")  # fused into the read tasks

A block holds the rows of one batch of one shard, in file order, as an Arrow table:

========  ==========================  ===========================================================
column    type                        meaning
========  ==========================  ===========================================================
shard     int32                       index of the shard in the planned shard list
file      dictionary<string>          the shard's path
row       int64                       row number in the file (global row = shard offset + row)
start     int64                       the batch's first file row (rows ``[start, end)`` read,
end       int64                       good and bad; an online job acknowledges ``end``)
vector    fixed_size_list<float32>    the vector (zeros in error rows)
error     string                      null for a good row; else why the row was rejected
failed    int8                        0; else the shard is unusable from ``row`` on (``error``
                                      says why; row 0 for a bad header, else the first row not
                                      read): 1 for good, 2 retryable (transient read errors
                                      outlasted the attempts: a later run may resume at ``row``)
id        uint64                      Parquet ``id`` column, when the shard has one
tenant    string                      Parquet ``tenant`` column, when the shard has one
acl       list<string>                Parquet ``acl`` column, when the shard has one
payload   string                      Parquet ``payload``, as JSON, when the shard has one
========  ==========================  ===========================================================

Bad rows travel as error rows (file + row + reason), a bad shard as one ``failed`` row: they
never stop the other shards' tasks. A transient read error part-way through a shard is retried
inside the read task from the first row not yet delivered (``sources.read_batches``, bounded by
``Retry``); only when its attempts run out does the shard end with a ``failed`` row at that row
(the blocks before it stand). Any other error of the reader (corrupt data, a bug) ends the
shard the same way, as a permanent ``failed`` row at the first row not delivered, so that Ray
Data never aborts the round (and every other shard) because of one shard. Only the worker
dying, or the function fused after the read raising, fails the task.
``pieces(table)`` turns a block (or several merged, or part of one: Ray Data may re-chunk)
back into ``sources.Batch`` objects.

Local paths are opened with numpy memory maps (npy, vecs) and pyarrow (Parquet); URIs
(``s3://``, ``gs://``, ``hdfs://``, ``file://``, fsspec protocols) through pyarrow's filesystems
with ranged reads (``sources``). On a cluster, local paths must be mounted at the same path on
every node; a URI of shared object storage needs no shared mount.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecdb.errors import InvalidArgument
from vecdb.ingest.sources import (
    DEFAULT_COLUMNS,
    DEFAULT_RETRY,
    Batch,
    Columns,
    Retry,
    Shard,
    ShardError,
    is_permanent,
    read_batches,
)

try:  # Ray Data is the optional [ingest] extra; without it this module still gives the codecs
    from ray.data import Datasource as _Base
except ImportError:  # pragma: no cover - exercised only without the extra
    _Base = object


# -- block codec --------------------------------------------------------------------------------
def batch_table(b: Batch, shard: int, dim: int):
    """The Arrow block of batch ``b`` of shard number ``shard`` (good rows, then error rows)."""
    import pyarrow as pa

    n_good = len(b)
    err_rows = [int(e["row"]) for e in b.errors]
    n = n_good + len(err_rows)
    X = np.zeros((n, dim), dtype=np.float32)
    X[:n_good] = b.vectors
    cols: dict[str, Any] = {
        "shard": pa.array(np.full(n, shard, np.int32)),
        "file": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                               pa.array([b.shard])),
        "row": pa.array(np.concatenate([b.rows.astype(np.int64),
                                        np.array(err_rows, np.int64)])),
        "start": pa.array(np.full(n, b.start, np.int64)),
        "end": pa.array(np.full(n, b.end, np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim),
        "error": pa.array([None] * n_good + [str(e["error"]) for e in b.errors], pa.string()),
        "failed": pa.array(np.zeros(n, np.int8)),
    }
    pad = [None] * len(err_rows)
    if b.ids is not None:
        cols["id"] = pa.array(np.concatenate([b.ids.astype(np.uint64),
                                              np.zeros(len(err_rows), np.uint64)]))
    if b.tenants is not None:
        cols["tenant"] = pa.array(list(b.tenants) + pad, pa.string())
    if b.acl is not None:
        cols["acl"] = pa.array([list(a) for a in b.acl] + pad, pa.list_(pa.string()))
    if b.payloads is not None:
        cols["payload"] = pa.array([None if p is None else json.dumps(p, separators=(",", ":"))
                                    for p in b.payloads] + pad, pa.string())
    return pa.table(cols)


def failed_table(shard: Shard, index: int, start: int, error: str, dim: int, row: int = 0,
                 retryable: bool = False):
    """The one-row block that reports shard ``shard`` as unusable from file row ``row`` on
    (0: the whole shard; else the first row its read task did not deliver); ``retryable``: the
    cause was transient (``failed`` = 2), a later run may resume the shard at ``row``."""
    b = Batch(shard.path, start, start, np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
              errors=[{"file": shard.path, "row": int(row), "error": error}])
    t = batch_table(b, index, dim)
    import pyarrow as pa

    return t.set_column(t.schema.get_field_index("failed"), "failed",
                        pa.array([FAILED_RETRYABLE if retryable else FAILED], pa.int8()))


FAILED, FAILED_RETRYABLE = 1, 2  # the ``failed`` column's codes (0: not failed)


@dataclass
class Piece:
    """One batch (or part of one) of one shard, decoded from a block: ``batch`` holds the good
    rows, ``batch.errors`` the bad ones; ``failed`` (the reason) is set when the shard is
    unusable from ``errors[0]["row"]`` on, ``retryable`` when that was a transient read error
    whose attempts ran out (a later run may resume there)."""

    shard: int
    batch: Batch
    failed: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    retryable: bool = False


def _whole(col):
    """One Arrow array of ``col`` (a ChunkedArray's chunks combined)."""
    import pyarrow as pa

    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _np(col) -> np.ndarray:
    return _whole(col).to_numpy(zero_copy_only=False)


def pieces(table) -> list[Piece]:
    """The batches of an Arrow block made by ``batch_table`` (in order; a block Ray Data merged
    or cut is handled: one piece per run of rows of the same batch)."""
    import pyarrow as pa

    n = table.num_rows
    if n == 0:
        return []
    shard = _np(table.column("shard")).astype(np.int64)
    start = _np(table.column("start"))
    key = shard * (1 << 40) + start
    cut = np.flatnonzero(np.diff(key)) + 1
    bounds = [0, *cut.tolist(), n]
    vec = _whole(table.column("vector"))
    dim = vec.type.list_size
    X_all = vec.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
    rows_all = _np(table.column("row")).astype(np.int64)
    err = table.column("error")
    bad = _np(err.is_null()) == 0  # vectorised: a Python pass over every row cost ~3 us/row
    bad_at = np.flatnonzero(bad)
    err_text = err.take(pa.array(bad_at)).to_pylist() if len(bad_at) else []
    failed_code = _np(table.column("failed")).astype(np.int8)  # a bool column: old blocks
    failed_all = failed_code != 0
    fcol = _whole(table.column("file"))
    end_all = _np(table.column("end"))
    names = table.schema.names
    lists = {c: table.column(c).to_pylist() for c in ("tenant", "acl", "payload") if c in names}
    ids_all = _np(table.column("id")).astype(np.uint64) if "id" in names else None
    out = []
    for a, z in zip(bounds[:-1], bounds[1:], strict=True):
        path = fcol[a].as_py()
        i0, i1 = np.searchsorted(bad_at, [a, z])
        errors = [{"file": path, "row": int(rows_all[i]), "error": err_text[k]}
                  for k, i in zip(range(i0, i1), bad_at[i0:i1].tolist(), strict=True)]
        fi = [i for i in bad_at[i0:i1].tolist() if failed_all[i]]
        failed = err_text[int(np.searchsorted(bad_at, fi[0]))] if fi else None
        retryable = bool(fi) and int(failed_code[fi[0]]) == FAILED_RETRYABLE
        if i0 == i1:  # no bad row: the piece is a slice (no copy)
            gi: Any = slice(a, z)
        else:
            gi = np.flatnonzero(~bad[a:z]) + a

        def col(name: str, gi: Any = gi) -> list | None:
            if name not in lists:
                return None
            return lists[name][gi] if isinstance(gi, slice) else \
                [lists[name][i] for i in gi.tolist()]
        payloads = col("payload")
        b = Batch(path, int(start[a]), int(end_all[a]), rows_all[gi],
                  np.ascontiguousarray(X_all[gi], dtype=np.float32),
                  ids=None if ids_all is None else ids_all[gi],
                  tenants=col("tenant"), acl=col("acl"),
                  payloads=None if payloads is None else
                  [None if p is None else json.loads(p) for p in payloads],
                  errors=errors)
        out.append(Piece(int(shard[a]), b, failed, errors, retryable))
    return out


# -- the datasource -----------------------------------------------------------------------------
def _read_range(shard: Shard, index: int, dim: int, batch_rows: int, start: int, end: int,
                columns: Columns, retry: Retry = DEFAULT_RETRY) -> Iterator[Any]:
    """Body of one read task: blocks of rows ``[start, end)`` of ``shard``. Transient read errors
    are retried by ``read_batches`` (``retry``); a ShardError (a bad header, or a read that
    failed for good, ``ShardReadError``, at its first unread row) becomes a ``failed`` block
    after the blocks already delivered: the task, and the job, go on. Any other exception while
    reading (a backstop: ``read_batches`` already wraps the reader's) becomes a ``failed`` block
    at the first row not delivered, retryable unless ``sources.is_permanent`` (a bug or an
    unknown error: a rerun after the fix resumes the shard; ``give_up_runs`` bounds that)."""
    pos = start
    try:
        for b in read_batches(shard, dim, batch_rows, start, columns, end, retry):
            if len(b) or b.errors:
                t = batch_table(b, index, dim)
                pos = max(pos, b.end)
                yield t
            else:
                pos = max(pos, b.end)
    except ShardError as e:  # a plain one after progress (a re-open's dim check): its pos
        row = max(pos, getattr(e, "row", 0))
        yield failed_table(shard, index, row, str(e), dim, row, getattr(e, "retryable", False))
    except Exception as e:  # noqa: BLE001 - one shard's failure must not abort the round
        yield failed_table(shard, index, pos, f"{shard.path}: row {pos}: {type(e).__name__}: "
                                              f"{e}", dim, pos, not is_permanent(e))


class ShardDatasource(_Base):
    """Ray Data datasource over planned shards (``sources.plan``): one read task per shard, or
    per ``rows_per_task`` rows of a shard; each task yields one block per batch of
    ``batch_rows`` rows (see the module doc for the block's columns). ``starts``: per shard, the
    first row to read (a resumed job's acknowledged offsets; default 0). ``retry``: how
    transient read errors are retried inside a task (``sources.Retry``)."""

    def __init__(self, shards: Sequence[Shard], dim: int, batch_rows: int = 10_000,
                 columns: Columns = DEFAULT_COLUMNS, rows_per_task: int | None = None,
                 starts: Sequence[int] | None = None, retry: Retry = DEFAULT_RETRY) -> None:
        if _Base is object:
            raise ImportError("ray[data] is needed for ShardDatasource (pip install "
                              "'vecdb[ingest]')")
        super().__init__()
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise InvalidArgument(f"batch_rows must be a positive int, got {batch_rows!r}")
        if rows_per_task is not None and (isinstance(rows_per_task, bool)
                                          or not isinstance(rows_per_task, int)
                                          or rows_per_task < 1):
            raise InvalidArgument(f"rows_per_task must be a positive int, got {rows_per_task!r}")
        if starts is not None and len(starts) != len(shards):
            raise InvalidArgument(f"starts has {len(starts)} entries for {len(shards)} shards")
        self.shards = list(shards)
        self.dim = int(dim)
        self.batch_rows = batch_rows
        self.columns = columns
        self.rows_per_task = rows_per_task
        self.starts = [0] * len(self.shards) if starts is None else [int(s) for s in starts]
        self.retry = retry

    def get_name(self) -> str:
        return "VecdbShards"

    def ranges(self) -> list[tuple[int, int, int]]:
        """(shard number, first row, end row) of every read task, in shard order. A shard with
        nothing left to read still gets one task when it is empty from its start (so that a
        bad header is reported)."""
        out = []
        for i, (s, a) in enumerate(zip(self.shards, self.starts, strict=True)):
            step = self.rows_per_task or max(1, s.rows - a)
            out += [(i, lo, min(lo + step, s.rows)) for lo in range(a, s.rows, step)] or \
                [(i, a, s.rows)]
        return out

    def estimate_inmemory_data_size(self) -> int:
        return sum((s.rows - a) * (4 * self.dim + 40)
                   for s, a in zip(self.shards, self.starts, strict=True))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[Any]:
        """One task per ``ranges()`` entry (``parallelism`` is a hint; the shards and
        ``rows_per_task`` decide, so the files each task writes are the same on every run)."""
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        for i, lo, hi in self.ranges():
            s = self.shards[i]
            meta = BlockMetadata(num_rows=None, size_bytes=(hi - lo) * (4 * self.dim + 40),
                                 input_files=[s.path], exec_stats=None)
            extra = {} if per_task_row_limit is None else \
                {"per_task_row_limit": per_task_row_limit}
            tasks.append(ReadTask(
                lambda s=s, i=i, lo=lo, hi=hi: _read_range(s, i, self.dim, self.batch_rows,
                                                           lo, hi, self.columns, self.retry),
                meta, **extra))
        return tasks


def read_shards(shards: Sequence[Shard], dim: int, batch_rows: int = 10_000,
                columns: Columns = DEFAULT_COLUMNS, rows_per_task: int | None = None,
                starts: Sequence[int] | None = None, concurrency: int | None = None,
                retry: Retry = DEFAULT_RETRY):
    """A Ray ``Dataset`` of the shards (``ShardDatasource``), one block per read task's batch.
    ``override_num_blocks`` is the task count: otherwise Ray Data would cut every task's output
    into more blocks to reach its default parallelism, and stop fusing what follows.
    ``concurrency``: at most that many read tasks at a time (a transform fused with the read
    must be given the same)."""
    import ray

    src = ShardDatasource(shards, dim, batch_rows, columns, rows_per_task, starts, retry)
    return ray.data.read_datasource(src, override_num_blocks=max(1, len(src.ranges())),
                                    compute=_compute(concurrency), num_cpus=1)


def _compute(concurrency: int | None):
    """Ray Data's task pool of at most ``concurrency`` tasks (None: as the resources allow)."""
    from ray.data import TaskPoolStrategy

    return TaskPoolStrategy(size=concurrency)


# -- fused read + map ---------------------------------------------------------------------------
def _apply(table, fn: Callable[..., Any], kwargs: dict[str, Any]):
    """The ``map_batches`` function: ``fn(piece, **kwargs)`` per piece of the block; its small
    results travel back pickled in a one-column table (the vectors stay in the task)."""
    import pyarrow as pa

    res = [pickle.dumps(fn(p, **kwargs), protocol=5) for p in pieces(table)]
    return pa.table({"result": pa.array(res, pa.binary())})


def operators(stats: str) -> list[str]:
    """Operator names of a ``Dataset.stats()`` text ("ReadVecdbShards->MapBatches(f)" when
    Ray Data fused the read and the map into one task)."""
    return re.findall(r"^Operator \d+ ([^:]+):", stats, flags=re.M)


def map_shards(shards: Sequence[Shard], dim: int, fn: Callable[..., Any],
               kwargs: dict[str, Any], batch_rows: int = 10_000,
               columns: Columns = DEFAULT_COLUMNS, rows_per_task: int | None = None,
               starts: Sequence[int] | None = None, concurrency: int | None = None,
               progress: bool = False, on_result: Callable[[Any], Any] | None = None,
               retry: Retry = DEFAULT_RETRY) -> tuple[list[Any], dict[str, Any]]:
    """Run ``fn(piece, **kwargs)`` on every batch of the shards with Ray Data: read and map
    fused into one task per read task (the vectors never enter the object store; ``fn`` must
    return small results: paths, counts, errors). ``starts``, ``rows_per_task``: see
    ``ShardDatasource``; ``concurrency``: tasks at a time (default: as many as the CPUs allow);
    ``retry``: transient read errors (see the module doc).
    Ray Data re-runs a task whose worker died (``fn`` must be idempotent per piece).
    The results stream back as the tasks finish; ``on_result(r)`` (optional) sees each one as
    it arrives and returns what to keep (e.g. ``r`` without the arrays it folded in; ``None``
    keeps nothing), so the driver holds only running totals, not every batch's arrays.
    Returns the results (unordered: ``fn`` says which shard and rows each is about) and Ray
    Data's view of the run (``operators``: the executed operators, ``fused``: read and map ran
    as one operator, ``stats``: the text). An exception ``fn`` raises fails the run."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = bool(progress)
    ds = read_shards(shards, dim, batch_rows, columns, rows_per_task, starts,
                     concurrency, retry).map_batches(
        _apply, fn_kwargs={"fn": fn, "kwargs": kwargs}, batch_size=None,
        batch_format="pyarrow", zero_copy_batch=True, compute=_compute(concurrency),
        num_cpus=1)
    out = []
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for x in b.column("result").to_pylist():
            r = pickle.loads(x)
            if on_result is not None:
                r = on_result(r)
            if r is not None:
                out.append(r)
    stats = ds.stats()
    ops = operators(stats)
    return out, {"operators": ops, "fused": any(o.startswith("ReadVecdbShards->MapBatches")
                                                 for o in ops) and len(ops) == 1,
                 "stats": stats}
