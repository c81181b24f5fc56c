"""Access lists shared by the indexes: which tenants may see which slots.

Like faiss's ``IDSelectorBitmap``, each tenant has a packed little-endian bitmap over slots (bit s
of byte s>>3), which native search loops test per visited node without the GIL; each slot keeps
the tenants on its list so ``remove`` clears exactly the right bits. Tenants are dense ints; names
live in the engine.
"""

from __future__ import annotations

import numpy as np

from vecdb.errors import InvalidArgument


def normalize_acl(acl, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Access lists for ``n`` vectors as CSR ``(indptr int64 [n+1], indices int32)``.

    Accepts ``None`` (no tenants), a CSR pair of numpy arrays ``(indptr, indices)``, or a sequence
    of ``n`` tenant-id iterables (a bare int is a one-tenant list).
    """
    if acl is None:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    if (
        isinstance(acl, tuple)
        and len(acl) == 2
        and all(isinstance(a, np.ndarray) for a in acl)
        and acl[0].ndim == 1
        and len(acl[0]) == n + 1
        and np.issubdtype(acl[0].dtype, np.integer)
    ):
        indptr = np.ascontiguousarray(acl[0], dtype=np.int64)
        indices = np.ascontiguousarray(acl[1], dtype=np.int32)
        if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
            raise InvalidArgument(
                "acl: malformed CSR (indptr must start at 0, be monotone, end at len(indices))"
            )
    else:
        if len(acl) != n:
            raise InvalidArgument(f"acl: expected {n} access lists, got {len(acl)}")
        lists = [
            np.unique(np.asarray(a, dtype=np.int64).ravel()) for a in acl
        ]  # ravel: int -> [int]
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(a) for a in lists])
        indices = (np.concatenate(lists) if lists else np.zeros(0)).astype(np.int64)
        if indices.size and indices.min() < 0:
            raise InvalidArgument("acl: tenant ids must be non-negative")
        indices = indices.astype(np.int32)
    if indices.size and indices.min() < 0:
        raise InvalidArgument("acl: tenant ids must be non-negative")
    return indptr, indices


class AccessLists:
    """Per-tenant slot bitmaps + per-slot tenant lists, growable, serialisable."""

    def __init__(self, capacity: int = 1024):
        self._cap_bytes = max(8, (capacity + 7) // 8)
        self._bitmaps: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}
        self._slot_tenants: dict[int, np.ndarray] = {}

    # -- capacity -------------------------------------------------------------------------
    def _ensure(self, max_slot: int) -> None:
        need = max_slot // 8 + 1
        if need <= self._cap_bytes:
            return
        cap = self._cap_bytes
        while cap < need:
            cap *= 2
        for t, bm in self._bitmaps.items():
            nb = np.zeros(cap, dtype=np.uint8)
            nb[: len(bm)] = bm
            self._bitmaps[t] = nb
        self._cap_bytes = cap

    def _bm(self, tenant: int) -> np.ndarray:
        bm = self._bitmaps.get(tenant)
        if bm is None:
            bm = self._bitmaps[tenant] = np.zeros(self._cap_bytes, dtype=np.uint8)
            self._counts[tenant] = 0
        return bm

    # -- mutation -------------------------------------------------------------------------
    def set(self, slot: int, tenants) -> None:
        """Replace the access list of ``slot``."""
        self.clear(slot)
        ts = np.unique(np.asarray(tenants, dtype=np.int64).ravel()).astype(np.int32)
        if not len(ts):
            return
        self._ensure(slot)
        for t in ts.tolist():
            self._bm(t)[slot >> 3] |= np.uint8(1 << (slot & 7))
            self._counts[t] += 1
        self._slot_tenants[slot] = ts

    def add_csr(self, slots: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> None:
        if len(slots):
            self._ensure(int(np.max(slots)))
        if len(slots) > 64 and self._add_csr_fresh(
            np.asarray(slots, dtype=np.int64), indptr, indices
        ):
            return
        for i, s in enumerate(np.asarray(slots).tolist()):
            self.set(s, indices[indptr[i] : indptr[i + 1]])

    def _add_csr_fresh(self, slots: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> bool:
        """Vectorised ``add_csr`` for distinct slots that have no access list yet (bulk inserts
        and loads): one bitmap update per tenant instead of one ``set`` per slot. Returns False,
        changing nothing, when the general path is needed (existing or repeated slots, repeated
        or negative tenants within a slot)."""
        st = self._slot_tenants
        if st and any(s in st for s in slots.tolist()):
            return False
        if len(np.unique(slots)) != len(slots):
            return False
        indptr = np.asarray(indptr, dtype=np.int64)
        lens = np.diff(indptr)
        ten = np.asarray(indices[indptr[0] : indptr[-1]], dtype=np.int64)
        if ten.size and ten.min() < 0:
            return False
        rows = np.repeat(slots, lens)
        if ten.size and lens.max() > 1:  # sort each slot's tenants; reject duplicates
            order = np.lexsort((ten, np.repeat(np.arange(len(slots)), lens)))
            ten, rows = ten[order], rows[order]
            if ((rows[1:] == rows[:-1]) & (ten[1:] == ten[:-1])).any():
                return False
        ten32 = ten.astype(np.int32)
        by_t = np.argsort(ten, kind="stable")
        ts, starts = np.unique(ten[by_t], return_index=True)
        ends = np.append(starts[1:], len(by_t))[: len(starts)]
        for t, a, b in zip(ts.tolist(), starts.tolist(), ends.tolist(), strict=True):
            sel = rows[by_t[a:b]]
            bm = self._bm(t)
            np.bitwise_or.at(bm, sel >> 3, (1 << (sel & 7)).astype(np.uint8))
            self._counts[t] += b - a
        nonempty = lens > 0
        if (lens == 1).all():  # one tenant per slot (the common case): row views
            lists = list(ten32.reshape(-1, 1))
        else:
            lists = np.split(ten32, indptr[1:-1] - indptr[0])
        st.update(
            (s, lst)
            for s, lst, ok in zip(slots.tolist(), lists, nonempty.tolist(), strict=True)
            if ok
        )
        return True

    def clear(self, slot: int) -> None:
        ts = self._slot_tenants.pop(slot, None)
        if ts is None:
            return
        for t in ts.tolist():
            self._bitmaps[t][slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
            self._counts[t] -= 1

    def grant(self, slot: int, tenant: int) -> bool:
        """Add ``tenant`` to ``slot``'s list; returns False if it was already there."""
        if tenant < 0:
            raise InvalidArgument("tenant ids must be non-negative")
        ts = self._slot_tenants.get(slot)
        if ts is not None and tenant in ts:
            return False
        self._ensure(slot)
        self._bm(tenant)[slot >> 3] |= np.uint8(1 << (slot & 7))
        self._counts[tenant] += 1
        self._slot_tenants[slot] = np.sort(np.append(ts if ts is not None else [], tenant)).astype(
            np.int32
        )
        return True

    def revoke(self, slot: int, tenant: int) -> bool:
        """Remove ``tenant`` from ``slot``'s list; returns False if it was not there."""
        ts = self._slot_tenants.get(slot)
        if ts is None or tenant not in ts:
            return False
        self._bitmaps[tenant][slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
        self._counts[tenant] -= 1
        rest = ts[ts != tenant]
        if len(rest):
            self._slot_tenants[slot] = rest
        else:
            del self._slot_tenants[slot]
        return True

    # -- queries --------------------------------------------------------------------------
    def tenants_of(self, slot: int) -> np.ndarray:
        return self._slot_tenants.get(slot, np.zeros(0, dtype=np.int32))

    def has(self, slot: int, tenant: int) -> bool:
        bm = self._bitmaps.get(tenant)
        return bm is not None and slot >> 3 < len(bm) and bool((bm[slot >> 3] >> (slot & 7)) & 1)

    def count(self, tenant: int) -> int:
        return self._counts.get(tenant, 0)

    def tenants(self) -> list[int]:
        return [t for t, c in self._counts.items() if c > 0]

    def bitmap(self, tenant: int) -> np.ndarray:
        """Packed little-endian uint8 bitmap of the tenant's slots (zeros for an unknown tenant)."""
        bm = self._bitmaps.get(tenant)
        return bm if bm is not None else np.zeros(self._cap_bytes, dtype=np.uint8)

    def mask(self, tenant: int, n: int) -> np.ndarray:
        """Boolean mask over slots [0, n)."""
        bits = np.unpackbits(self.bitmap(tenant), bitorder="little")
        if len(bits) < n:
            bits = np.concatenate([bits, np.zeros(n - len(bits), dtype=np.uint8)])
        return bits[:n].astype(bool)

    def members(self, tenant: int) -> np.ndarray:
        """Sorted int64 slots the tenant may see."""
        return np.flatnonzero(np.unpackbits(self.bitmap(tenant), bitorder="little")).astype(
            np.int64
        )

    def memory_bytes(self) -> int:
        return sum(b.nbytes for b in self._bitmaps.values()) + sum(
            t.nbytes + 64 for t in self._slot_tenants.values()
        )

    # -- persistence ----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        slots = np.array(sorted(self._slot_tenants), dtype=np.int64)
        lists = [self._slot_tenants[s] for s in slots.tolist()]
        indptr = np.zeros(len(slots) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        indices = np.concatenate(lists).astype(np.int32) if lists else np.zeros(0, dtype=np.int32)
        return {"acl_slots": slots, "acl_indptr": indptr, "acl_indices": indices}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], capacity: int = 1024) -> AccessLists:
        out = cls(capacity)
        out.add_csr(arrays["acl_slots"], arrays["acl_indptr"], arrays["acl_indices"])
        return out
