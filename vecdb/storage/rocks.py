"""``RocksKVStore``: the durable ``KVStore`` on RocksDB (through ``rocksdict``).

One RocksDB per collection folder, one column family per concern (``COLUMN_FAMILIES``: vectors,
ids, acl, payload, postings, oplog, meta). Keys and values are raw bytes (``raw_mode``), so the
ordering of keys is RocksDB's bytewise order: callers encode integers big-endian when they need
ordered iteration (the engine's slot and sequence keys do).

Why these options:

- ``sync``: every ``write`` is fsynced before it returns (WAL fsync). Off by default: RocksDB's WAL
  still makes a write survive a *process* crash (kill -9) because it is in the OS page cache; only
  a machine/power failure can lose the last writes. On = survives power loss, costs one fsync per
  batch.
- ``block_cache_bytes``: the LRU cache of uncompressed data blocks shared by all column families.
- ``direct_reads``: O_DIRECT reads bypass the OS page cache, so a disk-resident index (SPANN
  postings) measures real device reads instead of page-cache hits.
- Values of the big column families (vectors, postings) are not compressed: float32 data does not
  compress and snappy only costs CPU.

A ``vecdb.storage.WriteBatch`` maps onto one rocksdict ``WriteBatch`` with column-family handles, so
a batch is applied atomically (all or nothing, also across column families).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import rocksdict

from vecdb.errors import FailedPrecondition, InvalidArgument
from vecdb.storage.kv import COLUMN_FAMILIES, WriteBatch

_INCOMPRESSIBLE = ("vectors", "postings", "oplog")


def _cf_options(name: str, cache: rocksdict.Cache | None, direct_reads: bool) -> rocksdict.Options:
    o = rocksdict.Options(raw_mode=True)
    if name in _INCOMPRESSIBLE:
        o.set_compression_type(rocksdict.DBCompressionType.none())
    if name in ("vectors", "postings", "oplog"):
        o.set_write_buffer_size(64 << 20)
    bbo = rocksdict.BlockBasedOptions()
    if cache is not None:
        bbo.set_block_cache(cache)
    if name in ("ids", "acl", "payload", "meta"):
        bbo.set_bloom_filter(10, False)
    o.set_block_based_table_factory(bbo)
    if direct_reads:
        o.set_use_direct_reads(True)
    return o


class RocksKVStore:
    """A RocksDB database in folder ``path`` with vecdb's column families.

    ``sync``: fsync every write. ``block_cache_bytes``: shared block cache size (0 disables it).
    ``direct_reads``: O_DIRECT reads (no OS page cache). ``create``: create the database if it does
    not exist (otherwise opening a missing one raises ``FailedPrecondition``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sync: bool = False,
        block_cache_bytes: int = 64 << 20,
        direct_reads: bool = False,
        create: bool = True,
        extra_column_families: tuple[str, ...] = (),
    ) -> None:
        self.path = os.fspath(path)
        if block_cache_bytes < 0:
            raise InvalidArgument("block_cache_bytes must be >= 0")
        if not create and not os.path.exists(os.path.join(self.path, "CURRENT")):
            raise FailedPrecondition(f"no RocksDB database at {self.path}")
        self.sync = bool(sync)
        self.direct_reads = bool(direct_reads)
        self._cache = rocksdict.Cache(int(block_cache_bytes)) if block_cache_bytes else None
        names = list(dict.fromkeys((*COLUMN_FAMILIES, *extra_column_families)))
        if os.path.exists(os.path.join(self.path, "CURRENT")):
            # open every column family that exists on disk too (RocksDB requires it)
            for n in rocksdict.Rdict.list_cf(self.path):
                if n != "default" and n not in names:
                    names.append(n)
        opts = _cf_options("default", self._cache, self.direct_reads)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_max_background_jobs(2)
        opts.set_keep_log_file_num(2)
        cfs = {n: _cf_options(n, self._cache, self.direct_reads) for n in names}
        try:
            self._db = rocksdict.Rdict(self.path, opts, column_families=cfs)
        except Exception as e:  # rocksdict raises plain Exception (e.g. the LOCK is held)
            raise FailedPrecondition(f"cannot open RocksDB at {self.path}: {e}") from None
        wo = rocksdict.WriteOptions()
        wo.sync = self.sync
        self._wo = wo
        self._db.set_write_options(wo)
        self._cfs = {n: self._db.get_column_family(n) for n in names}
        for c in self._cfs.values():
            c.set_write_options(wo)
        self._handles = {n: self._db.get_column_family_handle(n) for n in names}
        self._closed = False

    # -- helpers --------------------------------------------------------------------------
    def _cf(self, cf: str) -> rocksdict.Rdict:
        if self._closed:
            raise FailedPrecondition(f"store {self.path} is closed")
        try:
            return self._cfs[cf]
        except KeyError:
            raise InvalidArgument(f"unknown column family {cf!r}") from None

    # -- KVStore protocol -----------------------------------------------------------------
    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._cf(cf).get(bytes(key))

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        """One RocksDB MultiGet for all ``keys`` (None where missing)."""
        if not keys:
            return []
        return self._cf(cf).get([bytes(k) for k in keys])

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self._cf(cf).put(bytes(key), bytes(value))

    def delete(self, cf: str, key: bytes) -> None:
        self._cf(cf).delete(bytes(key))

    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically (range deletions first, then the point ops in order)."""
        if self._closed:
            raise FailedPrecondition(f"store {self.path} is closed")
        wb = rocksdict.WriteBatch(raw_mode=True)
        h = self._handles
        try:
            for cf, b, e in batch.ranges:
                wb.delete_range(b, e, h[cf])
            put, dele = wb.put, wb.delete
            for cf, k, v in batch.ops:
                if v is None:
                    dele(k, h[cf])
                else:
                    put(k, v, h[cf])
        except KeyError as e:
            raise InvalidArgument(f"unknown column family {e.args[0]!r}") from None
        self._db.write(wb)

    def iterate(
        self, cf: str, prefix: bytes = b"", start: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys in bytewise order that start with ``prefix``, from ``start`` (or the prefix) on."""
        lo = max(prefix, start) if start is not None else prefix
        it = self._cf(cf).iter()
        if lo:
            it.seek(lo)
        else:
            it.seek_to_first()
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                if k > prefix:
                    break
            else:
                yield k, it.value()
            it.next()

    def delete_range(self, cf: str, begin: bytes, end: bytes) -> None:
        """Delete keys in ``[begin, end)``."""
        self._cf(cf).delete_range(bytes(begin), bytes(end))

    def ingest_sst(self, cf: str, files: Sequence[str | os.PathLike], *,
                   move: bool = False) -> None:
        """Add sorted SST files (``rocksdict.SstFileWriter`` output, raw keys) to column family
        ``cf`` with RocksDB's IngestExternalFile: all the files become visible at once, placed in
        the lowest level their key range allows (no rewrite through the memtable).

        ``move``: move the files into the database (a hard link, the original names are removed)
        instead of copying them; a copy is made if linking is impossible. Keys overlapping
        existing data are allowed (ingested values win). Bad files -> ``InvalidArgument``, and
        nothing is added."""
        paths = [os.fspath(f) for f in files]
        handle = self._cf(cf)
        if not paths:
            return
        for p in paths:
            if not os.path.isfile(p):
                raise InvalidArgument(f"ingest_sst: no such SST file {p}")
        opts = rocksdict.IngestExternalFileOptions()
        opts.set_move_files(bool(move))
        try:
            handle.ingest_external_file(paths, opts)
        except Exception as e:  # rocksdict raises plain Exception for RocksDB errors
            if isinstance(e, InvalidArgument | FailedPrecondition):
                raise
            raise InvalidArgument(f"ingest_sst into {cf!r} failed: {e}") from None

    def flush(self) -> None:
        """Flush memtables to SST files and sync the WAL (used before measuring disk size)."""
        for c in self._cfs.values():
            c.flush()
        self._db.flush_wal(True)

    def compact(self, cf: str) -> None:
        """Flush column family ``cf`` and compact its whole key range now (blocks until done):
        after a bulk load every key then lives in one sorted run, so a point read touches one
        file and no background compaction competes with the reads that follow."""
        c = self._cf(cf)
        c.flush()
        c.compact_range(None, None)

    def sync_wal(self) -> None:
        """fsync the write-ahead log (makes every acknowledged write power-loss durable)."""
        if not self._closed:
            self._db.flush_wal(True)

    def disk_bytes(self) -> int:
        """Bytes of the database folder on disk (SST + WAL + manifest)."""
        return folder_bytes(self.path)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._db.flush_wal(True)
        finally:
            for c in self._cfs.values():
                del c
            self._cfs.clear()
            self._handles.clear()
            self._db.close()

    def __enter__(self) -> RocksKVStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def folder_bytes(path: str) -> int:
    """Bytes of every file below ``path`` (files vanishing meanwhile are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total
