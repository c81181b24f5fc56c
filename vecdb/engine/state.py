"""The engine's in-memory maps of one collection: external ids <-> dense slots, owners, grants.

Indexes work on dense integer slots; the engine owns the mapping to the caller's uint64 ids. A
vector's access list is its *owner* (always on it, the tenant that upserted it) plus an optional
set of *granted* tenants (``grant``/``revoke``; sparse in practice), kept in both directions so a
visibility check, a tenant's count and dropping a tenant are cheap.

The state changes only through ``apply_*``, which the live write path and oplog replay share (one
code path, so recovery cannot drift from normal operation). It is saved with every checkpoint and
can also be rebuilt from the ``vectors``/``acl`` column families.

Memory is flat per vector: the id -> slot map is a native hash table (``vecdb._idmap.IdMap``,
~27-34 B per id instead of a Python dict's ~100-150 B), ``slot_id``/``slot_owner`` are numpy
arrays (12 B per slot) and free slots are a numpy stack. Batch lookups, inserts and deletes run in
C without the GIL.

Locking is the collection's (``vecdb/engine/collection.py``): every ``apply_*`` runs under the
writer mutex *and* the RW lock's write side; writers' lookups and ``allocate`` run under the
writer mutex; readers (search, get, ids) take the read side. So no lookup overlaps a mutation and
no two mutations overlap. ``IdMap`` is memory-safe even without that (see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from vecdb._idmap import IdMap
from vecdb.errors import InvalidArgument

CHUNK = 1 << 18  # slots per step of the bulk loaders: their temporaries stay a few MB at any N
# (at 1 << 20 the id-map fill of a reopen held ~25 MB of int64 index temporaries per step)


def acl_csr(slots: np.ndarray, owners: np.ndarray, grants: Mapping[int, Iterable[int]]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Access lists (owner + sorted grants) of ``slots`` as CSR for ``Index.add``: from a built
    state (``CollectionState.acl_csr``) or from rows read back from the store (the import)."""
    n = len(slots)
    owners = np.asarray(owners).astype(np.int32)
    if not grants or not any(s in grants for s in slots.tolist()):
        return np.arange(n + 1, dtype=np.int64), owners
    lists = [[int(o), *sorted(set(grants.get(s, ())))]
             for s, o in zip(slots.tolist(), owners.tolist(), strict=True)]
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    return indptr, np.array([t for x in lists for t in x], dtype=np.int32)


