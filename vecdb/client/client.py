"""``vecdb.Client``: the remote twin of the embedded API, over gRPC.

::

    client = vecdb.Client("127.0.0.1:6334", api_key=key)
    col = client.create_collection("docs", dim=384, metric="cosine", index="hnsw")
    col.create_tenant("acme")
    col.upsert(ids, vectors, tenant="acme")          # numpy in; split into messages <= 8 MiB
    res = col.search(queries, k=10, tenant="acme")   # numpy out: res.ids, res.distances
    col.ingest(batches, tenant="acme")               # UpsertStream with acks, resumes on restart

Errors come back as the same ``vecdb.errors`` classes as embedded (``NotFound``,
``PermissionDenied``...). UNAVAILABLE is retried with exponential back-off for up to
``retry_s`` seconds (the server restarting); every call has a deadline (``timeout``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import numpy as np

from vecdb._proto import wire
from vecdb._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    points_pb2,
    points_pb2_grpc,
    tenants_pb2,
    tenants_pb2_grpc,
)
from vecdb.client.errors import RemoteError, from_rpc_error
from vecdb.errors import InvalidArgument
from vecdb.results import GetResult, SearchResult, UpsertResult

_STATUS = {common_pb2.CREATED: "created", common_pb2.UPDATED: "updated"}
_RETRY = (grpc.StatusCode.UNAVAILABLE,)


def _as_matrix(x, what: str) -> np.ndarray:
    try:
        X = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what}: cannot be read as float32 numbers ({e})") from None
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2:
        raise InvalidArgument(f"{what}: expected a 2-D array [n, dim], got shape {X.shape}")
    return X


def _as_ids(ids) -> np.ndarray:
    if isinstance(ids, int | np.integer) and not isinstance(ids, bool):
        ids = [ids]
    a = np.asarray(ids)
    if a.ndim != 1:
        raise InvalidArgument(f"ids: expected a 1-D list of integers, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgument(f"ids: expected integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise InvalidArgument(f"ids: must be non-negative, got {int(a.min())}")
    return a.astype(np.uint64)


def _search_result(r: points_pb2.SearchResponse) -> SearchResult:
    ids = np.frombuffer(r.ids, dtype="<i8").reshape(r.nq, r.k).astype(np.int64)
    dist = np.frombuffer(r.distances, dtype="<f4").reshape(r.nq, r.k).astype(np.float32)
    return SearchResult(ids=ids, distances=dist)


class Client:
    """A connection to a vecdb server (thread-safe; share one per process).

    ``tls``: False (plaintext), True (system roots) or a path to a PEM root certificate.
    ``timeout``: default deadline per call in seconds. ``retry_s``: how long UNAVAILABLE is
    retried (0 = never). ``max_message_bytes``: upserts are split into messages below this.
    """

    def __init__(self, address: str, api_key: str | None = None, tls: bool | str = False,
                 timeout: float = 60.0, retry_s: float = 15.0,
                 max_message_bytes: int = 8 << 20) -> None:
        self.address = address
        self.timeout = timeout
        self.retry_s = retry_s
        self.max_message_bytes = max_message_bytes
        opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        if tls:
            roots = None
            if isinstance(tls, str):
                with open(tls, "rb") as f:
                    roots = f.read()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots),
                                                options=opts)
        else:
            self._channel = grpc.insecure_channel(address, options=opts)
        self._md = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._collections = collections_pb2_grpc.CollectionsStub(self._channel)
        self._tenants = tenants_pb2_grpc.TenantsStub(self._channel)
        self._points = points_pb2_grpc.PointsStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, method, request, timeout: float | None = None):
        """One unary call with the key, a deadline and back-off retries on UNAVAILABLE."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return method(request, metadata=self._md, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                if e.code() in _RETRY and time.monotonic() + delay < deadline:
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                raise from_rpc_error(e) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The gRPC health status name (``SERVING``, ``NOT_SERVING``...) of ``service``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers SERVING (RemoteError after ``timeout``)."""
        end = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=1.0) == "SERVING":
                    return
            except RemoteError:
                pass
            if time.monotonic() > end:
                raise RemoteError(f"server {self.address} not ready after {timeout} s",
                                  "UNAVAILABLE")
            time.sleep(0.05)

    # -- collections ----------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "flat",
                          params: dict[str, Any] | None = None) -> RemoteCollection:
        """Create a collection (admin key); its schema is frozen."""
        import json

        if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or not 0 < dim < 2**32:
            raise InvalidArgument(f"dim must be a positive integer, got {dim!r}")
        info = self._call(self._collections.CreateCollection,
                          collections_pb2.CreateCollectionRequest(
                              name=name, dim=int(dim), metric=metric, index=index,
                              params_json=json.dumps(params) if params else ""))
        return RemoteCollection(self, info)

    def collection(self, name: str) -> RemoteCollection:
        """Handle of an existing collection (NotFound otherwise)."""
        return RemoteCollection(self, self.describe_collection(name))

    def describe_collection(self, name: str) -> collections_pb2.CollectionInfo:
        return self._call(self._collections.DescribeCollection,
                          collections_pb2.DescribeCollectionRequest(name=name))

    def list_collections(self) -> list[str]:
        return list(self._call(self._collections.ListCollections,
                               collections_pb2.ListCollectionsRequest()).names)

    def has_collection(self, name: str) -> bool:
        return name in self.list_collections()

    def drop_collection(self, name: str) -> None:
        self._call(self._collections.DropCollection,
                   collections_pb2.DropCollectionRequest(name=name))

    def search_batch(self, searches: Iterable[dict[str, Any]]) -> list[SearchResult]:
        """Several searches in one round trip; each dict has ``collection``, ``tenant``,
        ``queries``, ``k`` and optionally ``params`` (tenants and collections may differ)."""
        import json

        reqs = []
        for s in searches:
            Q = _as_matrix(s["queries"], "queries")
            reqs.append(points_pb2.SearchRequest(
                collection=s["collection"], tenant=s.get("tenant") or "",
                queries=wire.pack_vectors(Q), k=int(s.get("k", 10)),
                params_json=json.dumps(s["params"]) if s.get("params") else ""))
        r = self._call(self._points.SearchBatch, points_pb2.SearchBatchRequest(searches=reqs))
        return [_search_result(x) for x in r.results]

    # -- admin ----------------------------------------------------------------------------
    def create_api_key(self, tenants: Iterable[str] = (), role: str = "read_write",
                       description: str = "") -> str:
        """Create an API key (admin key needed); returns the secret, which is shown only once."""
        if isinstance(tenants, str):
            tenants = [tenants]
        r = self._call(self._admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(
            role=role, tenants=list(tenants), description=description))
        return r.key

    def list_api_keys(self) -> list[dict[str, Any]]:
        r = self._call(self._admin.ListApiKeys, admin_pb2.ListApiKeysRequest())
        return [{"key_id": k.key_id, "role": k.role, "tenants": list(k.tenants),
                 "description": k.description, "created_at": k.created_at} for k in r.keys]

    def revoke_api_key(self, key_id: str) -> None:
        self._call(self._admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(key_id=key_id))

    def whoami(self) -> dict[str, Any]:
        k = self._call(self._admin.WhoAmI, admin_pb2.WhoAmIRequest())
        return {"key_id": k.key_id, "role": k.role, "tenants": list(k.tenants)}

    def checkpoint(self, collection: str = "") -> None:
        """Checkpoint one collection (or all): index saved, oplog truncated."""
        self._call(self._admin.Checkpoint, admin_pb2.CheckpointRequest(collection=collection))


class RemoteCollection:
    """A collection on the server; the same methods as the embedded ``Collection``."""

    def __init__(self, client: Client, info: collections_pb2.CollectionInfo) -> None:
        import json

        self._c = client
        self.name = info.name
        self.dim = info.dim
        self.metric = info.metric
        self.index_kind = info.index
        self.params = json.loads(info.params_json) if info.params_json else {}

    def __repr__(self) -> str:
        return (f"RemoteCollection({self.name!r}, dim={self.dim}, metric={self.metric!r}, "
                f"index={self.index_kind!r}, at {self._c.address})")

    def info(self) -> dict[str, Any]:
        """Schema and (for admin keys) counters."""
        i = self._c.describe_collection(self.name)
        return {"name": i.name, "dim": i.dim, "metric": i.metric, "index": i.index,
                "params": dict(self.params), "count": i.count, "tenants": i.tenants}

    def count(self) -> int:
        """Vectors in the collection (admin keys; tenant keys see 0: use ``tenant_stats``)."""
        return int(self._c.describe_collection(self.name).count)

    def __len__(self) -> int:
        return self.count()

    # -- tenants --------------------------------------------------------------------------
    def _treq(self, tenant: str) -> tenants_pb2.TenantRequest:
        return tenants_pb2.TenantRequest(collection=self.name, tenant=tenant)

    def create_tenant(self, name: str) -> int:
        return int(self._c._call(self._c._tenants.CreateTenant, self._treq(name)).id)

    def list_tenants(self) -> list[str]:
        return list(self._c._call(self._c._tenants.ListTenants,
                                  tenants_pb2.ListTenantsRequest(collection=self.name)).names)

    def tenant_stats(self, name: str) -> dict[str, Any]:
        r = self._c._call(self._c._tenants.TenantStats, self._treq(name))
        return {"name": r.name, "id": r.id, "owned": r.owned, "granted": r.granted,
                "visible": r.visible}

    def drop_tenant(self, name: str) -> dict[str, int]:
        r = self._c._call(self._c._tenants.DropTenant, self._treq(name))
        return {"deleted": int(r.deleted), "revoked": int(r.revoked)}

    # -- writes ---------------------------------------------------------------------------
    def _request(self, ids: np.ndarray, X: np.ndarray, tenant: str, payloads, batch_seq=0
                 ) -> points_pb2.UpsertRequest:
        req = points_pb2.UpsertRequest(collection=self.name, tenant=tenant, ids=ids.tolist(),
                                       vectors=wire.pack_vectors(X), batch_seq=batch_seq)
        if payloads is not None:
            req.payloads.extend(wire.dumps_payload(p) for p in payloads)
        return req

    def _prepare(self, ids, vectors, payloads):
        ids = _as_ids(ids)
        X = _as_matrix(vectors, "vectors")
        if len(X) != len(ids):
            raise InvalidArgument(f"got {len(ids)} ids but {len(X)} vectors")
        if payloads is not None and (isinstance(payloads, dict) or len(payloads) != len(ids)):
            raise InvalidArgument(f"payloads: expected a list of {len(ids)} dicts (or None)")
        return ids, X, payloads

    def upsert(self, ids, vectors, tenant: str, payloads: list[dict | None] | None = None
               ) -> UpsertResult:
        """Insert or replace vectors owned by ``tenant``; returns per-item status.

        Large inputs are split into messages of at most ``max_message_bytes``; each message is
        atomic (all-or-nothing), the whole call is not (an error stops at that message)."""
        ids, X, payloads = self._prepare(ids, vectors, payloads)
        row = max(1, X.shape[1] * 4 + 16)
        step = max(1, self._c.max_message_bytes // row)
        out_ids: list[int] = []
        status: list[str] = []
        seq = 0
        for lo in range(0, max(len(ids), 1), step):
            sl = slice(lo, lo + step)
            r = self._c._call(self._c._points.Upsert, self._request(
                ids[sl], X[sl], tenant, None if payloads is None else payloads[sl]))
            out_ids.extend(r.ids)
            status.extend(_STATUS.get(s, "unknown") for s in r.status)
            seq = r.seq
        return UpsertResult(ids=np.array(out_ids, dtype=np.uint64), status=status, seq=seq)

    def delete(self, ids, tenant: str) -> int:
        """Delete vectors owned by ``tenant``; returns the number deleted."""
        return int(self._c._call(self._c._points.Delete, points_pb2.DeleteRequest(
            collection=self.name, tenant=tenant, ids=_as_ids(ids).tolist())).deleted)

    def _access(self, rpc, ids, tenant: str, owner: str | None) -> int:
        return int(self._c._call(rpc, points_pb2.AccessRequest(
            collection=self.name, tenant=owner or "", ids=_as_ids(ids).tolist(),
            grantee=tenant)).changed)

    def grant(self, ids, tenant: str, owner: str | None = None) -> int:
        """Let ``tenant`` see ``ids``. ``owner``: the acting tenant (required for tenant keys;
        admin keys may omit it). Returns how many changed."""
        return self._access(self._c._points.GrantAccess, ids, tenant, owner)

    def revoke(self, ids, tenant: str, owner: str | None = None) -> int:
        """Stop ``tenant`` seeing ``ids``."""
        return self._access(self._c._points.RevokeAccess, ids, tenant, owner)

    def ingest(self, batches: Iterable, tenant: str, window: int = 8,
               progress: bool | Callable[[int], None] = False,
               on_ack: Callable[[np.ndarray], None] | None = None) -> int:
        """Stream ``batches`` of ``(ids, vectors[, payloads])`` over UpsertStream.

        At most ``window`` batches are in flight; each is acknowledged once durable. If the
        connection breaks (server restart), the stream is reopened within ``retry_s`` and the
        unacknowledged batches are re-sent (upsert is idempotent per id), so nothing acknowledged
        is lost and nothing is skipped. ``on_ack(ids)`` is called for every acknowledged batch;
        ``progress``: True for a progress line on stderr, or a callable given the running total.
        Returns the number of vectors acknowledged."""
        c = self._c
        src = iter(batches)
        unacked: OrderedDict[int, points_pb2.UpsertRequest] = OrderedDict()
        cond = threading.Condition()
        st = {"seq": 0, "total": 0, "exhausted": False, "error": None}
        report = _Progress(progress)

        def requests(resend, dead: threading.Event):
            yield from resend
            while True:
                with cond:
                    while len(unacked) >= window and not dead.is_set():
                        cond.wait(0.5)
                    if dead.is_set() or st["exhausted"]:
                        return
                    try:
                        item = next(src, None)
                        if item is None:
                            st["exhausted"] = True
                            return
                        ids, X, pays = self._prepare(*item) if len(item) == 3 else \
                            self._prepare(item[0], item[1], None)
                        req = self._request(ids, X, tenant, pays, st["seq"])
                    except Exception as e:  # bad batch: stop, raise it in the caller
                        st["error"] = e
                        st["exhausted"] = True
                        return
                    unacked[st["seq"]] = req
                    st["seq"] += 1
                yield req

        deadline = None
        delay = 0.05
        while True:
            dead = threading.Event()
            with cond:
                resend = list(unacked.values())
            call = c._points.UpsertStream(requests(resend, dead), metadata=c._md)
            try:
                for ack in call:
                    with cond:
                        req = unacked.pop(ack.batch_seq, None)
                        if req is not None:
                            st["total"] += len(req.ids)
                        cond.notify_all()
                    deadline, delay = None, 0.05
                    if req is not None:
                        if on_ack is not None:
                            on_ack(np.array(req.ids, dtype=np.uint64))
                        report(st["total"])
            except grpc.RpcError as e:
                dead.set()
                with cond:
                    cond.notify_all()
                if e.code() in _RETRY and c.retry_s > 0:
                    deadline = deadline or time.monotonic() + c.retry_s
                    if time.monotonic() + delay < deadline:
                        time.sleep(delay * (0.5 + random.random()))
                        delay = min(delay * 2, 1.0)
                        continue
                raise from_rpc_error(e) from None
            finally:
                dead.set()
            if st["error"] is not None:
                raise st["error"]
            with cond:
                if st["exhausted"] and not unacked:
                    break
        report(st["total"], final=True)
        return st["total"]

    # -- reads ----------------------------------------------------------------------------
    def search(self, queries, k: int = 10, tenant: str | None = None,
               params: dict[str, Any] | None = None, timeout: float | None = None
               ) -> SearchResult:
        """k nearest vectors per query among those ``tenant`` may see (embedded semantics)."""
        import json

        Q = _as_matrix(queries, "queries")
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 0 <= k < 2**32:
            raise InvalidArgument(f"k must be a positive integer, got {k!r}")
        r = self._c._call(self._c._points.Search, points_pb2.SearchRequest(
            collection=self.name, tenant=tenant or "", queries=wire.pack_vectors(Q), k=int(k),
            params_json=json.dumps(params) if params else ""), timeout)
        return _search_result(r)

    def get(self, ids, tenant: str) -> GetResult:
        """Vectors and payloads of those ``ids`` the tenant may see, in request order."""
        r = self._c._call(self._c._points.Get, points_pb2.GetRequest(
            collection=self.name, tenant=tenant, ids=_as_ids(ids).tolist()))
        X = wire.unpack_vectors(r.vectors, n=len(r.ids))
        if X.shape[1] == 0:
            X = np.zeros((0, self.dim), dtype=np.float32)
        return GetResult(ids=np.array(r.ids, dtype=np.uint64), vectors=X.copy(),
                         payloads=[wire.loads_payload(p) for p in r.payloads])

    def scroll(self, tenant: str, page_size: int = 1000, with_vectors: bool = False,
               with_payloads: bool = False, start_after: int | None = None,
               limit: int = 0) -> Iterable[GetResult]:
        """Pages of every vector ``tenant`` may see, in id order (server-streaming). Resume an
        interrupted scroll with ``start_after=<last id received>``."""
        req = points_pb2.ScrollRequest(collection=self.name, tenant=tenant, page_size=page_size,
                                       with_vectors=with_vectors, with_payloads=with_payloads,
                                       has_start_after=start_after is not None,
                                       start_after=start_after or 0, limit=limit)
        try:
            for page in self._c._points.Scroll(req, metadata=self._c._md,
                                               timeout=self._c.timeout):
                X = (wire.unpack_vectors(page.vectors, n=len(page.ids)) if with_vectors
                     else np.zeros((len(page.ids), 0), dtype=np.float32))
                yield GetResult(ids=np.array(page.ids, dtype=np.uint64), vectors=X.copy(),
                                payloads=[wire.loads_payload(p) for p in page.payloads])
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def export(self, tenant: str, with_payloads: bool = False) -> GetResult:
        """Everything ``tenant`` may see as one result (ids sorted)."""
        pages = list(self.scroll(tenant, page_size=5000, with_vectors=True,
                                 with_payloads=with_payloads))
        if not pages:
            return GetResult(np.zeros(0, np.uint64), np.zeros((0, self.dim), np.float32), [])
        return GetResult(ids=np.concatenate([p.ids for p in pages]),
                         vectors=np.concatenate([p.vectors for p in pages]),
                         payloads=[x for p in pages for x in p.payloads])

    def checkpoint(self) -> None:
        self._c.checkpoint(self.name)


class _Progress:
    """Progress of ``ingest``: tqdm when installed, else a line on stderr at most once a second."""

    def __init__(self, progress) -> None:
        self.fn = progress if callable(progress) else None
        self.on = progress is True
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, total: int, final: bool = False) -> None:
        if self.fn is not None:
            self.fn(total)
        elif self.on:
            import sys

            now = time.perf_counter()
            if final or now - self.last >= 1.0:
                self.last = now
                rate = total / max(now - self.t0, 1e-9)
                end = "\n" if final else "\r"
                print(f"ingested {total:,} vectors ({rate:,.0f}/s)", end=end, file=sys.stderr,
                      flush=True)
