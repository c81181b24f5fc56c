"""The key-value protocol between vecdb and its durable store (RocksDB in production).

Column families by concern (DESIGN.md): ``vectors`` (slot -> bytes), ``ids`` (external id <->
slot), ``acl`` (slot -> tenants), ``payload``, ``postings`` (SPANN list id -> packed block),
``oplog`` (sequence -> mutation), ``meta`` (schema, checkpoints, counters). Every acknowledged
mutation is one atomic ``WriteBatch``. ``MemoryKVStore`` implements the same protocol in RAM for
unit tests and index-only use; ``vecdb.storage.rocks.RocksKVStore`` is the durable one.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

COLUMN_FAMILIES = ("vectors", "ids", "acl", "payload", "postings", "oplog", "meta")


class WriteBatch:
    """Mutations applied all-or-nothing by ``KVStore.write``."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes, bytes | None]] = []
        # [begin, end) range deletions; applied before ``ops`` in the same atomic write
        self.ranges: list[tuple[str, bytes, bytes]] = []

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.ops.append((cf, bytes(key), bytes(value)))

    def delete(self, cf: str, key: bytes) -> None:
        self.ops.append((cf, bytes(key), None))

    def put_many(self, cf: str, keys: list[bytes], values: list[bytes]) -> None:
        """Bulk ``put`` (the engine's hot path: keys/values sliced from numpy buffers)."""
        if len(keys) != len(values):
            raise ValueError("put_many: keys and values differ in length")
        self.ops.extend(zip(itertools.repeat(cf, len(keys)), keys, values, strict=True))

    def delete_many(self, cf: str, keys: list[bytes]) -> None:
        """Bulk ``delete``."""
        n = len(keys)
        self.ops.extend(zip(itertools.repeat(cf, n), keys, itertools.repeat(None, n), strict=True))

    def delete_range(self, cf: str, begin: bytes, end: bytes) -> None:
        """Delete every key in ``[begin, end)`` of ``cf`` (applied before the point ops)."""
        self.ranges.append((cf, bytes(begin), bytes(end)))

    def __len__(self) -> int:
        return len(self.ops) + len(self.ranges)


@runtime_checkable
class KVStore(Protocol):
    """What the engine and the disk-resident indexes (SPANN postings) need from a store."""

    def get(self, cf: str, key: bytes) -> bytes | None: ...

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]: ...

    def put(self, cf: str, key: bytes, value: bytes) -> None: ...

    def delete(self, cf: str, key: bytes) -> None: ...

    def write(self, batch: WriteBatch) -> None: ...

    def iterate(self, cf: str, prefix: bytes = b"", start: bytes | None = None
                ) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class MemoryKVStore:
    """In-RAM KVStore with the same atomicity (a lock around each batch) and key ordering."""

    def __init__(self) -> None:
        self._cf: dict[str, dict[bytes, bytes]] = {c: {} for c in COLUMN_FAMILIES}
        self._lock = threading.Lock()

    def _t(self, cf: str) -> dict[bytes, bytes]:
        if cf not in self._cf:
            self._cf[cf] = {}
        return self._cf[cf]

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._t(cf).get(bytes(key))

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        t = self._t(cf)
        return [t.get(bytes(k)) for k in keys]

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        with self._lock:
            self._t(cf)[bytes(key)] = bytes(value)

    def delete(self, cf: str, key: bytes) -> None:
        with self._lock:
            self._t(cf).pop(bytes(key), None)

    def write(self, batch: WriteBatch) -> None:
        with self._lock:
            for cf, b, e in getattr(batch, "ranges", ()):
                t = self._t(cf)
                for k in [k for k in t if b <= k < e]:
                    del t[k]
            for cf, k, v in batch.ops:
                if v is None:
                    self._t(cf).pop(k, None)
                else:
                    self._t(cf)[k] = v

    def iterate(self, cf: str, prefix: bytes = b"", start: bytes | None = None):
        t = self._t(cf)
        lo = max(prefix, start) if start is not None else prefix
        for k in sorted(t):
            if k < lo:
                continue
            if not k.startswith(prefix):
                if k > prefix:
                    break
                continue
            yield k, t[k]

    def close(self) -> None:
        pass
