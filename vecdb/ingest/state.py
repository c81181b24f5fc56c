"""Resumable job state and progress.

The job state is one JSON file, rewritten atomically (temp file, fsync, rename, fsync of the
folder), so a crash at any instant leaves either the previous or the new version, never a torn one.
It records, per shard, how many rows from the start of the file are *acknowledged* (durably written
by the sink) and the bad rows found so far. A restarted job skips acknowledged rows and re-sends the
rest; rows that were written but not yet recorded are sent again, which is harmless because every
write is an upsert by a deterministic id (idempotent). Hence: every vector exactly once.

A shard is ``done`` when read to its end or failed for good (a permanent problem: re-running
cannot fix it). A shard whose reads kept failing with *transient* errors (the storage was
unreachable longer than the retries lasted), or whose batches could not be written because the
sink/server was unreachable through the job's retry rounds, is *given up* for this run only:
its error carries ``"retryable": true`` and it stays not done, so the job ends incomplete and
the next run of it resumes the shard from its acknowledged offset (that run moves the old error
to the shard's ``resumed_errors``, a history, out of the job's errors).

``status.json`` (next to the state) is for humans and dashboards: rows done/total, rows/s, ETA,
errors; the same line is printed on the terminal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from vecdb.errors import FailedPrecondition
from vecdb.ingest.sources import Shard

MAX_ERRORS_PER_SHARD = 1000


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp + fsync + rename + fsync dir)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp + fsync + rename + fsync dir)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retire_retryable(shard: dict[str, Any], keep: bool = True) -> list[dict[str, Any]]:
    """Take shard ``shard``'s ``retryable`` errors out of its errors (a give-up that a later
    run or read superseded); ``keep``: move them to its ``resumed_errors`` history. Returns
    them."""
    old = [e for e in shard["errors"] if e.get("retryable")]
    if old:
        shard["errors"] = [e for e in shard["errors"] if not e.get("retryable")]
        if keep:
            shard.setdefault("resumed_errors", []).extend(old)
    return old


class JobState:
    """Per-shard acknowledged offsets and errors of one ingestion job, persisted in ``path``.

    ``fingerprint`` identifies the job (sink, collection, source); a state file of another job
    is refused (``FailedPrecondition``) instead of silently skipping rows."""

    def __init__(self, path: str, shards: Sequence[Shard], fingerprint: dict[str, Any],
                 rejected: Sequence[dict[str, Any]] = ()) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        data = self.load(self.path, fingerprint)
        if data is not None:
            self.data = data
            self.resumed = True
        else:
            self.data = {"version": 1, "fingerprint": fingerprint, "created": time.time(),
                         "shards": {}, "rejected": []}
            self.resumed = False
        for s in shards:
            self.data["shards"].setdefault(s.path, {"rows": s.rows, "acked": 0, "good": 0,
                                                    "done": False, "errors": []})
        if self.resumed:  # shards given up on transient errors are tried again by this run
            for sh in self.data["shards"].values():
                if not sh["done"]:
                    _retire_retryable(sh)
        # this run's start, for give_up_runs: a run "made progress" on a shard when it
        # acknowledged rows past this offset; the shards whose read give-up this run counted
        self._start_acked = {p: int(sh["acked"]) for p, sh in self.data["shards"].items()}
        self._counted: set[str] = set()
        known = {(r["file"], r["error"]) for r in self.data["rejected"]}
        for r in rejected:
            if (r["file"], r["error"]) not in known:
                self.data["rejected"].append(dict(r))
        self.save()

    @staticmethod
    def load(path: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """The state saved in ``path`` (None if there is none), checked to be this job's: a
        state of another job, or of this source planned differently (a shard added, removed,
        or rejected then), is refused with ``FailedPrecondition`` (its offsets, hence default
        ids, would not match)."""
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise FailedPrecondition(f"{path}: cannot read the job state ({e})") from None
        if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
            got = data.get("fingerprint") if isinstance(data, dict) else None
            raise FailedPrecondition(
                f"{path} belongs to another job, or to this source planned with other shards "
                f"({got}); resuming with it would give rows other ids. Restore the source's "
                f"shards, or start over with a new state file and a new collection (or "
                f"--id-start past the ids already written)")
        return data

    # -- queries --------------------------------------------------------------------------
    def acked(self, path: str) -> int:
        return int(self.data["shards"][path]["acked"])

    def done(self, path: str) -> bool:
        return bool(self.data["shards"][path]["done"])

    def rows_acked(self) -> int:
        return sum(int(s["acked"]) for s in self.data["shards"].values())

    def rows_total(self) -> int:
        return sum(int(s["rows"]) for s in self.data["shards"].values())

    def errors(self) -> list[dict[str, Any]]:
        """Every reported problem: rejected shards, then bad rows, by file and row (a shard given
        up on transient errors: its error has ``"retryable": true``)."""
        out = list(self.data["rejected"])
        for s in self.data["shards"].values():
            out += s["errors"]
        return out

    def gave_up(self, path: str) -> bool:
        """Whether shard ``path`` was given up on transient read errors (not done: a later run
        resumes it)."""
        s = self.data["shards"][path]
        return not s["done"] and any(e.get("retryable") for e in s["errors"])

    def incomplete(self) -> list[dict[str, Any]]:
        """The shards given up on transient errors: their error (file, first unread row,
        reason, ``retryable``), in shard order."""
        return [e for p, s in self.data["shards"].items() if self.gave_up(p)
                for e in s["errors"] if e.get("retryable")]

    def rows_skipped(self) -> int:
        """Rows this run will not read: the unacknowledged rows of shards failed for good or
        given up (so rows_total - rows_acked - rows_skipped is what is left to do)."""
        return sum(max(0, int(s["rows"]) - int(s["acked"]))
                   for p, s in self.data["shards"].items() if s["done"] or self.gave_up(p))

    # -- updates --------------------------------------------------------------------------
    def ack(self, path: str, end: int, good: int, errors: Sequence[dict[str, Any]] = (),
            done: bool = False) -> None:
        """Rows ``[.., end)`` of shard ``path`` are durable (``good`` of them were written)."""
        s = self.data["shards"][path]
        if end > s["acked"]:
            s["acked"] = int(end)
            s["good"] = int(s["good"]) + int(good)
        seen = {(e["row"], e["error"]) for e in s["errors"]}
        for e in errors:
            if (e["row"], e["error"]) not in seen and len(s["errors"]) < MAX_ERRORS_PER_SHARD:
                s["errors"].append(dict(e))
                seen.add((e["row"], e["error"]))
        if done:
            s["done"] = True
            s["acked"] = max(int(s["acked"]), int(s["rows"]))
            _retire_retryable(s)  # given up, yet read to its end after all: not an error

    def fail_shard(self, path: str, error: str, row: int | None = None) -> None:
        """The shard is unusable from file row ``row`` on (default: its acknowledged offset):
        record it and mark it done (it is not retried)."""
        s = self.data["shards"][path]
        s["errors"].append({"file": path, "row": int(s["acked"] if row is None else row),
                            "error": error})
        s["done"] = True

    def give_up(self, path: str, error: str, row: int | None = None,
                limit: int | None = None) -> bool:
        """Reading (or writing) shard ``path`` failed at file row ``row`` (at least its
        acknowledged offset) with transient errors that outlasted the retries (storage or sink
        unreachable): record it as ``retryable`` and leave the shard not done, so that the
        next run of the job resumes it. A shard has one such error (a later one of the same run
        replaces it). ``limit`` (read give-ups only; a sink outage passes none and is not
        counted): the runs in a row that may give the shard up on read errors without
        acknowledging a row; the ``limit``-th such run fails it for good instead (an error that
        only looks transient would otherwise make every rerun stop incomplete). A run that
        acknowledged rows of the shard starts the count again at 0. Returns whether the shard
        stays resumable (False for a shard already done: nothing is recorded)."""
        s = self.data["shards"][path]
        if s["done"]:  # read to its end or failed for good already (e.g. a re-run task)
            return False
        row = max(int(s["acked"]), int(s["acked"] if row is None else row))
        if limit is not None and path not in self._counted:  # this run's first read give-up
            self._counted.add(path)
            if int(s["acked"]) > self._start_acked.get(path, 0):
                s["give_ups"] = 0  # this run made progress: not a run "without progress"
            else:
                s["give_ups"] = int(s.get("give_ups", 0)) + 1
        _retire_retryable(s, keep=False)
        n = int(s.get("give_ups", 0))
        if limit is not None and n >= limit:
            self.fail_shard(path, f"{error} (given up by {n} runs in a row without progress: "
                                  f"failed for good)", row)
            return False
        s["errors"].append({"file": path, "row": row, "error": error, "retryable": True})
        return True

    def dumps(self) -> str:
        """The state as the JSON text ``save`` writes (taken under the caller's lock, written
        outside it: see ``online._Tracker``)."""
        self.data["updated"] = time.time()
        return json.dumps(self.data, indent=1, sort_keys=True)

    def save(self, text: str | None = None) -> None:
        """Write the state (``text``: a ``dumps`` taken earlier) atomically."""
        write_text_atomic(self.path, self.dumps() if text is None else text)


class Progress:
    """Rows/s and ETA on the terminal (one line, at most every ``every_s``) and in a JSON file.
    ``skipped``: rows that will not be read (failed or given-up shards), left out of the ETA;
    after ``close`` the ETA is 0 when every row was done, else None (nothing more will come)."""

    def __init__(self, total: int, status_path: str | None = None, done: int = 0,
                 every_s: float = 1.0, stream=sys.stderr, label: str = "ingest") -> None:
        self.total = int(total)
        self.start_done = int(done)
        self.done = int(done)
        self.t0 = time.monotonic()
        self.last = 0.0
        self.every_s = every_s
        self.status_path = status_path
        self.stream = stream
        self.label = label
        self.extra: dict[str, Any] = {}
        self.skipped = 0
        self.closed = False

    def snapshot(self) -> dict[str, Any]:
        """The status: rows done/total/skipped, rows/s, elapsed, ETA (see the class doc)."""
        el = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.done - self.start_done) / el
        left = max(self.total - self.done - self.skipped, 0)
        if self.closed:
            eta = 0.0 if self.done >= self.total else None
        else:
            eta = left / rate if rate > 0 else (0.0 if left == 0 else None)
        return {"label": self.label, "rows_done": self.done, "rows_total": self.total,
                "rows_skipped": self.skipped, "rows_per_s": rate, "elapsed_s": el,
                "eta_s": eta, "finished": self.closed, "time": time.time(), **self.extra}

    def update(self, done: int, force: bool = False, skipped: int | None = None,
               **extra: Any) -> None:
        """Set the rows done (and skipped); print and write the status at most every
        ``every_s`` (``force``: now)."""
        self.done = int(done)
        if skipped is not None:
            self.skipped = int(skipped)
        self.extra.update(extra)
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        s = self.snapshot()
        if self.stream is not None:
            eta = "ETA ?" if s["eta_s"] is None else f"ETA {s['eta_s']:.0f}s"
            if s["finished"] and s["rows_done"] < s["rows_total"]:
                eta = f"stopped, {s['rows_total'] - s['rows_done']:,} rows not ingested"
            pct = 100.0 * s["rows_done"] / max(s["rows_total"], 1)
            print(f"\r{self.label}: {s['rows_done']:,}/{s['rows_total']:,} rows ({pct:5.1f}%) "
                  f"{s['rows_per_s']:,.0f} rows/s {eta}   ", end="", file=self.stream,
                  flush=True)
        if self.status_path:
            write_json_atomic(self.status_path, s)

    def close(self, **extra: Any) -> dict[str, Any]:
        """Print and write the final status (``extra``: more fields for it); returns it."""
        self.closed = True
        self.update(self.done, force=True, **extra)
        if self.stream is not None:
            print(file=self.stream, flush=True)
        return self.snapshot()
