"""Result objects shared by the embedded API and the client SDK (same fields on both sides; the SDK
imports this module, never the engine)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """``ids`` int64 [nq, k] (external ids, -1 = none), ``distances`` float32 [nq, k] (+inf)."""

    ids: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class GetResult:
    """The requested ids the tenant may see, in request order: ids, vectors [n, dim], payloads."""

    ids: np.ndarray
    vectors: np.ndarray
    payloads: list[dict[str, Any] | None]

    def __len__(self) -> int:
        return len(self.ids)


# per-item statuses of an upsert
CREATED = "created"
UPDATED = "updated"


@dataclasses.dataclass(frozen=True)
class UpsertResult:
    """Per-item status of an upsert: ``status[i]`` is ``"created"`` or ``"updated"`` for ``ids[i]``.

    The batch is all-or-nothing: any invalid item raises before anything is written, so every
    returned item succeeded. ``seq`` is the oplog sequence number of the batch.
    """

    ids: np.ndarray
    status: list[str]
    seq: int

    @property
    def created(self) -> int:
        return sum(s == CREATED for s in self.status)

    @property
    def updated(self) -> int:
        return sum(s == UPDATED for s in self.status)

    def __len__(self) -> int:
        return len(self.ids)
