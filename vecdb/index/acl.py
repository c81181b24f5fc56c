"""Access lists shared by the indexes: which tenants may see which slots.

Like faiss's ``IDSelectorBitmap``, each tenant has a packed little-endian bitmap over slots (bit s
of byte s>>3), which native search loops test per visited node without the GIL; each slot keeps
the tenants on its list so ``remove`` clears exactly the right bits. Tenants are dense ints; names
live in the engine.
"""

from __future__ import annotations

from collections.abc import Mapping

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


_NONE = -1  # owner[slot]: no tenant
_MULTI = -2  # owner[slot]: two or more tenants, listed in _multi[slot]
_MAX_TENANT = 2**31 - 1  # tenants are stored as int32, -1/-2 are sentinels
_INT16_MAX = 2**15 - 1  # the owner array is int16 while every tenant id fits
_SMALL_BATCH = 64  # add_csr up to this many slots: per-slot set is cheaper than the numpy path
_SCALAR_GROUP = 8  # a tenant with at most this many bits to flip: Python loop, not ufunc.at
_MULTI_ENTRY_BYTES = 200  # measured (tracemalloc): dict entry + int key + small int32 array


def _check_tenants(ten: np.ndarray) -> None:
    if ten.size and (int(ten.min()) < 0 or int(ten.max()) >= _MAX_TENANT):
        raise InvalidArgument(f"acl: tenant ids must be in [0, {_MAX_TENANT})")


def _groups(keys: np.ndarray):
    """``(key, positions)`` for each distinct value of ``keys`` (positions in stable order)."""
    if not keys.size:
        return
    if keys[0] == keys[-1] and (keys == keys[0]).all():
        yield int(keys[0]), np.arange(len(keys))
        return
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    cut = np.flatnonzero(k[1:] != k[:-1]) + 1
    starts = np.concatenate(([0], cut))
    ends = np.concatenate((cut, [len(k)])).tolist()
    for key, a, b in zip(k[starts].tolist(), starts.tolist(), ends, strict=True):
        yield key, order[a:b]


class _SlotTenantsView(Mapping):
    """Read-only ``slot -> sorted int32 tenants`` view over the compact layout (the shape of the
    former ``_slot_tenants`` dict, for code and tests that still inspect it)."""

    def __init__(self, acl: AccessLists):
        self._acl = acl

    def __getitem__(self, slot: int) -> np.ndarray:
        ts = self._acl.tenants_of(slot)
        if not len(ts):
            raise KeyError(slot)
        return ts

    def __iter__(self):
        return iter(np.flatnonzero(self._acl._owner != _NONE).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self._acl._owner != _NONE))