class CollectionState:
    """ids <-> slots, slot owners, grants, free slots."""

    def __init__(self) -> None:
        self.slot_id = np.full(1024, -1, dtype=np.int64)  # the id (uint64 bits) of each slot
        self.slot_owner = np.full(1024, -1, dtype=np.int32)  # -1: the slot is free
        self.high = 0  # 1 + the largest slot ever used
        self.id_slot = IdMap()  # id -> slot of every live vector
        # Stack of free-slot candidates (top = _free[_nfree - 1]). Every free slot below high is
        # in it; it may also hold stale entries (slots taken since) and repeats, which
        # ``_take_free`` drops as it meets them and ``_compact_free`` bounds.
        self._free = np.empty(1024, dtype=np.int64)
        self._nfree = 0
        self.grants: dict[int, set[int]] = {}  # slot -> tenants granted besides the owner
        self.granted: dict[int, set[int]] = {}  # tenant -> slots granted to it
        self.owned: dict[int, int] = {}  # tenant -> number of vectors it owns

    # -- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.id_slot)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (int64; -1 where the id does not exist)."""
        return self.id_slot.lookup(ids)

    def free_slots(self) -> np.ndarray:
        """Free slots below ``high``, ascending (exact; for tests and introspection). Found in
        chunks: no whole-``high`` mask, only the free slots themselves."""
        parts = [np.flatnonzero(self.slot_owner[a : min(self.high, a + CHUNK)] < 0) + a
                 for a in range(0, self.high, CHUNK)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def memory_bytes(self) -> int:
        """Bytes held by the id map, the slot arrays and the free stack (grants not counted)."""
        return (self.id_slot.memory_bytes() + self.slot_id.nbytes + self.slot_owner.nbytes
                + self._free.nbytes)

    def visible(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Boolean mask: which (existing, >= 0) ``slots`` ``tenant`` may see."""
        ok = slots >= 0
        out = np.zeros(len(slots), dtype=bool)
        out[ok] = self.slot_owner[slots[ok]] == tenant
        mine = self.granted.get(tenant)
        if mine:
            for i in np.flatnonzero(ok & ~out).tolist():
                out[i] = int(slots[i]) in mine
        return out

    def allocate(self, n: int) -> np.ndarray:
        """``n`` slots for new vectors (freed slots first), without reserving them."""
        reuse = self._take_free(min(n, self.high - len(self.id_slot)))
        fresh = np.arange(self.high, self.high + n - len(reuse), dtype=np.int64)
        return np.concatenate([reuse, fresh])

    def _take_free(self, k: int) -> np.ndarray:
        """Up to ``k`` distinct free slots from the top of the free stack (most recently freed
        first). Looks at a window of the top, doubling it until it holds ``k`` valid candidates,
        and drops the stale and repeated entries it saw (they are never free again as such: a
        slot freed later is pushed again), so the stack stays a superset of the free slots."""
        if k <= 0 or not self._nfree:
            return np.zeros(0, dtype=np.int64)
        nf = self._nfree
        w = min(nf, max(2 * k, 64))
        while True:
            cand = self._free[nf - w : nf][::-1]
            cand = cand[self.slot_owner[cand] < 0]
            _, first = np.unique(cand, return_index=True)
            cand = cand[np.sort(first)]
            if len(cand) >= k or w == nf:
                break
            w = min(nf, 2 * w)
        self._free[nf - w : nf - w + len(cand)] = cand[::-1]
        self._nfree = nf - w + len(cand)
        return cand[:k].copy()

    def _push_free(self, slots: np.ndarray) -> None:
        n = len(slots)
        if not n:
            return
        if self._nfree + n > len(self._free):
            buf = np.empty(max(2 * len(self._free), self._nfree + n), dtype=np.int64)
            buf[: self._nfree] = self._free[: self._nfree]
            self._free = buf
        self._free[self._nfree : self._nfree + n] = slots
        self._nfree += n
        # bound stale entries: rebuild (O(high)) only after ~high/8 of them, so amortised O(1)
        if self._nfree > 2 * (self.high - len(self.id_slot)) + self.high // 8 + 4096:
            self._compact_free()

    def _compact_free(self) -> None:
        """Rebuild the stack as exactly the free slots, lowest on top (reused first)."""
        free = self.free_slots()[::-1]
        self._free = np.empty(max(len(free), 1024), dtype=np.int64)
        self._free[: len(free)] = free
        self._nfree = len(free)

    def acl_csr(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Access lists (owner + grants) of ``slots`` as CSR for ``Index.add``."""
        return acl_csr(slots, self.slot_owner[slots], self.grants)

    def owned_by(self, tenant: int) -> np.ndarray:
        return np.flatnonzero(self.slot_owner[: self.high] == tenant).astype(np.int64)

    # -- mutations (shared by the write path and replay) ----------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self.slot_id)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        sid = np.full(cap, -1, dtype=np.int64)
        sid[: self.high] = self.slot_id[: self.high]
        own = np.full(cap, -1, dtype=np.int32)
        own[: self.high] = self.slot_owner[: self.high]
        self.slot_id, self.slot_owner = sid, own

    def apply_upsert(self, slots: np.ndarray, ids: np.ndarray, owner: int) -> None:
        if not len(slots):
            return
        slots = np.asarray(slots, dtype=np.int64)
        top = int(slots.max()) + 1
        self._grow(top)
        new = self.slot_owner[slots] < 0
        self.slot_id[slots] = ids.astype(np.int64)  # uint64 ids keep their bits
        self.slot_owner[slots] = owner
        self.id_slot.insert(ids[new], slots[new])
        if top > self.high:  # slots skipped over between the old and the new high are free
            gap = np.ones(top - self.high, dtype=bool)
            gap[slots[slots >= self.high] - self.high] = False
            holes = np.flatnonzero(gap) + self.high
            self.high = top
            self._push_free(holes[::-1])
        self.owned[owner] = self.owned.get(owner, 0) + int(new.sum())

    def apply_delete(self, slots: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        live = np.unique(slots[self.slot_owner[slots] >= 0])
        if not len(live):
            return
        self.id_slot.delete(self.slot_id[live])
        owners, counts = np.unique(self.slot_owner[live], return_counts=True)
        for o, c in zip(owners.tolist(), counts.tolist(), strict=True):
            self.owned[o] -= c
        if self.grants:
            for s in live.tolist():
                for t in self.grants.pop(s, ()):
                    self.granted[t].discard(s)
        self.slot_id[live] = -1
        self.slot_owner[live] = -1
        self._push_free(live[::-1])

    def apply_grant(self, slots: np.ndarray, tenant: int) -> None:
        mine = self.granted.setdefault(tenant, set())
        for s in slots.tolist():
            self.grants.setdefault(s, set()).add(tenant)
            mine.add(s)

    def apply_revoke(self, slots: np.ndarray, tenant: int) -> None:
        mine = self.granted.get(tenant, set())
        for s in slots.tolist():
            g = self.grants.get(s)
            if g is not None:
                g.discard(tenant)
                if not g:
                    del self.grants[s]
            mine.discard(s)

    def forget_tenant(self, tenant: int) -> None:
        self.granted.pop(tenant, None)
        self.owned.pop(tenant, None)

    # -- persistence ----------------------------------------------------------------------
    def to_arrays(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Checkpoint arrays. ``copy=True``: copies (``from_arrays`` takes its arrays over);
        ``copy=False``: the slot arrays are views of the live state (no 12 B per slot copy), for
        a caller that writes them out while no mutation can run (the collection's writer
        mutex)."""
        gs = np.array(sorted(self.grants), dtype=np.int64)
        lists = [sorted(self.grants[s]) for s in gs.tolist()]
        indptr = np.zeros(len(gs) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        sid, own = self.slot_id[: self.high], self.slot_owner[: self.high]
        return {
            "slot_id": sid.copy() if copy else sid,
            "slot_owner": own.copy() if copy else own,
            "grant_slots": gs,
            "grant_indptr": indptr,
            "grant_tenants": np.array([t for x in lists for t in x], dtype=np.int32),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> CollectionState:
        """Inverse of ``to_arrays``. The slot arrays are taken over, not copied (the caller must
        not use them afterwards; a copy only if their dtype differs or they are read-only), sized
        to ``high`` (the next growth doubles them): a reopen holds 12 B per slot once, not a
        copy plus a power-of-two-sized one. The id map is sized once and filled in chunks."""
        st = cls()
        sid = np.asarray(a["slot_id"]).astype(np.int64, copy=False)
        own = np.asarray(a["slot_owner"]).astype(np.int32, copy=False)
        if len(sid) >= len(st.slot_id):
            st.slot_id, st.slot_owner = (x if x.flags.writeable and x.flags.c_contiguous
                                         else x.copy() for x in (sid, own))
        else:  # keep the initial capacity
            st.slot_id[: len(sid)] = sid
            st.slot_owner[: len(sid)] = own
        st.high = len(sid)
        ind, ten = a["grant_indptr"], a["grant_tenants"]
        st._index_slots({s: ten[ind[i] : ind[i + 1]].tolist()
                         for i, s in enumerate(a["grant_slots"].tolist())})
        return st

    @classmethod
    def from_rows(cls, high: int, rows: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  grants: Mapping[int, Iterable[int]] | None = None,
                  expected: int | None = None) -> CollectionState:
        """The state of a store whose live vectors are streamed as ``(slots, ids, owners)``
        chunks (an import or a rebuild from the ``vectors`` family), each slot below ``high``.
        The slot arrays are allocated once at ``high`` and the id map once for ``expected`` ids
        (default ``high``): no growth copies, only the chunk in hand is temporary. ``grants``:
        slot -> tenants granted besides the owner. A slot given twice, a slot out of range or
        an id on two slots -> ``InvalidArgument`` (the store is not a valid collection)."""
        high = int(high)
        st = cls()
        if high > len(st.slot_id):
            st.slot_id = np.full(high, -1, dtype=np.int64)
            st.slot_owner = np.full(high, -1, dtype=np.int32)
        st.high = high
        st.id_slot = IdMap(high if expected is None else max(0, int(expected)))
        for slots, ids, owners in rows:
            slots = np.asarray(slots, dtype=np.int64)
            if not len(slots):
                continue
            if int(slots.min()) < 0 or int(slots.max()) >= high:
                raise InvalidArgument(f"slots out of range [0, {high}): "
                                      f"{int(slots.min())}..{int(slots.max())}")
            if (st.slot_owner[slots] >= 0).any() or not (
                    (slots[1:] > slots[:-1]).all() or len(np.unique(slots)) == len(slots)):
                raise InvalidArgument("a slot appears twice")
            owners = np.asarray(owners, dtype=np.int32)
            if int(owners.min()) < 0:
                raise InvalidArgument(f"negative owner {int(owners.min())}")
            ids = np.asarray(ids, dtype=np.uint64)
            if st.id_slot.insert(ids, slots) != len(ids):
                dup = ids[st.id_slot.lookup(ids) != slots]
                raise InvalidArgument(f"ids on two slots each: {dup[:5].tolist()}")
            st.slot_id[slots] = ids.astype(np.int64)
            st.slot_owner[slots] = owners
        st._index_slots({s: ts for s, ts in (grants or {}).items()
                         if 0 <= s < high and st.slot_owner[s] >= 0}, idmap=False)
        return st

    def _index_slots(self, grants: Mapping[int, Iterable[int]], idmap: bool = True) -> None:
        """After the slot arrays are set (``high`` too): the id map (``idmap``: sized once,
        filled chunk by chunk), owner counts, the free stack and the grants."""
        own, high = self.slot_owner, self.high
        if idmap:
            n = sum(int(np.count_nonzero(own[a : min(high, a + CHUNK)] >= 0))
                    for a in range(0, high, CHUNK))
            self.id_slot = IdMap(n)
        counts = np.zeros(0, dtype=np.int64)
        for a in range(0, high, CHUNK):
            o = own[a : min(high, a + CHUNK)]
            live = np.flatnonzero(o >= 0)
            if idmap and len(live):
                self.id_slot.insert(self.slot_id[a + live], a + live)
            c = np.bincount(o[live]) if len(live) else counts[:0]
            if len(c) > len(counts):
                c[: len(counts)] += counts
                counts = c
            else:
                counts[: len(c)] += c
        self.owned = {t: c for t, c in enumerate(counts.tolist()) if c}
        self._compact_free()
        for s, ts in grants.items():
            for t in ts:
                self.grants.setdefault(int(s), set()).add(int(t))
                self.granted.setdefault(int(t), set()).add(int(s))
