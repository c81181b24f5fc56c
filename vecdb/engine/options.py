"""Options of an embedded database (``vecdb.open(path, **options)``), validated once."""

from __future__ import annotations

import dataclasses
from typing import Any

from vecdb.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class Options:
    """Knobs of a ``Database``; an unknown name is an error, never silently ignored.

    - ``sync``: fsync the RocksDB WAL on every write batch (power-loss durable). Off: a batch still
      survives a process crash (kill -9), as the WAL is in the OS page cache.
    - ``block_cache_bytes``: RocksDB block cache per collection.
    - ``direct_reads``: O_DIRECT reads (no page cache), for honest disk-resident benchmarks.
    - ``checkpoint_every_ops`` / ``checkpoint_every_s``: the background checkpointer saves a
      collection's index once this many rows changed, or this many seconds after the first
      unsaved change. ``background_checkpoints=False`` leaves it to ``checkpoint()`` and close.
    - ``checkpoint_on_close``: checkpoint dirty collections on close (fast reopen).
    - ``max_batch``: most rows per call (``ResourceExhausted`` above).
    - ``max_payload_bytes``: largest JSON payload per vector (``ResourceExhausted`` above).
    """

    sync: bool = False
    block_cache_bytes: int = 64 << 20
    direct_reads: bool = False
    checkpoint_every_ops: int = 500_000
    checkpoint_every_s: float = 60.0
    background_checkpoints: bool = True
    checkpoint_on_close: bool = True
    max_batch: int = 1_000_000
    max_payload_bytes: int = 64 << 10

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Options:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InvalidArgument(f"unknown database option(s) {unknown}; known: {sorted(names)}")
        for k, v in d.items():
            want = names[k].type
            ok = {
                "bool": isinstance(v, bool),
                "int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "float": isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
            }[want]
            if not ok:
                raise InvalidArgument(f"option {k}: expected a {want} (non-negative), got {v!r}")
        if d.get("max_batch", 1) < 1 or d.get("checkpoint_every_ops", 1) < 1:
            raise InvalidArgument("max_batch and checkpoint_every_ops must be >= 1")
        return cls(**d)