class AccessLists:
    """Per-tenant slot bitmaps + per-slot tenant lists, growable, serialisable.

    Per-slot lists are stored compactly because they are the largest per-vector cost after the
    vectors: ``_owner[slot]`` holds the one tenant of a slot with exactly one (the common case),
    ``-1`` for none and ``-2`` for two or more, whose sorted int32 lists live in the sparse dict
    ``_multi`` (grants beyond the owner are rare). ``_owner`` is int16 (2 B/slot) while every
    tenant id is < 32767 and int32 after, and is only allocated once a slot gets a tenant (an
    index without access lists, e.g. SPANN over ``acl=None``, pays nothing for it). Bulk paths
    (``add_csr``, ``clear_many``, ``to_arrays``) are vectorised: no per-slot Python except for
    ``_multi`` slots.
    """

    def __init__(self, capacity: int = 1024):
        self._cap_bytes = max(8, (int(capacity) + 7) // 8)
        self._bitmaps: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}
        self._owner = np.zeros(0, dtype=np.int16)  # allocated by _room on the first tenant
        self._multi: dict[int, np.ndarray] = {}

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

    def _room(self, max_slot: int, max_tenant: int) -> None:
        """Make ``_owner`` cover slots up to ``max_slot`` (at the bitmaps' capacity) and hold
        tenant ids up to ``max_tenant``."""
        self._ensure(max_slot)
        own = self._owner
        dt = np.int16 if own.dtype == np.int16 and max_tenant <= _INT16_MAX else np.int32
        if len(own) < self._cap_bytes * 8 or dt != own.dtype:
            new = np.full(self._cap_bytes * 8, _NONE, dtype=dt)
            new[: len(own)] = own
            self._owner = new

    def _bm(self, tenant: int) -> np.ndarray:
        bm = self._bitmaps.get(tenant)
        if bm is None:
            bm = self._bitmaps[tenant] = np.zeros(self._cap_bytes, dtype=np.uint8)
            self._counts[tenant] = 0
        return bm

    @property
    def _slot_tenants(self) -> Mapping[int, np.ndarray]:
        return _SlotTenantsView(self)

    def _set_bits(self, slots: np.ndarray, tenants: np.ndarray) -> None:
        """Set bit ``slots[i]`` in tenant ``tenants[i]``'s bitmap; pairs must be new (not set)."""
        for t, pos in _groups(tenants):
            bm = self._bm(t)
            if len(pos) <= _SCALAR_GROUP:
                for x in slots[pos].tolist():
                    bm[x >> 3] |= 1 << (x & 7)
            else:
                sel = slots[pos]
                np.bitwise_or.at(bm, sel >> 3, (1 << (sel & 7)).astype(np.uint8))
            self._counts[t] += len(pos)

    def _clear_bits(self, slots: np.ndarray, tenants: np.ndarray) -> None:
        """Clear bit ``slots[i]`` in tenant ``tenants[i]``'s bitmap; pairs must be set."""
        for t, pos in _groups(tenants):
            bm = self._bitmaps[t]
            if len(pos) <= _SCALAR_GROUP:
                for x in slots[pos].tolist():
                    bm[x >> 3] &= ~(1 << (x & 7)) & 0xFF
            else:
                sel = slots[pos]
                np.bitwise_and.at(bm, sel >> 3, ~(1 << (sel & 7)).astype(np.uint8))
            self._counts[t] -= len(pos)

    # -- mutation -------------------------------------------------------------------------
    def set(self, slot: int, tenants) -> None:
        """Replace the access list of ``slot`` (an int or an iterable of tenant ids)."""
        slot = int(slot)
        if slot < 0:
            raise InvalidArgument(f"acl: slot {slot} is negative")
        if isinstance(tenants, (int, np.integer)):
            lst = [int(tenants)]
        else:
            ts = np.asarray(tenants, dtype=np.int64).ravel()
            lst = ts.tolist() if ts.size < 2 else np.unique(ts).tolist()
        if lst and not (lst[0] >= 0 and lst[-1] < _MAX_TENANT):  # lst is sorted
            raise InvalidArgument(f"acl: tenant ids must be in [0, {_MAX_TENANT})")
        self.clear(slot)
        if not lst:
            return
        self._room(slot, lst[-1])
        byte, bit = slot >> 3, 1 << (slot & 7)
        for t in lst:
            self._bm(t)[byte] |= bit
            self._counts[t] += 1
        if len(lst) == 1:
            self._owner[slot] = lst[0]
        else:
            self._owner[slot] = _MULTI
            self._multi[slot] = np.array(lst, dtype=np.int32)

    def add_csr(self, slots: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> None:
        """Replace the access lists of ``slots``: slot ``slots[i]`` gets the tenants
        ``indices[indptr[i]:indptr[i+1]]`` (repeats ignored; a repeated slot: the last list wins,
        as with one ``set`` per slot in order). Validates everything before changing anything."""
        slots = np.asarray(slots, dtype=np.int64).ravel()
        indptr = np.asarray(indptr, dtype=np.int64).ravel()
        n = len(slots)
        if len(indptr) != n + 1:
            raise InvalidArgument(f"acl: indptr has {len(indptr)} entries for {n} slots")
        if n == 0:
            return
        lens = np.diff(indptr)
        if indptr[0] < 0 or indptr[-1] > len(indices) or (lens < 0).any():
            raise InvalidArgument("acl: malformed CSR (indptr must be monotone within indices)")
        if int(slots.min()) < 0:
            raise InvalidArgument("acl: slots must be non-negative")
        ten = np.asarray(indices[indptr[0] : indptr[-1]], dtype=np.int64)
        _check_tenants(ten)
        if n <= _SMALL_BATCH:
            for i, s in enumerate(slots.tolist()):
                self.set(s, ten[indptr[i] - indptr[0] : indptr[i + 1] - indptr[0]])
            return
        if not ten.size:  # no tenants at all (e.g. acl=None): nothing to store
            self._ensure(int(slots.max()))
            self.clear_many(slots)
            return
        self._room(int(slots.max()), int(ten.max()))
        touched, uniq = slots, True
        if not (slots[1:] > slots[:-1]).all():
            touched, last = np.unique(slots[::-1], return_index=True)
            if len(touched) < n:  # a repeated slot: its last occurrence wins
                uniq = False
                keep = np.zeros(n, dtype=bool)
                keep[n - 1 - last] = True
                lens = np.where(keep, lens, 0)
                ten = ten[np.repeat(keep, np.diff(indptr))]
        rows = np.repeat(slots, lens)  # entry -> slot
        if not (uniq and (lens <= 1).all()):  # sort by (slot, tenant), drop repeats
            order = np.lexsort((ten, rows))
            rows, ten = rows[order], ten[order]
            dup = np.zeros(len(rows), dtype=bool)
            dup[1:] = (rows[1:] == rows[:-1]) & (ten[1:] == ten[:-1])
            if dup.any():
                rows, ten = rows[~dup], ten[~dup]
        self._clear_distinct(touched)
        if not rows.size:
            return
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        starts = np.flatnonzero(first)
        cnt = np.diff(np.append(starts, len(rows)))
        one = cnt == 1
        self._owner[rows[starts[one]]] = ten[starts[one]]
        if not one.all():
            ms = starts[~one]
            self._owner[rows[ms]] = _MULTI
            ten32 = ten.astype(np.int32)
            for s, a, c in zip(rows[ms].tolist(), ms.tolist(), cnt[~one].tolist(), strict=True):
                self._multi[s] = ten32[a : a + c].copy()
        self._set_bits(rows, ten)

    def clear(self, slot: int) -> None:
        """Empty the access list of ``slot`` (no-op if it has none)."""
        slot = int(slot)
        if not 0 <= slot < len(self._owner):
            return
        o = int(self._owner[slot])
        if o == _NONE:
            return
        byte, mask = slot >> 3, ~(1 << (slot & 7)) & 0xFF
        for t in (o,) if o >= 0 else self._multi.pop(slot).tolist():
            self._bitmaps[t][byte] &= mask
            self._counts[t] -= 1
        self._owner[slot] = _NONE

    def clear_many(self, slots) -> None:
        """Empty the access lists of ``slots`` in one vectorised pass (repeats and slots without
        a list are fine)."""
        s = np.asarray(slots, dtype=np.int64).ravel()
        if not (s[1:] > s[:-1]).all():
            s = np.sort(s)
            s = s[np.append(True, s[1:] != s[:-1])]
        self._clear_distinct(s[(s >= 0) & (s < len(self._owner))])

    def _clear_distinct(self, s: np.ndarray) -> None:
        """``clear_many`` for distinct in-range slots."""
        o = self._owner[s]
        has = o != _NONE
        if not has.any():
            return
        s, o = s[has], o[has]
        one = o >= 0
        cs, ct = s[one], o[one].astype(np.int64)
        if not one.all():
            ms = s[~one].tolist()
            lists = [self._multi.pop(x) for x in ms]
            cs = np.concatenate([cs, np.repeat(s[~one], [len(x) for x in lists])])
            ct = np.concatenate([ct, np.concatenate(lists).astype(np.int64)])
        self._clear_bits(cs, ct)
        self._owner[s] = _NONE

    def grant(self, slot: int, tenant: int) -> bool:
        """Add ``tenant`` to ``slot``'s list; returns False if it was already there."""
        slot, tenant = int(slot), int(tenant)
        if not 0 <= tenant < _MAX_TENANT:
            raise InvalidArgument("tenant ids must be non-negative")
        if slot < 0:
            raise InvalidArgument(f"acl: slot {slot} is negative")
        self._room(slot, tenant)
        o = int(self._owner[slot])
        if o == tenant:
            return False
        if o == _MULTI:
            ts = self._multi[slot]
            i = int(np.searchsorted(ts, tenant))
            if i < len(ts) and ts[i] == tenant:
                return False
            self._multi[slot] = np.insert(ts, i, tenant)
        elif o >= 0:
            self._owner[slot] = _MULTI
            self._multi[slot] = np.array(sorted((o, tenant)), dtype=np.int32)
        else:
            self._owner[slot] = tenant
        self._bm(tenant)[slot >> 3] |= 1 << (slot & 7)
        self._counts[tenant] += 1
        return True

    def revoke(self, slot: int, tenant: int) -> bool:
        """Remove ``tenant`` from ``slot``'s list; returns False if it was not there."""
        slot, tenant = int(slot), int(tenant)
        if tenant < 0 or not 0 <= slot < len(self._owner):
            return False
        o = int(self._owner[slot])
        if o == tenant:
            self._owner[slot] = _NONE
        elif o == _MULTI:
            ts = self._multi[slot]
            rest = ts[ts != tenant]
            if len(rest) == len(ts):
                return False
            if len(rest) == 1:
                self._owner[slot] = rest[0]
                del self._multi[slot]
            else:
                self._multi[slot] = rest
        else:
            return False
        self._bitmaps[tenant][slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
        self._counts[tenant] -= 1
        return True

    # -- queries --------------------------------------------------------------------------
    def tenants_of(self, slot: int) -> np.ndarray:
        """Sorted int32 tenants on ``slot``'s list (a copy; empty if none)."""
        slot = int(slot)
        if 0 <= slot < len(self._owner):
            o = int(self._owner[slot])
            if o >= 0:
                return np.array([o], dtype=np.int32)
            if o == _MULTI:
                return self._multi[slot].copy()
        return np.zeros(0, dtype=np.int32)

    def has(self, slot: int, tenant: int) -> bool:
        bm = self._bitmaps.get(tenant)
        if bm is None or not 0 <= slot < len(bm) * 8:
            return False
        return bool((bm[slot >> 3] >> (slot & 7)) & 1)

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
        """Bytes held: tenant bitmaps, the int32 owner array, and the 2+-tenant lists."""
        return (
            sum(b.nbytes for b in self._bitmaps.values())
            + self._owner.nbytes
            + sum(t.nbytes + _MULTI_ENTRY_BYTES for t in self._multi.values())
        )

    # -- persistence ----------------------------------------------------------------------
    def to_arrays(self, compact: bool = False, copy: bool = True) -> dict[str, np.ndarray]:
        """Checkpoint arrays. Default: slots with a list (sorted int64) and their sorted tenants
        as CSR (``acl_slots``, ``acl_indptr`` int64, ``acl_indices`` int32), the format every
        version reads (20 B per slot with a list). ``compact``: the owner array as it is
        (``acl_owner``, 2 B per slot while tenant ids fit int16) plus the 2+-tenant slots as CSR
        (``acl_multi_*``); ``copy=False`` hands the owner array itself out (for a caller that
        writes it while nothing mutates the lists): nothing per slot is built."""
        if compact:
            ms = np.array(sorted(self._multi), dtype=np.int64)
            lists = [self._multi[x] for x in ms.tolist()]
            indptr = np.zeros(len(ms) + 1, dtype=np.int64)
            np.cumsum([len(x) for x in lists], out=indptr[1:])
            return {"acl_owner": self._owner.copy() if copy else self._owner,
                    "acl_multi_slots": ms, "acl_multi_indptr": indptr,
                    "acl_multi_indices": (np.concatenate(lists) if lists
                                          else np.zeros(0)).astype(np.int32)}
        slots = np.flatnonzero(self._owner != _NONE).astype(np.int64)
        own = self._owner[slots]
        lens = np.ones(len(slots), dtype=np.int64)
        mpos = np.flatnonzero(own == _MULTI)
        lists = [self._multi[s] for s in slots[mpos].tolist()]
        lens[mpos] = [len(x) for x in lists]
        indptr = np.zeros(len(slots) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        one = own >= 0
        indices[indptr[:-1][one]] = own[one]
        if lists:
            ml = lens[mpos]
            within = np.arange(int(ml.sum())) - np.repeat(np.cumsum(ml) - ml, ml)
            indices[np.repeat(indptr[mpos], ml) + within] = np.concatenate(lists)
        return {"acl_slots": slots, "acl_indptr": indptr, "acl_indices": indices}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], capacity: int = 1024) -> AccessLists:
        """Inverse of ``to_arrays``, either format (the CSR one also as written by the
        per-slot-dict layout, which used the same arrays). A compact owner array is taken over
        (``from_owner``)."""
        if "acl_owner" in arrays:
            return cls.from_owner(arrays["acl_owner"], arrays["acl_multi_slots"],
                                  arrays["acl_multi_indptr"], arrays["acl_multi_indices"],
                                  capacity)
        out = cls(capacity)
        slots, indptr, ind = arrays["acl_slots"], arrays["acl_indptr"], arrays["acl_indices"]
        step = 1 << 20
        for s in range(0, max(1, len(slots)), step):
            e = min(len(slots), s + step)
            out.add_csr(slots[s:e], indptr[s:e + 1], ind)
        return out

    @classmethod
    def from_owner(cls, owner: np.ndarray, multi_slots: np.ndarray | None = None,
                   multi_indptr: np.ndarray | None = None,
                   multi_indices: np.ndarray | None = None, capacity: int = 1024
                   ) -> AccessLists:
        """Access lists from a per-slot owner array (tenant id, -1 none, -2 two or more: those
        slots' tenants as CSR ``multi_*``, two or more each). ``owner`` (int16 or int32) is taken
        over, not copied (the caller must not use it afterwards; copied only if read-only or
        shorter than ``capacity``), and the tenant bitmaps are set from it chunk by chunk: an
        import or a reopen holds no per-slot temporary beyond one chunk. Bad values ->
        ``InvalidArgument``."""
        own = np.asarray(owner)
        if own.ndim != 1 or own.dtype not in (np.dtype(np.int16), np.dtype(np.int32)):
            raise InvalidArgument(f"acl: owner must be a 1-D int16/int32 array, got "
                                  f"{own.dtype} {own.shape}")
        ms = np.zeros(0, np.int64) if multi_slots is None else np.asarray(multi_slots, np.int64)
        mp = np.zeros(1, np.int64) if multi_indptr is None else np.asarray(multi_indptr, np.int64)
        mi = np.zeros(0, np.int64) if multi_indices is None else np.asarray(multi_indices,
                                                                              np.int64)
        if len(mp) != len(ms) + 1 or mp[0] != 0 or mp[-1] != len(mi) or (np.diff(mp) < 2).any():
            raise InvalidArgument("acl: malformed multi-tenant CSR")
        _check_tenants(mi)
        step = 1 << 20  # a multiple of 8: chunks start on a bitmap byte
        nmulti = 0
        for a in range(0, len(own), step):
            o = own[a:a + step]
            if int(o.min()) < _MULTI:
                raise InvalidArgument(f"acl: bad owner value {int(o.min())}")
            nmulti += int(np.count_nonzero(o == _MULTI))
        if nmulti != len(ms) or (len(ms) and (int(ms.min()) < 0 or int(ms.max()) >= len(own)
                                              or (own[ms] != _MULTI).any())):
            raise InvalidArgument("acl: multi-tenant slots do not match the owner array")
        out = cls(max(int(capacity), len(own)))
        if not len(own):
            return out
        if not (own.flags.writeable and own.flags.c_contiguous):
            own = own.copy()
        out._owner = own
        out._room(len(own) - 1, int(mi.max(initial=0)))  # to int32 if a listed tenant needs it
        own = out._owner
        for a in range(0, len(own), step):
            out._or_owned(a, own[a:a + step])
        for s, x, y in zip(ms.tolist(), mp[:-1].tolist(), mp[1:].tolist(), strict=True):
            lst = np.unique(mi[x:y]).astype(np.int32)
            if len(lst) < 2:
                raise InvalidArgument(f"acl: slot {s} is marked multi-tenant with {len(lst)}")
            out._multi[s] = lst
            out._set_bits(np.full(len(lst), s, dtype=np.int64), lst.astype(np.int64))
        return out

    def _or_owned(self, start: int, o: np.ndarray) -> None:
        """Set the bitmap bits of the one-tenant slots among ``o`` = owners of slots
        ``start..`` (``start`` a multiple of 8): a packed mask per tenant when the chunk has few
        tenants (the common case: one bulk tenant), ``_set_bits`` otherwise."""
        one = o >= 0
        if not one.any():
            return
        lo, hi = int(o[one].min()), int(o[one].max())
        ts = [lo] if lo == hi else np.unique(o[one]).tolist()
        if len(ts) > _SCALAR_GROUP:
            pos = np.flatnonzero(one)
            self._set_bits(pos + start, o[pos].astype(np.int64))
            return
        b = start >> 3
        for t in ts:
            m = o == t
            bits = np.packbits(m, bitorder="little")
            bm = self._bm(t)
            bm[b:b + len(bits)] |= bits
            self._counts[t] += int(np.count_nonzero(m))
