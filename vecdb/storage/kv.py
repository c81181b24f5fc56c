"""The key-value protocol between vecdb and its durable store (RocksDB in production).

Column families by concern (DESIGN.md): ``vectors`` (slot -> bytes), ``ids`` (external id <->
slot), ``acl`` (slot -> tenants), ``payload``, ``postings`` (SPANN list id -> packed block),
``oplog`` (sequence -> mutation), ``meta`` (schema, checkpoints, counters). Every acknowledged
mutation is one atomic ``WriteBatch``. ``MemoryKVStore`` implements the same protocol in RAM for
unit tests and index-only use; ``vecdb.storage.rocks.RocksKVStore`` is the durable one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

COLUMN_FAMILIES = ("vectors", "ids", "acl", "payload", "postings", "oplog", "meta")


class WriteBatch:
    """Mutations applied all-or-nothing by ``KVStore.write``."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes, bytes | None]] = []

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.ops.append((cf, bytes(key), bytes(value)))

    def delete(self, cf: str, key: bytes) -> None:
        self.ops.append((cf, bytes(key), None))

    def __len__(self) -> int:
        return len(self.ops)


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
