"""Online ingestion: Ray Data reads the shards and N workers stream validated batches into a
running collection.

::

    driver (run_online)                      Ray Data job per round (read fused with the ingest:
      plan shards (headers only)               one task per shard, <= workers tasks at a time)
      JobState <- tracker actor  <--ack---     ShardDatasource from the acked offsets -> batches
      progress line + status.json              ingest_block: write_batch -> sink (upsert by id,
      next round: shards a transport             durable), then ack(shard, end, good, bad rows)
      failure stopped, from their acked offset (max_task_retries)

- Back-pressure: a shard is read by one task, which reads its next batch only after the previous
  one is written and acknowledged, so at most ``workers`` batches are in flight and memory is
  ``workers x batch_rows x dim x 4`` bytes.
- Resumability: acknowledgements are recorded per shard (rows from the start of the file); a
  re-run, a round's retry of a shard or Ray Data's re-run of a task whose worker died starts at or
  before the acknowledged offset. Rows acknowledged by the sink but not yet recorded are sent
  again: harmless, every write is an upsert by a deterministic id (the Parquet ``id`` column, or
  ``id_start`` + the row's global row number). Acknowledgements never move backwards.
- Bad shards and rows are recorded in the state (file, row, reason) and skipped.
- Read errors: a transient one (connection reset, timeout, ...) is retried inside the read task
  from the first row not yet delivered (``read_retry``: bounded attempts with back-off). A shard
  that hits a permanent error (missing object, permission denied) is recorded as failed at its
  first unread row (done: a re-run would fail the same way). A shard whose transient attempts run
  out is *given up* for this run: recorded at its first unread row with ``"retryable": true``,
  not done, not tried again by this run's rounds; the job ends *incomplete* (the report's
  ``incomplete``, the CLI's exit status 4) and running it again with the same state file resumes
  the shard from its acknowledged offset (after ``give_up_runs`` runs in a row without progress
  it is failed for good). Either way the rows acknowledged before it stand. A header that
  planning cannot read for transient errors stops the job before it starts
  (``StorageUnavailable``, nothing written): rejecting it would shift the later shards' ids.
- Sink errors: a batch the server rejects as a request error (INVALID_ARGUMENT, PERMISSION_DENIED,
  ...) is reported as bad rows (final). A transport failure (after ``GrpcSink``'s own retries)
  stops the shard for the round and the driver runs it again from its acknowledged offset, for at
  most ``max_task_retries`` more rounds. A shard whose last failure was the sink being
  *unreachable* (UNAVAILABLE, DEADLINE_EXCEEDED, a connection error or timeout: the server down
  or restarting) is then given up like a read (``"retryable": true``, not done, the job ends
  incomplete, a rerun resumes it from its acknowledged offset); any other transport failure
  (INTERNAL, UNKNOWN, the sink actor died, ...) and a worker that keeps dying fail the shard for
  good (the data itself may be what breaks it).
- The same code runs on a Ray cluster: pass ``ray_address=`` (the state file must then be on a
  path the driver can write; the shards on storage every node can read).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from vecdb.errors import FailedPrecondition, InvalidArgument, VecdbError
from vecdb.ingest import cpu
from vecdb.ingest.dataset import map_shards
from vecdb.ingest.sinks import EmbeddedSink, GrpcSink, write_batch
from vecdb.ingest.sources import (
    DEFAULT_COLUMNS,
    DEFAULT_RETRY,
    Columns,
    Retry,
    Shard,
    StorageUnavailable,
    _GaveUp,
    _with_retry,
    check_dim,
    discover,
    is_uri,
    plan,
)
from vecdb.ingest.state import JobState, Progress


def init_ray(address: str | None = None, num_cpus: int | None = None,
             runtime_env: dict[str, Any] | None = None) -> None:
    """Start (or join, with ``address``) Ray once per process; quiet, no dashboard.
    ``runtime_env``: Ray's, for the job's workers (e.g. a ``worker_process_setup_hook`` that
    registers an fsspec filesystem, as the tests do with ``vecdb.ingest.testing``)."""
    import ray

    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                          "ignore_reinit_error": True, "configure_logging": False}
    if runtime_env:
        kw["runtime_env"] = runtime_env
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=num_cpus or min(2, os.cpu_count() or 1), **kw)


class _Tracker:
    """Ray actor that owns the ``JobState`` (one writer of the state file).

    A batch's ``ack`` only updates the state in memory and returns: a saver thread writes the
    file (temp + fsync + rename) at most every ``save_every_s`` while there are new acks. The
    workers thus never wait for an fsync (which, next to RocksDB writing hundreds of MB, can
    take a long time); a crash loses at most the last ``save_every_s`` of acknowledgements, and
    those rows are re-sent (idempotent upserts by id). Shard-level events (done, failed,
    ``flush``) are saved before the call returns."""

    def __init__(self, path: str, shards: list[Shard], fingerprint: dict, rejected: list[dict],
                 save_every_s: float = 0.2) -> None:
        self.error: str | None = None  # why the state could not be opened (see ``check``)
        try:
            self.state = JobState(path, shards, fingerprint, rejected)
        except (FailedPrecondition, OSError) as e:  # refused, unreadable or unwritable
            self.error = f"{type(e).__name__}: {e}"
            return
        self.every = save_every_s
        self.attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # the state (actor calls vs the saver's snapshot)
        self._io = threading.Lock()  # the file: one writer, newest snapshot last
        self._seq = 0  # state versions: bumped by every change
        self._saved = 0  # the version on disk
        self._stop = threading.Event()
        threading.Thread(target=self._saver, daemon=True).start()

    def check(self) -> str | None:
        """None when the job state opened, else why not (the constructor does not raise, so
        the reason comes back as it is, not inside Ray's ActorDiedError text)."""
        return self.error

    def _save(self) -> None:
        with self._lock:
            seq = self._seq
            if seq == self._saved:
                return
            text = self.state.dumps()
        with self._io:
            if seq > self._saved:  # a newer snapshot may have been written meanwhile
                self.state.save(text)
                self._saved = seq

    def _saver(self) -> None:
        while not self._stop.wait(self.every):
            self._save()

    def ack(self, path: str, end: int, good: int, errors: list[dict], done: bool = False) -> None:
        with self._lock:
            self.state.ack(path, end, good, errors, done)
            self._seq += 1
        if done:
            self._save()

    def fail_shard(self, path: str, error: str, row: int | None = None) -> None:
        with self._lock:
            self.state.fail_shard(path, error, row)
            self._seq += 1
        self._save()

    def give_up(self, path: str, error: str, row: int | None = None,
                limit: int | None = None) -> bool:
        """The shard's transient errors outlasted the retries: not done, a rerun resumes it
        (unless ``limit`` runs in a row gave it up without progress: ``JobState.give_up``)."""
        with self._lock:
            resumable = self.state.give_up(path, error, row, limit)
            self._seq += 1
        self._save()
        return resumable

    def given_up(self, paths: list[str]) -> list[bool]:
        """Whether each shard in ``paths`` was given up on transient read errors."""
        with self._lock:
            return [self.state.gave_up(p) for p in paths]

    def attempt(self, path: str, round_id: str) -> int:
        """Count a task starting on shard ``path`` in round ``round_id`` (Ray Data re-runs a
        task whose worker died); returns the count."""
        k = (path, round_id)
        self.attempts[k] = self.attempts.get(k, 0) + 1
        return self.attempts[k]

    def states(self, paths: list[str]) -> list[tuple[int, bool]]:
        """(acknowledged rows, done) of each shard in ``paths`` (one call for all of them)."""
        return [(self.state.acked(p), self.state.done(p)) for p in paths]

    def finish(self, paths: list[str]) -> None:
        """Mark the shards ``paths`` done (read to their end) with one save of the state."""
        with self._lock:
            for p in paths:
                self.state.ack(p, self.state.data["shards"][p]["rows"], 0, [], True)
            self._seq += 1
        self._save()

    def summary(self) -> dict[str, Any]:
        st = self.state
        with self._lock:
            return {"rows_acked": st.rows_acked(), "rows_total": st.rows_total(),
                    "rows_written": sum(int(s["good"]) for s in st.data["shards"].values()),
                    "rows_skipped": st.rows_skipped(), "errors": st.errors(),
                    "incomplete": st.incomplete(), "resumed": st.resumed}

    def flush(self) -> None:
        """Write any unsaved acknowledgements now and stop the saver thread."""
        self._stop.set()
        self._save()


def _start_tracker(state_path: str, shards: list[Shard], fingerprint: dict,
                   rejected: list[dict]):
    """The ``_Tracker`` actor, started and answering; a failure to start it (the state file
    unreadable, refused or unwritable) is raised as ``FailedPrecondition`` (the CLI's exit 2),
    not as Ray's ``ActorDiedError`` with the actor's traceback."""
    import ray

    tracker = ray.remote(num_cpus=0)(_Tracker).remote(state_path, shards, fingerprint, rejected)
    try:
        why = ray.get(tracker.check.remote())
    except ray.exceptions.RayActorError as e:  # died otherwise: its message's last line
        last = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = last[-1] if last else type(e).__name__
    if why is not None:
        ray.kill(tracker)
        raise FailedPrecondition(f"the job state tracker could not start with {state_path}: "
                                 f"{why}")
    return tracker


class _SinkActor:
    """Ray actor around an ``EmbeddedSink`` (one process owns the data folder)."""

    def __init__(self, data: str, collection: str, create: dict | None, options: dict) -> None:
        self.sink = EmbeddedSink(data, collection, create, **options)

    def call(self, method: str, *args):
        return getattr(self.sink, method)(*args)


class _ActorProxy:
    """The ``Sink`` interface over a ``_SinkActor`` handle (each call waits for its ack)."""

    def __init__(self, handle) -> None:
        self.h = handle

    def _call(self, method: str, *args):
        import ray

        return ray.get(self.h.call.remote(method, *args))

    def ensure_tenants(self, names):
        return self._call("ensure_tenants", list(names))

    def upsert(self, ids, vectors, tenant, payloads=None):
        return self._call("upsert", ids, vectors, tenant, payloads)

    def grant(self, ids, tenant, owner):
        return self._call("grant", ids, tenant, owner)

    def close(self) -> None:
        pass


_GRPC_SINKS: dict[tuple, GrpcSink] = {}


def _sink_for(spec: dict[str, Any]):
    if spec["kind"] == "actor":
        return _ActorProxy(spec["handle"])
    key = (spec["address"], spec["collection"], spec.get("api_key"))
    if key not in _GRPC_SINKS:  # one connection per worker process, reused across shards
        _GRPC_SINKS[key] = GrpcSink(spec["address"], spec["collection"], spec.get("api_key"),
                                    spec.get("create"))
    return _GRPC_SINKS[key]


# a sink failure that means "the server is not there right now" (down, restarting, overloaded
# past the deadline): a later run can succeed, so a shard stopped by it is resumable
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def sink_unreachable(e: BaseException) -> bool:
    """Whether a failed write ``e`` means the sink could not be reached (so the same batch may
    succeed later), as opposed to the server answering with an error about the request."""
    if isinstance(e, VecdbError):
        return getattr(e, "code", None) in _UNREACHABLE
    return isinstance(e, (ConnectionError, TimeoutError))


def _outage(spec: dict[str, Any] | None, shard: str, start: int) -> None:
    """Test hook: while the file ``spec["marker"]`` exists, the sink fails every batch of a shard
    whose name ends with ``spec["shard"]`` from file row ``spec["from_row"]`` on with gRPC status
    ``spec["code"]`` (default UNAVAILABLE), mapped to an exception as the client maps it."""
    if not spec or not shard.endswith(spec["shard"]) or start < spec.get("from_row", 0) \
            or not os.path.exists(spec["marker"]):
        return
    from vecdb.client.errors import CODE_TO_ERROR, RemoteError

    code = spec.get("code", "UNAVAILABLE")
    cls = CODE_TO_ERROR.get(code)
    raise cls(f"injected {code}") if cls is not None else RemoteError(f"{code}: injected", code)


_STOPPED: set[tuple[str, str]] = set()  # (round, shard) a transport failure stopped here
_STARTED: set[tuple[str, str]] = set()  # (round, shard) this process began
_BATCHES: dict[tuple[str, str], int] = {}  # batches sent per (round, shard) (crash test hook)


def ingest_block(piece: Any, *, offsets: list[int], sink_spec: dict[str, Any], tracker,
                 opts: dict[str, Any], round_id: str) -> dict[str, Any]:
    """The online job's Ray Data function, on one batch of one shard (``dataset.Piece``; a
    shard's batches come in file order, in one task): write it to the sink, then acknowledge
    rows ``[.., end)`` to the tracker (the next batch is read only after that: back-pressure).
    A batch the sink rejects (e.g. PermissionDenied on a foreign id) is reported as bad rows and
    skipped; a transport failure stops the shard for this round (its later batches are skipped)
    and the driver runs it again from its acknowledged offset."""
    import ray

    b = piece.batch
    key = (round_id, b.shard)
    if key not in _STARTED:  # a task's first batch of this shard: count the attempt
        _STARTED.add(key)
        n = ray.get(tracker.attempt.remote(b.shard, round_id))
        if n > 1 + opts["max_task_retries"]:  # its worker died that often: give up
            ray.get(tracker.fail_shard.remote(
                b.shard, f"gave up after {n - 1} attempts (worker died each time)"))
            _STOPPED.add(key)
    if key in _STOPPED:
        return {"shard": b.shard, "written": 0, "skipped": True}
    if piece.failed and piece.retryable:  # transient errors outlasted the retries: a rerun resumes
        ray.get(tracker.give_up.remote(b.shard, piece.failed, piece.errors[0]["row"],
                                       opts.get("give_up_runs")))
        return {"shard": b.shard, "written": 0, "failed": piece.failed, "retryable": True}
    if piece.failed:  # a bad header (row 0), or a read that failed for good at its first unread row
        ray.get(tracker.fail_shard.remote(b.shard, piece.failed, piece.errors[0]["row"]))
        return {"shard": b.shard, "written": 0, "failed": piece.failed}
    errors = list(b.errors)
    good = 0
    if len(b):
        ids = b.ids if b.ids is not None else \
            (opts["id_start"] + offsets[piece.shard] + b.rows).astype(np.uint64)
        tenants = b.tenants if b.tenants is not None else [opts["tenant"]] * len(b)
        try:
            _outage(opts.get("sink_outage"), b.shard, int(b.start))
            good = write_batch(_sink_for(sink_spec), ids, b.vectors, tenants, b.acl, b.payloads)
        except VecdbError as e:
            if getattr(e, "code", None) is not None:  # transport: the driver runs it again
                _STOPPED.add(key)
                return {"shard": b.shard, "written": 0, "retry": str(e),
                        "unreachable": sink_unreachable(e)}
            errors.append({"file": b.shard, "row": int(b.start),
                           "error": f"rows {b.start}..{b.end - 1} rejected: {e}"})
        except Exception as e:  # noqa: BLE001 - e.g. the sink actor died: run it again
            _STOPPED.add(key)
            return {"shard": b.shard, "written": 0, "retry": f"{type(e).__name__}: {e}",
                    "unreachable": sink_unreachable(e)}
    ray.get(tracker.ack.remote(b.shard, b.end, good, errors))
    _BATCHES[key] = _BATCHES.get(key, 0) + 1
    crash = opts.get("crash")  # test hook: a worker killed mid-shard (once, or "always")
    if crash and _BATCHES[key] >= crash["after"] and (crash.get("always")
                                                      or not os.path.exists(crash["marker"])):
        open(crash["marker"], "w").close()
        os._exit(1)
    return {"shard": b.shard, "written": good, "end": int(b.end)}


def run_online(source: str | Sequence[str], collection: str, *, data: str | None = None,
               address: str | None = None, api_key: str | None = None,
               tenant: str = "default", dim: int | None = None, workers: int = 2,
               batch_rows: int = 5000, state_path: str | None = None, id_start: int = 0,
               columns: Columns = DEFAULT_COLUMNS, create: dict[str, Any] | None = None,
               ray_address: str | None = None, progress: bool = True,
               status_path: str | None = None, max_task_retries: int = 3,
               engine_options: dict[str, Any] | None = None,
               read_retry: Retry = DEFAULT_RETRY, give_up_runs: int | None = 3,
               _crash: dict[str, Any] | None = None,
               _sink_outage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stream the shards of ``source`` into ``collection`` with ``workers`` parallel Ray workers.

    Sink: the embedded database folder ``data`` or a server at ``address`` (one of them).
    ``tenant``: the owner of rows without a tenant column. Ids: the Parquet id column, else
    ``id_start`` + global row number. ``state_path`` (default ``<collection>.ingest-state.json``
    next to the first shard, or in the working folder when the source is a URI) makes the job
    resumable; ``status_path`` gets the progress JSON. ``create``:
    dict(dim, metric, index, params) to create the collection if missing. ``read_retry``: how
    transient read errors (planning and reading) are retried (``sources.Retry``); planning that
    cannot read a header for them raises ``sources.StorageUnavailable`` before anything is
    written (run it again). ``give_up_runs``: a shard given up on transient read errors by that
    many runs in a row without a row acknowledged is failed for good (None: never).
    ``max_task_retries``: rounds that run a shard again after a transport failure of its sink.
    Returns a report: rows_total, rows_written, errors (file, row, error), complete (False when
    some shard was given up on transient read errors or an unreachable sink: ``incomplete``
    lists them, file, first unacknowledged row, error, and running the job again with the same
    state resumes them), rows_skipped
    (rows not read: failed or given-up shards), elapsed_s, rows_per_s,
    cpu_s (CPU seconds of this process tree while streaming: driver, Ray, workers, the embedded
    sink actor; see ``vecdb.ingest.cpu``; a remote server's CPU is not in it), sink_batches
    (embedded sink only: (start s, rows, seconds) of each upsert, the server side per batch).
    """
    import ray

    if (data is None) == (address is None):
        raise InvalidArgument("give exactly one of data= (embedded folder) or address= (server)")
    if not isinstance(workers, int) or workers < 1:
        raise InvalidArgument(f"workers must be a positive integer, got {workers!r}")
    if give_up_runs is not None and (isinstance(give_up_runs, bool)
                                     or not isinstance(give_up_runs, int) or give_up_runs < 1):
        raise InvalidArgument(f"give_up_runs must be a positive integer or None, got "
                              f"{give_up_runs!r}")
    try:  # a bucket listing the storage did not answer: retried, then exit 4 (nothing started)
        files = _with_retry(lambda: discover(source), read_retry)
    except _GaveUp as e:
        what = source if isinstance(source, str) else ", ".join(map(str, source))
        raise StorageUnavailable(what, str(e)) from None
    # a header the storage did not answer for raises StorageUnavailable (nothing written, the
    # state untouched): rejecting it would shift every later shard's offsets (default ids)
    shards, rejected = plan(files, columns, read_retry, transient="raise")
    # default state: next to the first shard, or in the working folder for a URI source
    state_path = state_path or os.path.join(
        os.getcwd() if is_uri(files[0]) else os.path.dirname(files[0]),
        f"{collection}.ingest-state.json")
    status_path = status_path or state_path.replace(".json", "") + ".status.json"
    sink_desc = {"data": os.path.abspath(data)} if data else {"address": address}
    fingerprint = {"mode": "online", "collection": collection, **sink_desc,
                   "files": [s.path for s in shards] + [r["file"] for r in rejected],
                   "id_start": int(id_start), "tenant": tenant}
    JobState.load(state_path, fingerprint)  # another job's state: refused before Ray starts
    init_ray(ray_address, num_cpus=max(workers, 1) if not ray_address else None)
    tracker = _start_tracker(state_path, shards, fingerprint, rejected)
    sink_actor = None
    if data is not None:
        sink_actor = ray.remote(num_cpus=0, max_concurrency=1)(_SinkActor).remote(
            data, collection, create, engine_options or {})
        sink_spec: dict[str, Any] = {"kind": "actor", "handle": sink_actor}
        sink_dim = ray.get(sink_actor.call.remote("dim"))
    else:
        sink_spec = {"kind": "grpc", "address": address, "collection": collection,
                     "api_key": api_key, "create": create}
        sink_dim = _sink_for(sink_spec).dim()
    dim = check_dim(dim if dim is not None else sink_dim, shards)
    if dim != sink_dim:
        raise InvalidArgument(f"dim={dim} but collection {collection!r} has dim {sink_dim}")
    opts = {"batch_rows": int(batch_rows), "columns": columns, "id_start": int(id_start),
            "tenant": tenant, "crash": _crash, "max_task_retries": int(max_task_retries),
            "sink_outage": _sink_outage, "give_up_runs": give_up_runs}
    t0 = time.perf_counter()
    c0 = cpu.snapshot()
    summary0 = ray.get(tracker.summary.remote())
    prog = Progress(summary0["rows_total"], status_path, done=summary0["rows_acked"],
                    stream=__import__("sys").stderr if progress else None)
    prog.skipped = summary0["rows_skipped"]
    pending = [s for s, (_, done) in zip(shards, ray.get(tracker.states.remote(
        [s.path for s in shards])), strict=True) if not done]
    attempts: dict[str, int] = {}
    stop = threading.Event()

    def poll() -> None:  # progress while Ray Data runs a round
        while not stop.wait(0.5):
            sm = ray.get(tracker.summary.remote())
            prog.update(sm["rows_acked"], skipped=sm["rows_skipped"])

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rounds = 0
    job = uuid.uuid4().hex  # round ids unique across jobs (worker processes outlive a job)
    try:
        while pending:
            # one round: a Ray Data job over the unfinished shards from their acknowledged
            # offsets, read + ingest fused, one task per shard, ``workers`` tasks at a time
            rounds += 1
            starts = [a for a, _ in ray.get(tracker.states.remote([s.path for s in pending]))]
            retry: dict[str, str] = {}
            unreachable: set[str] = set()  # shards whose transport failure was an outage

            def note(r: dict[str, Any], retry: dict[str, str] = retry,
                     unreachable: set[str] = unreachable) -> None:
                """Keep only the shards to run again (O(shards), not every batch's result)."""
                if "retry" in r:
                    retry[r["shard"]] = r["retry"]
                    if r.get("unreachable"):
                        unreachable.add(r["shard"])

            try:
                map_shards(pending, dim, ingest_block, {
                    "offsets": [s.offset for s in pending], "sink_spec": sink_spec,
                    "tracker": tracker, "opts": opts, "round_id": f"{job}-{rounds}"},
                    batch_rows=int(batch_rows), columns=columns, starts=starts,
                    concurrency=workers, on_result=note, retry=read_retry)
            except Exception as e:  # a task failed for good: every unfinished shard again
                retry = {s.path: f"{type(e).__name__}: {e}" for s in pending}
                unreachable = set()
            again, finished = [], []
            paths = [s.path for s in pending]
            states = ray.get(tracker.states.remote(paths))
            given_up = ray.get(tracker.given_up.remote(paths))
            for s, (acked, done), gave_up in zip(pending, states, given_up, strict=True):
                if done:  # failed shard (reported)
                    continue
                if gave_up:  # transient read errors outlasted the retries: the next run's
                    if acked >= s.rows:  # (a re-run task of the round read it all after all)
                        finished.append(s.path)
                    continue
                if s.path not in retry:
                    finished.append(s.path)
                    continue
                attempts[s.path] = attempts.get(s.path, 0) + 1
                if attempts[s.path] <= max_task_retries:
                    again.append(s)
                elif s.path in unreachable:  # the sink is down: a later run resumes the shard
                    ray.get(tracker.give_up.remote(
                        s.path, f"sink unreachable after {attempts[s.path]} attempts: "
                                f"{retry[s.path]}"))
                else:
                    ray.get(tracker.fail_shard.remote(
                        s.path, f"gave up after {attempts[s.path]} attempts: "
                                f"{retry[s.path]}"))
            ray.get(tracker.finish.remote(finished))  # one state save for the round's shards
            pending = again
        stop.set()
        poller.join()
        ray.get(tracker.flush.remote())
        sm = ray.get(tracker.summary.remote())
        prog.update(sm["rows_acked"], skipped=sm["rows_skipped"])
        el = time.perf_counter() - t0
        cpu_s = cpu.cpu_between(c0, cpu.snapshot())
        snap = prog.close(errors=len(sm["errors"]), complete=not sm["incomplete"],
                          incomplete=sm["incomplete"])
        sink_batches = [] if sink_actor is None else \
            ray.get(sink_actor.call.remote("batch_timings"))
    finally:
        stop.set()
        if sink_actor is not None:
            try:
                ray.get(sink_actor.call.remote("close"))
            finally:
                ray.kill(sink_actor)
        try:  # the acks the saver has not written yet (a no-op after the flush above)
            ray.get(tracker.flush.remote())
        finally:
            ray.kill(tracker)
    return {"rows_total": sm["rows_total"], "rows_acked": sm["rows_acked"],
            "rows_written": sm["rows_written"], "errors": sm["errors"],
            "complete": not sm["incomplete"], "incomplete": sm["incomplete"],
            "rows_skipped": sm["rows_skipped"], "elapsed_s": el,
            "cpu_s": cpu_s,
            "rows_per_s": snap["rows_per_s"], "resumed": sm["resumed"], "workers": workers,
            "state_path": state_path, "status_path": status_path, "sink_batches": sink_batches}
