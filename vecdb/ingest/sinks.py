"""Where the online path writes: the embedded engine or a running server (gRPC).

A sink has three calls: ``ensure_tenants(names)``, ``upsert(ids, vectors, tenant, payloads)`` and
``grant(ids, tenant, owner)``; each returns only once the write is durable (that is the
acknowledgement the job state records). Upserts are by id, so writing a batch twice is harmless:
this is what makes a re-run job idempotent.

- ``EmbeddedSink``: ``vecdb.open(path).collection(name)`` in-process. A data folder is opened by
  one process at a time, so the Ray job runs it in one actor that every worker sends batches to.
- ``GrpcSink``: ``vecdb.Client(address).collection(name)``; every worker has its own connection.
  Upserts go through ``UpsertStream`` (``RemoteCollection.ingest``), which re-sends unacknowledged
  batches across a server restart; on top of that ``with_retries`` retries transient failures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from vecdb.errors import FailedPrecondition, VecdbError

T = TypeVar("T")


class Sink(Protocol):
    """What the online workers write to (see module doc)."""

    def ensure_tenants(self, names: Sequence[str]) -> None: ...

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, tenant: str,
               payloads: list[dict | None] | None = None) -> int: ...

    def grant(self, ids: np.ndarray, tenant: str, owner: str) -> int: ...

    def close(self) -> None: ...


_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "INTERNAL"}


def with_retries(fn: Callable[[], T], retries: int = 5, base_s: float = 0.1) -> T:
    """Call ``fn``; retry transient failures (transport errors, a server restarting: the client's
    ``RemoteError`` with an UNAVAILABLE-like code) with jittered exponential back-off. Request
    errors (InvalidArgument, PermissionDenied, ...) would fail again and are raised at once."""
    delay = base_s
    for attempt in range(retries + 1):
        try:
            return fn()
        except VecdbError as e:
            if getattr(e, "code", None) not in _TRANSIENT or attempt == retries:
                raise
        except (ConnectionError, TimeoutError):
            if attempt == retries:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class EmbeddedSink:
    """Writes into ``collection`` of the embedded database at ``data`` (created with ``create``
    = dict(dim, metric, index, params) if missing). Waits up to ``lock_wait_s`` for the folder's
    lock (a killed previous job's process may take a moment to exit)."""

    def __init__(self, data: str, collection: str, create: dict[str, Any] | None = None,
                 lock_wait_s: float = 30.0, **options: Any) -> None:
        import vecdb

        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                self.db = vecdb.open(data, **options)
                break
            except FailedPrecondition:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if not self.db.has_collection(collection):
            if create is None:
                self.db.close()
                raise FailedPrecondition(f"collection {collection!r} does not exist in {data} "
                                         f"(pass create=dict(dim=..., metric=..., index=...))")
            self.db.create_collection(collection, **create)
        self.col = self.db.collection(collection)
        self._tenants = set(self.col.list_tenants())
        self._t0 = time.perf_counter()
        self._timings: list[tuple[float, int, float]] = []

    def dim(self) -> int:
        return self.col.dim

    def batch_timings(self) -> list[tuple[float, int, float]]:
        """(start since the sink opened, rows, seconds) of every upsert so far: the server
        side of an online stream, batch by batch (the benchmark reads it to see which batches
        are slow)."""
        return list(self._timings)

    def ensure_tenants(self, names: Sequence[str]) -> None:
        for n in names:
            if n not in self._tenants:
                if n not in self.col.list_tenants():
                    self.col.create_tenant(n)
                self._tenants.add(n)

    def upsert(self, ids, vectors, tenant, payloads=None) -> int:
        t = time.perf_counter()
        n = len(self.col.upsert(ids, vectors, tenant=tenant, payloads=payloads).ids)
        self._timings.append((t - self._t0, n, time.perf_counter() - t))
        return n

    def grant(self, ids, tenant, owner) -> int:
        return self.col.grant(ids, tenant=tenant, owner=owner)

    def count(self) -> int:
        return len(self.col)

    def close(self) -> None:
        self.db.close()


class GrpcSink:
    """Writes into ``collection`` of the server at ``address`` through the client SDK."""

    def __init__(self, address: str, collection: str, api_key: str | None = None,
                 create: dict[str, Any] | None = None, retries: int = 5) -> None:
        from vecdb.client import Client

        self.client = Client(address, api_key=api_key)
        self.retries = retries
        if create is not None and not self.client.has_collection(collection):
            try:
                self.client.create_collection(collection, **create)
            except VecdbError:
                if not self.client.has_collection(collection):  # lost a race with a peer
                    raise
        self.col = self.client.collection(collection)
        self._tenants: set[str] = set()

    def dim(self) -> int:
        return int(self.col.info()["dim"])

    def ensure_tenants(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self._tenants]
        if not missing:
            return
        have = set(self.col.list_tenants())
        for n in missing:
            if n not in have:
                try:
                    self.col.create_tenant(n)
                except VecdbError:
                    if n not in set(self.col.list_tenants()):  # another worker created it
                        raise
            self._tenants.add(n)

    def upsert(self, ids, vectors, tenant, payloads=None) -> int:
        item = (ids, vectors) if payloads is None else (ids, vectors, payloads)
        return with_retries(lambda: self.col.ingest([item], tenant=tenant, window=1),
                            self.retries)

    def grant(self, ids, tenant, owner) -> int:
        return with_retries(lambda: self.col.grant(ids, tenant=tenant, owner=owner), self.retries)

    def count(self) -> int:
        return self.col.count()

    def close(self) -> None:
        self.client.close()


def write_batch(sink: Sink, ids: np.ndarray, X: np.ndarray, tenants: list[str],
                acl: list[list[str]] | None, payloads: list | None) -> int:
    """Write one validated batch: one upsert per owner tenant, then the grants of its access
    lists (grouped by granted tenant). Returns the rows written."""
    names = sorted(set(tenants) | ({t for a in acl for t in a} if acl else set()))
    sink.ensure_tenants(names)
    tarr = np.asarray(tenants, dtype=object)
    for t in sorted(set(tenants)):
        m = np.flatnonzero(tarr == t) if len(names) > 1 else np.arange(len(ids))
        pays = None if payloads is None else [payloads[i] for i in m.tolist()]
        sink.upsert(ids[m], X[m], t, pays)
    if acl:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (owner, granted) in enumerate(zip(tenants, acl, strict=True)):
            for g in granted:
                if g != owner:
                    groups.setdefault((g, owner), []).append(i)
        for (g, owner), rows in sorted(groups.items()):
            sink.grant(ids[np.array(rows)], g, owner)
    return len(ids)
