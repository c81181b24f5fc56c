"""vecdb.storage: the KVStore protocol and its implementations (RocksDB, in-memory)."""

from vecdb.storage.kv import COLUMN_FAMILIES, KVStore, MemoryKVStore, WriteBatch

__all__ = ["COLUMN_FAMILIES", "KVStore", "MemoryKVStore", "RocksKVStore", "WriteBatch"]


def __getattr__(name):
    # RocksKVStore is imported lazily so `import vecdb.storage` never loads RocksDB
    if name == "RocksKVStore":
        from vecdb.storage.rocks import RocksKVStore

        return RocksKVStore
    raise AttributeError(f"module 'vecdb.storage' has no attribute {name!r}")
