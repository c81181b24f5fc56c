"""vecdb.storage: the KVStore protocol and its implementations (RocksDB, in-memory)."""

from vecdb.storage.kv import COLUMN_FAMILIES, KVStore, MemoryKVStore, WriteBatch

__all__ = ["COLUMN_FAMILIES", "KVStore", "MemoryKVStore", "WriteBatch"]
