"""A collection: schema, tenants, the durable write path, reads, checkpoints and recovery.

Write path (one code path for every mutation)::

    validate (stateless: ids, dim, NaN/inf, sizes)           no lock
      |
    writer mutex (writers serialised per collection)
      validate against state (tenant exists, owner, ids)     state only changes under this mutex
      build one WriteBatch: the data + oplog[seq] = record
      |
      RW lock, write side (readers excluded)
        store.write(batch)            <- durable here (all or nothing)
        apply(record): state + index  <- the same function replay uses
      |
    acknowledge (return)

Source of truth: the column families (``vectors``, ``ids``, ``acl``, ``payload``, ``meta``). The
in-memory index and the id/owner/grant maps are a cache of them, saved by checkpoints
(``ckpt-<seq>/``: ``index.npz`` + ``state.npz``, with the oplog sequence they include, recorded in
``meta/checkpoint``). The oplog holds, for every batch after the latest checkpoint, what the cache
still has to apply; it is truncated in the same atomic batch that records a new checkpoint.
Start-up = load the checkpoint + replay the oplog after it; with no usable checkpoint, the maps
and the index are rebuilt from the column families.

Readers (search, get) take the read side of the RW lock, so they see a batch entirely or not at
all. A checkpoint holds the writer mutex (writers wait, readers continue) while it saves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from vecdb.engine import codec
from vecdb.engine.options import Options
from vecdb.engine.rwlock import RWLock
from vecdb.engine.state import CollectionState, acl_csr
from vecdb.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from vecdb.index import index_class
from vecdb.index.base import Index, SearchParams
from vecdb.kernels import check_k, check_metric, prepare
from vecdb.results import CREATED, UPDATED, GetResult, SearchResult, UpsertResult
from vecdb.storage import MemoryKVStore, WriteBatch
from vecdb.storage.npz import write_npz
from vecdb.storage.rocks import RocksKVStore, folder_bytes

MAX_ID = (1 << 63) - 1  # ids are uint64 on the wire, limited to int63 so int64 results hold them
MAX_TENANT_NAME = 128
_SCHEMA = b"schema"
_CHECKPOINT = b"checkpoint"
_TENANT = b"tenant/"
_TENANT_NEXT = b"tenant_next"
IMPORT_FAMILIES = ("vectors", "acl", "payload", "postings")  # what import_sst may ingest


def _fmt_ids(ids) -> str:
    ids = list(ids)
    more = f" (+{len(ids) - 5} more)" if len(ids) > 5 else ""
    return ", ".join(str(int(i)) for i in ids[:5]) + more


def check_ids(ids, max_batch: int) -> np.ndarray:
    """Validate external ids: 1-D integers in [0, 2^63), no duplicates -> uint64 array."""
    if isinstance(ids, int | np.integer) and not isinstance(ids, bool):
        ids = [ids]
    try:
        a = np.asarray(ids)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"ids: cannot be read as integers ({e})") from None
    if a.ndim != 1:
        raise InvalidArgument(f"ids: expected a 1-D list of integers, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if not np.issubdtype(a.dtype, np.integer):
        if a.dtype == object and all(isinstance(x, int) and not isinstance(x, bool) for x in a):
            if min(a) < 0 or max(a) > MAX_ID:
                raise InvalidArgument(f"ids: must be in [0, 2^63), got {min(a)}..{max(a)}")
            a = a.astype(np.uint64)
        else:
            raise InvalidArgument(f"ids: expected integers, got dtype {a.dtype}")
    if len(a) > max_batch:
        raise ResourceExhausted(f"batch of {len(a)} ids exceeds max_batch={max_batch}")
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise InvalidArgument(f"ids: must be non-negative, got {int(a.min())}")
    a = a.astype(np.uint64)
    if a.max() > MAX_ID:
        raise InvalidArgument(f"ids: must be below 2^63, got {int(a.max())}")
    u, counts = np.unique(a, return_counts=True)
    if len(u) != len(a):
        raise InvalidArgument(f"ids: duplicate ids in one batch: {_fmt_ids(u[counts > 1])}")
    return a


def check_tenant_name(name) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_TENANT_NAME:
        raise InvalidArgument(f"tenant name must be a non-empty string of at most "
                              f"{MAX_TENANT_NAME} characters, got {name!r}")
    if not name.isprintable():
        raise InvalidArgument(f"tenant name {name!r} contains control characters")
    return name


def build_index(kind: str, dim: int, metric: str, params: dict[str, Any], store=None) -> Index:
    """Instantiate index ``kind`` with creation ``params`` (unknown knob -> InvalidArgument).

    An index class that keeps data in the collection's store (SPANN's posting lists) declares
    ``needs_store = True`` and receives the store as ``store=`` (constructor and ``load``).
    """
    cls = index_class(kind)
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise InvalidArgument(f"params must be a dict of {kind} knobs, got {params!r}")
    kw = dict(params)
    if getattr(cls, "needs_store", False):
        kw["store"] = store if store is not None else MemoryKVStore()
    try:
        return cls(dim, metric, **kw)
    except TypeError as e:
        raise InvalidArgument(f"bad parameter(s) {sorted(params)} for index {kind!r}: {e}"
                              ) from None


class Collection:
    """One collection of a ``Database`` (get it with ``db.collection(name)``).

    Ids are uint64 (below 2^63); every vector has an owner tenant (the one that upserted it) and an
    access list (the owner plus granted tenants). Every read is scoped to one tenant.
    """

    def __init__(self, path: str, options: Options, name: str | None = None, *,
                 _import: bool = False,
                 _adopt: Callable[[RocksKVStore, CollectionState], Index] | None = None,
                 _maps: list[tuple[str, int, int, int]] | None = None) -> None:
        self.path = path
        self._opts = options
        self._store = RocksKVStore(os.path.join(path, "store"), sync=options.sync,
                                   block_cache_bytes=options.block_cache_bytes,
                                   direct_reads=options.direct_reads, create=False)
        try:
            raw = self._store.get("meta", _SCHEMA)
            if raw is None:
                raise FailedPrecondition(f"{path}: not a vecdb collection (no schema)")
            schema = json.loads(raw)
            self.name: str = name or schema["name"]
            self.dim: int = int(schema["dim"])
            self.metric: str = schema["metric"]
            self.index_kind: str = schema["index"]
            self.params: dict[str, Any] = dict(schema["params"])
            self._wmutex = threading.Lock()
            self._rw = RWLock()
            self._closed = False
            self._broken: str | None = None
            self._tenants: dict[str, int] = {}
            self._tenant_names: dict[int, str] = {}
            for k, v in self._store.iterate("meta", prefix=_TENANT):
                tid = int(v)
                self._tenants[k[len(_TENANT):].decode()] = tid
                self._tenant_names[tid] = k[len(_TENANT):].decode()
            nxt = self._store.get("meta", _TENANT_NEXT)
            self._next_tenant = int(nxt) if nxt else 0
            self._dirty_rows = 0
            self._dirty_since = 0.0
            self.recovery: dict[str, Any] = {}
            self.last_checkpoint_error: str | None = None  # set by the background checkpointer
            if _import:  # import_sst: the state comes from the ingested families, not a log
                t0 = time.perf_counter()
                self._seq = 0
                self._absent: set[int] = set()
                self._scan_store(_adopt, _maps)
                self.recovery = {"source": "import", "replayed": 0, "seq": 0,
                                 "load_s": time.perf_counter() - t0, "replay_s": 0.0}
            else:
                self._recover()
        except BaseException:
            try:
                self._close_index()
            finally:
                self._store.close()
            raise

    # -- creation -------------------------------------------------------------------------
    @staticmethod
    def create(path: str, name: str, dim: int, metric: str, index: str,
               params: dict[str, Any] | None, options: Options) -> None:
        """Validate a schema and create the collection's store at ``path`` (must not exist)."""
        if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or not 1 <= dim <= 65536:
            raise InvalidArgument(f"dim must be an integer in [1, 65536], got {dim!r}")
        metric = check_metric(metric)
        if not isinstance(index, str):
            raise InvalidArgument(f"index must be a string, got {index!r}")
        params = {} if params is None else params
        build_index(index, int(dim), metric, params)  # validates kind and knobs
        try:
            json.dumps(params)
        except (TypeError, ValueError):
            raise InvalidArgument("params must be JSON-serialisable") from None
        store = RocksKVStore(os.path.join(path, "store"), sync=True,
                             block_cache_bytes=options.block_cache_bytes)
        try:
            schema = {"name": name, "dim": int(dim), "metric": metric, "index": index,
                      "params": params, "created": time.time(), "format": 1}
            store.put("meta", _SCHEMA, json.dumps(schema).encode())
        finally:
            store.close()

    # -- small helpers --------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")
        if self._broken:
            raise FailedPrecondition(f"collection {self.name!r} needs a reopen: {self._broken}")

    def _tid(self, tenant) -> int:
        if not isinstance(tenant, str):
            raise InvalidArgument(f"tenant must be a tenant name (str), got {tenant!r}")
        tid = self._tenants.get(tenant)
        if tid is None:
            raise NotFound(f"tenant {tenant!r} not found in collection {self.name!r}")
        return tid

    def _new_index(self) -> Index:
        return build_index(self.index_kind, self.dim, self.metric, self.params, self._store)

    def info(self) -> dict[str, Any]:
        """Schema and counters (what the server's DescribeCollection returns)."""
        return {"name": self.name, "dim": self.dim, "metric": self.metric,
                "index": self.index_kind, "params": dict(self.params), "count": len(self),
                "tenants": len(self._tenants), "seq": self._seq}

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return (f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, "
                f"index={self.index_kind!r}, count={len(self._state)})")

    # -- the commit + apply core ----------------------------------------------------------
    def _commit(self, batch: WriteBatch, op: str, meta: dict, arrays: dict[str, np.ndarray],
                rows: int, vectors: np.ndarray | None = None) -> int:
        """Write ``batch`` + its oplog record atomically, then apply the record. Caller holds
        the writer mutex. Returns the sequence number.

        The record holds slots and ids, not the vectors (they are in the batch's ``vectors``
        rows already; writing them twice would halve ingest): replay reads them back from the
        ``vectors`` column family (``_replay_vectors``)."""
        seq = self._seq + 1
        batch.put("oplog", codec.be_key(seq), codec.encode_record(op, meta, arrays))
        with self._rw.write():
            self._store.write(batch)
            self._seq = seq
            try:
                self._apply(op, meta, arrays, vectors)
            except Exception as e:  # durable but not applied: refuse service until reopen
                self._broken = f"applying {op} #{seq} failed: {e!r}"
                raise FailedPrecondition(self._broken) from e
        if not self._dirty_rows:
            self._dirty_since = time.monotonic()
        self._dirty_rows += max(rows, 1)
        return seq

    def _replay_vectors(self, slots: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        """Vectors of an upsert record being replayed, read from the ``vectors`` family.

        The family holds the *latest* value of each slot. Where it still holds the record's id,
        its vector is the one this record wrote or a later replacement of the same id (which a
        later record re-applies anyway): either way the final state is right. Where the slot is
        empty or holds another id, a later record deleted it (and maybe reused the slot), so the
        vector is irrelevant: the slot is marked absent from the index until that delete.
        Returns (mask of slots to add, their vectors)."""
        vals = self._store.multi_get("vectors", codec.be_keys(slots))
        ok = np.zeros(len(slots), dtype=bool)
        X = np.zeros((len(slots), self.dim), dtype=np.float32)
        present = [i for i, v in enumerate(vals) if v is not None]
        if present:
            rec = codec.unpack_vectors([vals[i] for i in present], self.dim)
            match = rec["id"] == ids[present]
            idx = np.array(present, dtype=np.int64)[match]
            ok[idx] = True
            X[idx] = rec["vec"][match]
        return ok, X[ok]

    def _apply(self, op: str, meta: dict, a: dict[str, np.ndarray],
               vectors: np.ndarray | None = None) -> None:
        """Apply one oplog record to the in-memory state and index (live path and replay)."""
        st, idx, absent = self._state, self._index, self._absent
        if op == "upsert":
            slots = a["slots"].astype(np.int64)
            held = None
            if vectors is None:  # replay: the slots the index holds before this record
                held = slots[st.slot_owner[np.minimum(slots, st.high - 1)] >= 0] \
                    if st.high else slots[:0]
                held = held[held < st.high]
            st.apply_upsert(slots, a["ids"], int(meta["owner"]))
            if vectors is None:  # replay
                ok, vectors = self._replay_vectors(slots, a["ids"])
                # a slot this record replaced whose vector is gone from the store (deleted or
                # reused later): the index's copy (from the checkpoint) is stale, so it goes;
                # the later delete skips absent slots and would leave it searchable
                stale = np.setdiff1d(np.intersect1d(slots[~ok], held),
                                     np.fromiter(absent, dtype=np.int64, count=len(absent)))
                if len(stale):
                    idx.remove(stale)
                absent.update(slots[~ok].tolist())
                absent.difference_update(slots[ok].tolist())
                slots = slots[ok]
            if len(slots):
                idx.add(vectors, slots, st.acl_csr(slots))
            return
        if absent:  # only during replay: keep index calls to slots the index holds
            def present(s: np.ndarray) -> np.ndarray:
                return s[~np.isin(s, np.fromiter(absent, dtype=np.int64, count=len(absent)))]
        else:
            def present(s: np.ndarray) -> np.ndarray:
                return s
        if op == "delete":
            slots = a["slots"].astype(np.int64)
            live = present(slots)
            if len(live):
                idx.remove(live)
            st.apply_delete(slots)
            absent.difference_update(slots.tolist())
        elif op == "grant":
            t = int(meta["tenant"])
            for s in present(a["slots"].astype(np.int64)).tolist():
                idx.grant(s, t)
            st.apply_grant(a["slots"], t)
        elif op == "revoke":
            t = int(meta["tenant"])
            for s in present(a["slots"].astype(np.int64)).tolist():
                idx.revoke(s, t)
            st.apply_revoke(a["slots"], t)
        elif op == "drop_tenant":
            t = int(meta["tenant"])
            owned = a["owned"].astype(np.int64)
            live = present(owned)
            if len(live):
                idx.remove(live)
            st.apply_delete(owned)
            absent.difference_update(owned.tolist())
            for s in present(a["granted"].astype(np.int64)).tolist():
                idx.revoke(s, t)
            st.apply_revoke(a["granted"], t)
            st.forget_tenant(t)
        else:
            raise FailedPrecondition(f"unknown oplog record {op!r}")

    # -- tenants --------------------------------------------------------------------------
    def create_tenant(self, name: str) -> int:
        """Add tenant ``name``; returns its dense id. AlreadyExists if the name is taken."""
        check_tenant_name(name)
        with self._wmutex:
            self._check_open()
            if name in self._tenants:
                raise AlreadyExists(f"tenant {name!r} already exists in collection {self.name!r}")
            tid = self._next_tenant
            b = WriteBatch()
            b.put("meta", _TENANT + name.encode(), str(tid).encode())
            b.put("meta", _TENANT_NEXT, str(tid + 1).encode())
            with self._rw.write():
                self._store.write(b)
                self._tenants[name] = tid
                self._tenant_names[tid] = name
                self._next_tenant = tid + 1
            return tid

    def list_tenants(self) -> list[str]:
        """Tenant names, sorted."""
        self._check_open()
        return sorted(self._tenants)

    def tenant_stats(self, name: str) -> dict[str, Any]:
        """``{"name", "id", "owned", "granted", "visible"}``: vectors the tenant owns, vectors
        shared with it by others, and the total it can search."""
        with self._rw.read():
            self._check_open()
            t = self._tid(name)
            owned = self._state.owned.get(t, 0)
            granted = len(self._state.granted.get(t, ()))
            return {"name": name, "id": t, "owned": owned, "granted": granted,
                    "visible": owned + granted}

    def drop_tenant(self, name: str) -> dict[str, int]:
        """Delete the vectors ``name`` owns, remove it from every access list, forget the name.

        Returns ``{"deleted": n_owned_vectors, "revoked": n_grants_removed}``."""
        with self._wmutex:
            self._check_open()
            t = self._tid(name)
            st = self._state
            owned = st.owned_by(t)
            granted = np.array(sorted(st.granted.get(t, ())), dtype=np.int64)
            b = WriteBatch()
            self._delete_rows(b, owned)
            for s in granted.tolist():
                rest = sorted(st.grants.get(s, set()) - {t})
                key = codec.be_key(s)
                if rest:
                    b.put("acl", key, np.array(rest, dtype="<i4").tobytes())
                else:
                    b.delete("acl", key)
            b.delete("meta", _TENANT + name.encode())
            self._commit(b, "drop_tenant", {"tenant": t}, {"owned": owned, "granted": granted},
                         len(owned) + len(granted))
            with self._rw.write():
                del self._tenants[name]
                del self._tenant_names[t]
            return {"deleted": len(owned), "revoked": len(granted)}

    # -- writes ---------------------------------------------------------------------------
    def _check_payloads(self, payloads, n: int) -> list[bytes | None] | None:
        if payloads is None:
            return None
        if isinstance(payloads, dict | str | bytes) or len(payloads) != n:
            raise InvalidArgument(f"payloads: expected a list of {n} dicts (or None)")
        out: list[bytes | None] = []
        for i, p in enumerate(payloads):
            if p is None:
                out.append(None)
                continue
            if not isinstance(p, dict):
                raise InvalidArgument(f"payloads[{i}]: expected a dict or None, got "
                                      f"{type(p).__name__}")
            try:
                raw = json.dumps(p, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"payloads[{i}]: not JSON-serialisable ({e})") from None
            if len(raw) > self._opts.max_payload_bytes:
                raise ResourceExhausted(f"payloads[{i}]: {len(raw)} bytes exceeds "
                                        f"max_payload_bytes={self._opts.max_payload_bytes}")
            out.append(raw)
        return out

    def upsert(self, ids, vectors, tenant: str, payloads: list[dict | None] | None = None
               ) -> UpsertResult:
        """Insert or replace vectors owned by ``tenant``; all-or-nothing.

        An existing id keeps its slot and access list; its vector and payload are replaced (its
        owner must be ``tenant``: PermissionDenied otherwise). Returns per-item status.
        """
        ids = check_ids(ids, self._opts.max_batch)
        X = prepare(vectors, self.dim, self.metric)
        if X.shape[0] != len(ids):
            raise InvalidArgument(f"got {len(ids)} ids but {X.shape[0]} vectors")
        raw_payloads = self._check_payloads(payloads, len(ids))
        with self._wmutex:
            self._check_open()
            t = self._tid(tenant)
            if not len(ids):
                return UpsertResult(ids=ids, status=[], seq=self._seq)
            st = self._state
            slots = st.lookup(ids)
            exists = slots >= 0
            if exists.any():
                foreign = exists.copy()
                foreign[exists] = st.slot_owner[slots[exists]] != t
                if foreign.any():
                    raise PermissionDenied(f"ids {_fmt_ids(ids[foreign])} are owned by another "
                                           f"tenant; {tenant!r} cannot replace them")
            n_new = int((~exists).sum())
            if n_new:
                slots[~exists] = st.allocate(n_new)
            b = WriteBatch()
            skeys = codec.be_keys(slots)
            b.put_many("vectors", skeys,
                       codec.pack_vectors(ids, np.full(len(ids), t, dtype=np.int32), X))
            if raw_payloads is None:
                if exists.any():
                    b.delete_many("payload", [k for k, e in zip(skeys, exists, strict=True) if e])
            else:
                for k, p, e in zip(skeys, raw_payloads, exists, strict=True):
                    if p is not None:
                        b.put("payload", k, p)
                    elif e:
                        b.delete("payload", k)
            seq = self._commit(b, "upsert", {"owner": t}, {"slots": slots, "ids": ids},
                               len(ids), vectors=X)
        status = np.where(exists, UPDATED, CREATED).tolist()
        return UpsertResult(ids=ids, status=status, seq=seq)

    def _resolve(self, ids: np.ndarray, tenant: int, owner_only: bool, what: str) -> np.ndarray:
        """Slots of ``ids``; NotFound for ids the tenant cannot see (missing or foreign: the two
        are indistinguishable, so errors never reveal another tenant's ids), PermissionDenied
        when ``owner_only`` and the tenant sees but does not own one."""
        st = self._state
        slots = st.lookup(ids)
        vis = st.visible(slots, tenant)
        if not vis.all():
            raise NotFound(f"{what}: ids not found: {_fmt_ids(ids[~vis])}")
        if owner_only:
            notmine = st.slot_owner[slots] != tenant
            if notmine.any():
                raise PermissionDenied(f"{what}: only the owner may do this; ids "
                                       f"{_fmt_ids(ids[notmine])} are shared with you, not yours")
        return slots

    def _delete_rows(self, b: WriteBatch, slots: np.ndarray) -> None:
        if not len(slots):
            return
        keys = codec.be_keys(slots)
        b.delete_many("vectors", keys)
        b.delete_many("acl", keys)
        b.delete_many("payload", keys)

    def delete(self, ids, tenant: str) -> int:
        """Delete vectors owned by ``tenant``; all-or-nothing. Returns the number deleted."""
        ids = check_ids(ids, self._opts.max_batch)
        with self._wmutex:
            self._check_open()
            t = self._tid(tenant)
            slots = self._resolve(ids, t, True, "delete")
            if not len(slots):
                return 0
            b = WriteBatch()
            self._delete_rows(b, slots)
            self._commit(b, "delete", {}, {"slots": slots}, len(slots))
            return len(slots)

    def _change_access(self, ids, tenant: str, owner: str | None, grant: bool) -> int:
        what = "grant" if grant else "revoke"
        ids = check_ids(ids, self._opts.max_batch)
        with self._wmutex:
            self._check_open()
            t = self._tid(tenant)
            st = self._state
            if owner is not None:
                slots = self._resolve(ids, self._tid(owner), True, what)
            else:
                slots = st.lookup(ids)
                if (slots < 0).any():
                    raise NotFound(f"{what}: ids not found: {_fmt_ids(ids[slots < 0])}")
            owners = st.slot_owner[slots]
            if not grant and (owners == t).any():
                raise InvalidArgument(f"revoke: {tenant!r} owns ids {_fmt_ids(ids[owners == t])}; "
                                      f"an owner always sees its vectors (delete them instead)")
            has = np.array([t in st.grants.get(s, ()) for s in slots.tolist()], dtype=bool)
            change = slots[(owners != t) & ~has] if grant else slots[has]
            if not len(change):
                return 0
            b = WriteBatch()
            for s in change.tolist():
                g = set(st.grants.get(s, ()))
                if grant:
                    g.add(t)
                else:
                    g.discard(t)
                key = codec.be_key(s)
                if g:
                    b.put("acl", key, np.array(sorted(g), dtype="<i4").tobytes())
                else:
                    b.delete("acl", key)
            self._commit(b, what, {"tenant": t}, {"slots": change}, len(change))
            return len(change)

    def grant(self, ids, tenant: str, owner: str | None = None) -> int:
        """Let ``tenant`` see ``ids`` (no copy of the vectors). With ``owner`` (the acting tenant,
        as the server passes it), every id must be owned by it. Returns how many changed."""
        return self._change_access(ids, tenant, owner, True)

    def revoke(self, ids, tenant: str, owner: str | None = None) -> int:
        """Stop ``tenant`` seeing ``ids`` (the owner itself cannot be revoked)."""
        return self._change_access(ids, tenant, owner, False)

    # -- reads ----------------------------------------------------------------------------
    def _search_params(self, params) -> SearchParams | None:
        if params is None:
            return None
        if isinstance(params, dict):
            return self._index.params_class.from_dict(params)
        if isinstance(params, SearchParams):
            return params
        raise InvalidArgument(f"params must be a dict of search knobs, got {type(params).__name__}")

    def search(self, queries, k: int = 10, tenant: str | None = None, params=None
               ) -> SearchResult:
        """k nearest vectors per query among those ``tenant`` may see.

        ``queries``: [nq, dim] (or one vector). ``params``: the index's search knobs as a dict.
        Returns ``ids`` int64 [nq, k] padded with -1 and ``distances`` float32 padded with +inf
        (squared L2, or negated inner product for ip/cosine: smaller is closer).
        """
        k = check_k(k)
        Q = np.asarray(queries) if not isinstance(queries, np.ndarray) else queries
        if Q.ndim == 1:
            Q = Q.reshape(1, -1)
        Q = prepare(Q, self.dim, self.metric, "queries")
        p = self._search_params(params)
        with self._rw.read():
            self._check_open()
            t = self._tid(tenant)
            slots, dist = self._index.search(Q, k, tenant=t, params=p)
            slots = np.asarray(slots, dtype=np.int64)
            dist = np.asarray(dist, dtype=np.float32)
            valid = slots >= 0
            # defence in depth: whatever an index returns, never hand out a foreign vector
            flat = slots[valid]
            ok = self._state.visible(flat, t) if len(flat) else flat.astype(bool)
            if not ok.all():
                bad = np.zeros_like(valid)
                bad[valid] = ~ok
                slots[bad] = -1
                dist[bad] = np.inf
                order = np.argsort(dist, axis=1, kind="stable")
                slots = np.take_along_axis(slots, order, axis=1)
                dist = np.take_along_axis(dist, order, axis=1)
                valid = slots >= 0
            ids = np.full(slots.shape, -1, dtype=np.int64)
            ids[valid] = self._state.slot_id[slots[valid]]
        dist = np.where(valid, dist, np.float32(np.inf)).astype(np.float32)
        return SearchResult(ids=ids, distances=dist)

    def ids(self, tenant: str, start: int = 0, limit: int | None = None) -> np.ndarray:
        """Sorted uint64 ids ``tenant`` may see (owned or granted), those >= ``start``, at most
        ``limit`` of them: enumeration/pagination (the server's Scroll)."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidArgument(f"limit must be a non-negative integer, got {limit!r}")
        if not isinstance(start, int | np.integer) or start < 0:
            raise InvalidArgument(f"start must be a non-negative integer, got {start!r}")
        with self._rw.read():
            self._check_open()
            t = self._tid(tenant)
            st = self._state
            owned = st.owned_by(t)
            granted = np.fromiter(st.granted.get(t, ()), dtype=np.int64)
            out = st.slot_id[np.concatenate([owned, granted])].astype(np.uint64)
        out.sort()
        out = out[np.searchsorted(out, np.uint64(start)):]
        return out if limit is None else out[:limit]

    def get(self, ids, tenant: str) -> GetResult:
        """Vectors and payloads of those ``ids`` the tenant may see (others silently omitted, as
        if they did not exist), in request order. Cosine vectors come back normalised."""
        ids = check_ids(ids, self._opts.max_batch)
        with self._rw.read():
            self._check_open()
            t = self._tid(tenant)
            slots = self._state.lookup(ids)
            vis = self._state.visible(slots, t)
            ids, slots = ids[vis], slots[vis]
            keys = codec.be_keys(slots)
            vals = self._store.multi_get("vectors", keys)
            pays = self._store.multi_get("payload", keys)
        if any(v is None for v in vals):
            raise FailedPrecondition(f"collection {self.name!r}: vectors missing from the store")
        rec = codec.unpack_vectors(vals, self.dim) if vals else None
        X = rec["vec"].copy() if rec is not None else np.zeros((0, self.dim), dtype=np.float32)
        return GetResult(ids=ids.astype(np.uint64), vectors=X,
                         payloads=[json.loads(p) if p is not None else None for p in pays])

    # -- checkpoints and recovery ---------------------------------------------------------
    def _ckpt_dir(self, seq: int) -> str:
        return os.path.join(self.path, f"ckpt-{seq:020d}")

    def checkpoint(self) -> int:
        """Save the index and the maps now, record them, truncate the oplog behind them.

        Writers wait while it saves (readers do not). Returns the sequence it includes."""
        with self._wmutex:
            self._check_open()
            return self._checkpoint_locked()

    def _checkpoint_locked(self) -> int:
        seq = self._seq
        cur = self._store.get("meta", _CHECKPOINT)
        if cur is not None and json.loads(cur)["seq"] == seq:
            self._dirty_rows = 0
            return seq
        final = self._ckpt_dir(seq)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._index.save(os.path.join(tmp, "index.npz"))
        arrays = self._state.to_arrays(copy=False)  # written in place: writers are held off
        with open(os.path.join(tmp, "state.npz"), "wb") as f:
            write_npz(f, arrays)  # from the arrays' own memory: no 16 MiB bytes copy per block
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.path)
        b = WriteBatch()
        b.put("meta", _CHECKPOINT, json.dumps({"seq": seq, "dir": os.path.basename(final),
                                               "time": time.time()}).encode())
        b.delete_range("oplog", codec.be_key(0), codec.be_key(seq + 1))
        self._store.write(b)
        self._store.sync_wal()
        for d in os.listdir(self.path):
            if d.startswith("ckpt-") and d != os.path.basename(final):
                shutil.rmtree(os.path.join(self.path, d), ignore_errors=True)
        self._dirty_rows = 0
        return seq

    def _maybe_checkpoint(self) -> bool:
        """Background checkpointer's check: enough rows changed or the oldest change is old."""
        if self._closed or self._broken or not self._dirty_rows:
            return False
        age = time.monotonic() - self._dirty_since
        o = self._opts
        if self._dirty_rows < o.checkpoint_every_ops and age < o.checkpoint_every_s:
            return False
        if not self._wmutex.acquire(timeout=0.1):
            return False
        try:
            if self._closed or self._broken:
                return False
            self._checkpoint_locked()
            return True
        finally:
            self._wmutex.release()

    def _load_index(self, path: str) -> Index:
        cls = index_class(self.index_kind)
        if getattr(cls, "needs_store", False):
            return cls.load(path, store=self._store)
        return cls.load(path)

    def _recover(self) -> None:
        t0 = time.perf_counter()
        self._seq = 0
        self._state = CollectionState()
        self._index = None
        self._absent: set[int] = set()  # replay only: live slots not (yet) in the index
        source = "empty"
        raw = self._store.get("meta", _CHECKPOINT)
        if raw is not None:
            ck = json.loads(raw)
            d = os.path.join(self.path, ck["dir"])
            try:
                self._index = self._load_index(os.path.join(d, "index.npz"))
                with np.load(os.path.join(d, "state.npz"), allow_pickle=False) as z:
                    self._state = CollectionState.from_arrays({k: z[k] for k in z.files})
                self._seq = int(ck["seq"])
                source = "checkpoint"
            except (OSError, ValueError, KeyError) as e:
                # unusable checkpoint: fall back to the column families (the source of truth)
                warnings.warn(f"collection {self.name!r}: checkpoint {ck['dir']} unusable "
                              f"({e!r}); rebuilding from the store", RuntimeWarning, stacklevel=2)
                self._index = None
        if self._index is None and raw is not None:
            self._rebuild_from_store()
            source = "store"
        elif self._index is None:
            self._index = self._new_index()
        t1 = time.perf_counter()
        replayed = 0
        for k, v in self._store.iterate("oplog", start=codec.be_key(self._seq + 1)):
            op, meta, arrays = codec.decode_record(v)
            self._apply(op, meta, arrays)
            self._seq = codec.key_int(k)
            replayed += 1
            self._dirty_rows += 1
        if self._absent:  # cannot happen if the store is intact; never serve a wrong index
            warnings.warn(f"collection {self.name!r}: oplog replay left {len(self._absent)} "
                          f"slots without vectors; rebuilding from the store", RuntimeWarning,
                          stacklevel=2)
            self._absent.clear()
            self._rebuild_from_store()
            source = "store"
        if replayed:
            self._dirty_since = time.monotonic()
        for d in os.listdir(self.path):  # leftovers of a checkpoint interrupted by a crash
            if d.startswith("ckpt-") and d.endswith(".tmp"):
                shutil.rmtree(os.path.join(self.path, d), ignore_errors=True)
        self.recovery = {"source": source, "replayed": replayed, "seq": self._seq,
                         "load_s": t1 - t0, "replay_s": time.perf_counter() - t1}

    def _rebuild_from_store(self) -> None:
        """Rebuild maps and index from the column families (the source of truth)."""
        self._scan_store()
        last = None
        for k, _ in self._store.iterate("oplog"):
            last = k
        raw = self._store.get("meta", _CHECKPOINT)
        # everything in the column families is applied: replay nothing older than the last record
        self._seq = codec.key_int(last) if last is not None else json.loads(raw)["seq"]

    def _scan_store(self, adopt: Callable[[RocksKVStore, CollectionState], Index] | None = None,
                    maps: list[tuple[str, int, int, int]] | None = None) -> None:
        """Maps from the ``vectors``/``acl`` families, streamed in chunks into arrays sized once
        (``CollectionState.from_rows``); the index either rebuilt by adding every vector, or
        (``adopt``) made by the caller from the store and the maps (an index whose data is
        already in the store, e.g. imported SPANN postings). ``maps``: an import's map files
        (``import_sst``, as ``_read_map_headers`` lists them), read instead of every vector
        value and checked against the store."""
        self._index = self._new_index() if adopt is None else None
        grants: dict[int, list[int]] = {}
        for k, v in self._store.iterate("acl"):
            grants[codec.key_int(k)] = np.frombuffer(v, dtype="<i4").tolist()
        if maps is not None and adopt is not None:
            files = maps
            high = files[-1][2] + 1 if files else 0
            st = CollectionState.from_rows(high, _map_rows(files), grants,
                                           expected=sum(f[3] for f in files))
            self._check_maps(files, st)
        else:
            st = CollectionState.from_rows(self._max_key("vectors") + 1,
                                           self._vector_rows(grants), grants)
        self._state = st
        if adopt is not None:
            self._index = adopt(self._store, st)

    def _vector_rows(self, grants: dict[int, list[int]], chunk: int = 16384
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(slots, ids, owners) of the ``vectors`` family, ``chunk`` rows at a time; with an
        index being rebuilt (``self._index``), each chunk's vectors are added to it."""
        keys: list[bytes] = []
        vals: list[bytes] = []

        def decode() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            slots = codec.key_ints(keys)
            rec = codec.unpack_vectors(vals, self.dim)
            keys.clear()
            vals.clear()
            if self._index is not None:
                self._index.add(np.ascontiguousarray(rec["vec"]), slots,
                                acl_csr(slots, rec["owner"], grants))
            return slots, rec["id"], rec["owner"]

        for k, v in self._store.iterate("vectors"):
            keys.append(k)
            vals.append(v)
            if len(keys) >= chunk:
                yield decode()
        if keys:
            yield decode()

    def _first_key(self, cf: str, start: int) -> int | None:
        """The first 8-byte key of ``cf`` at or after ``start`` (an int), or None."""
        for k, _ in self._store.iterate(cf, start=codec.be_key(start)):
            return codec.key_int(k)
        return None

    def _max_key(self, cf: str) -> int:
        """The largest 8-byte big-endian key of ``cf`` (-1 if it is empty): a binary search of
        forward seeks (at most ~64; the store API has no seek to the last key)."""
        lo = self._first_key(cf, 0)
        if lo is None:
            return -1
        hi = 1 << 64  # invariant: lo is a key, no key is >= hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            f = self._first_key(cf, mid)
            if f is None:
                hi = mid
            else:
                lo = f
        return lo

    def _check_maps(self, files: list[tuple[str, int, int, int]], st: CollectionState,
                    sample: int = 4096) -> None:
        """An import's map files against the ``vectors`` family: no key outside the files'
        slots (a seek at every gap between and within files, and past the last slot), every
        file's first and last slot present, and ``sample`` random slots holding the same id
        and owner. FailedPrecondition otherwise (the import is then abandoned)."""
        def bad(why: str) -> FailedPrecondition:
            return FailedPrecondition(f"import: the map files do not match the vectors family "
                                      f"({why})")

        prev = -1
        for path, first, last, _ in files:
            if self._first_key("vectors", prev + 1) != first:
                raise bad(f"keys between slots {prev} and {first} ({path})")
            a = np.load(path, mmap_mode="r")["slot"]
            for g in np.flatnonzero(np.diff(a) > 1).tolist():  # holes (bad rows) in a file
                if self._first_key("vectors", int(a[g]) + 1) != int(a[g + 1]):
                    raise bad(f"keys between slots {int(a[g])} and {int(a[g + 1])} ({path})")
            del a
            if self._first_key("vectors", last) != last:
                raise bad(f"slot {last} missing ({path})")
            prev = last
        if self._first_key("vectors", prev + 1) is not None:
            raise bad(f"keys after slot {prev}")
        if not len(st):
            return
        live = np.flatnonzero(st.slot_owner[: st.high] >= 0) if st.high <= sample else None
        rng = np.random.default_rng(len(st))
        pick = live if live is not None else np.unique(rng.integers(0, st.high, sample))
        pick = pick[st.slot_owner[pick] >= 0]
        vals = self._store.multi_get("vectors", codec.be_keys(pick))
        if any(v is None for v in vals):
            raise bad("a slot of the files is missing")
        rec = codec.unpack_vectors(vals, self.dim) if vals else None
        if rec is not None and not (np.array_equal(rec["id"].astype(np.int64),
                                                   st.slot_id[pick])
                                    and np.array_equal(rec["owner"], st.slot_owner[pick])):
            raise bad("ids or owners differ")

    @classmethod
    def import_sst(cls, path: str, name: str, dim: int, metric: str, index: str,
                   params: dict[str, Any] | None, options: Options, tenants: Sequence[str],
                   sst: dict[str, Sequence[str]],
                   adopt: Callable[[RocksKVStore, CollectionState], Index] | None = None,
                   maps: Sequence[str] | None = None) -> int:
        """Assemble a new collection at ``path`` (must not exist) from externally built SST files.

        ``sst``: column family -> sorted SST files (``rocksdict.SstFileWriter``, raw keys in the
        engine's layout: big-endian slot keys, ``codec.pack_vectors`` values, ...), only the data
        families (``IMPORT_FAMILIES``). ``tenants``: names, given dense ids 0, 1, ... in this order
        (the owner/ACL ids the files use). The files are moved in (hard links where possible). The
        maps are rebuilt from the ``vectors``/``acl`` families; the index is rebuilt by adding the
        vectors, or made by ``adopt(store, state)`` (an index whose data the files already hold).
        ``maps`` (with ``adopt``): ``.npy`` files of the builder, structured arrays (``slot``
        int64, ``id`` uint64, ``owner`` int32) of every row of the ``vectors`` files, sorted by
        slot within a file: the maps are built from them instead of decoding every vector value
        (~2.5 us per vector in Python), and checked against the store (``_check_maps``).
        A checkpoint is written, and the collection is reopened from it and counted. Not atomic
        by itself: callers assemble in a temporary folder and rename (``Database.import_sst``).
        Returns the number of vectors."""
        bad = sorted(set(sst) - set(IMPORT_FAMILIES))
        if bad:
            raise InvalidArgument(f"import_sst: cannot ingest into {bad}; data families are "
                                  f"{list(IMPORT_FAMILIES)}")
        names = [check_tenant_name(t) for t in tenants]
        if len(set(names)) != len(names):
            raise InvalidArgument("import_sst: duplicate tenant names")
        files = _read_map_headers(maps) if maps is not None and adopt is not None else None
        if adopt is not None:
            # an adopted import reads each block about once (ingest checks, map checks, the
            # adopter's heads/versions/sample): a serving-sized cache would only fill up with
            # them. Not without ``adopt``: the index is rebuilt by adding every vector, and
            # SPANN's maintenance then re-reads posting blocks (the configured cache helps)
            options = dataclasses.replace(
                options, block_cache_bytes=min(options.block_cache_bytes, IMPORT_CACHE_BYTES))
        cls.create(path, name, dim, metric, index, params, options)
        store = RocksKVStore(os.path.join(path, "store"), create=False,
                             block_cache_bytes=options.block_cache_bytes)
        try:
            b = WriteBatch()
            for tid, t in enumerate(names):
                b.put("meta", _TENANT + t.encode(), str(tid).encode())
            b.put("meta", _TENANT_NEXT, str(len(names)).encode())
            store.write(b)
            for fam in IMPORT_FAMILIES:
                if sst.get(fam):
                    store.ingest_sst(fam, list(sst[fam]), move=True)
            store.flush()
        finally:
            store.close()
        del store  # and its block cache with it (a closed store still holds the cached blocks)
        col = None
        try:
            col = cls(path, options, name, _import=True, _adopt=adopt, _maps=files)
            try:
                with col._wmutex:
                    col._dirty_rows = max(1, len(col._state))
                    col._checkpoint_locked()
            finally:
                col.close(checkpoint=False)
            col = None
            release_freed()  # the first copy's memory back to the system before the second loads
            col = cls(path, options, name)  # the checkpoint must load
            try:
                if col.recovery["source"] != "checkpoint":
                    raise FailedPrecondition(
                        f"import_sst: {path} did not reopen from its checkpoint")
                return len(col)
            finally:
                col.close(checkpoint=False)
        finally:
            col = None  # dropped before the trim, also when the import failed
            release_freed()

    def close(self, checkpoint: bool | None = None) -> None:
        """Checkpoint if dirty (unless ``checkpoint=False``), then close the store."""
        if self._closed:
            return
        with self._wmutex:
            if self._closed:
                return
            do = self._opts.checkpoint_on_close if checkpoint is None else checkpoint
            try:
                if do and self._dirty_rows and not self._broken:
                    self._checkpoint_locked()
            finally:
                with self._rw.write():
                    self._closed = True
                    try:
                        self._close_index()
                    finally:
                        self._store.close()

    def _close_index(self) -> None:
        """Stop an index's background work (SPANN's maintenance thread) before the store goes."""
        close = getattr(getattr(self, "_index", None), "close", None)
        if callable(close):
            close()

    @property
    def closed(self) -> bool:
        return self._closed

    def disk_bytes(self) -> int:
        """Bytes on disk: the store plus the current checkpoint."""
        return folder_bytes(self.path)

    def flush(self) -> None:
        """Flush RocksDB memtables to SST files (for measuring on-disk size)."""
        with self._wmutex:
            self._check_open()
            self._store.flush()


# the block cache of an adopted import's stores (at most; ``Options.block_cache_bytes`` if smaller)
IMPORT_CACHE_BYTES = 8 << 20


def release_freed() -> None:
    """Hand the memory malloc keeps after frees back to the system (glibc ``malloc_trim``;
    a no-op elsewhere). After an import's large structures are freed, glibc otherwise keeps
    them (measured: ~140 MB at 3M vectors) in the process for good."""
    global _trim
    if _trim is None:
        _trim = False  # looked up once; stays False where there is no malloc_trim
        try:
            import ctypes

            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            _trim = trim
        except Exception:  # no ctypes, no libc handle, no such symbol: nothing to hand back
            pass
    if _trim:
        _trim(0)


_trim: Any = None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# the rows of an import map file (``import_sst(maps=)``; written by the bulk builds' map tasks)
MAP_DTYPE = np.dtype([("slot", "<i8"), ("id", "<u8"), ("owner", "<i4")])
_MAP_FIELDS = MAP_DTYPE.names


def _read_map_headers(paths: Sequence[str]) -> list[tuple[str, int, int, int]]:
    """(path, first slot, last slot, rows) of each non-empty map file, by first slot; checks
    their fields, that each is sorted and that their slot ranges do not overlap."""
    files = []
    for p in paths:
        try:
            a = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"import map file {p}: {e}") from None
        if a.dtype.names is None or not set(_MAP_FIELDS) <= set(a.dtype.names) or a.ndim != 1:
            raise InvalidArgument(f"import map file {p}: needs fields {_MAP_FIELDS}, got "
                                  f"{a.dtype}")
        if len(a):
            sl = a["slot"]
            if int(sl[0]) < 0 or not (np.diff(sl) > 0).all():
                raise InvalidArgument(f"import map file {p}: slots not sorted or negative")
            files.append((os.fspath(p), int(sl[0]), int(sl[-1]), len(a)))
        del a
    files.sort(key=lambda f: f[1])
    for x, y in zip(files, files[1:], strict=False):
        if y[1] <= x[2]:
            raise InvalidArgument(f"import map files {x[0]} and {y[0]} overlap")
    return files


def _map_rows(files: list[tuple[str, int, int, int]]
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(slots, ids, owners) of the map files, one file at a time."""
    for p, *_ in files:
        a = np.load(p)
        yield a["slot"], a["id"], a["owner"]
