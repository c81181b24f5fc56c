"""Result objects of the client SDK: the same fields as the embedded API's results (the SDK does
not import the engine, so they are small twins of ``vecdb.engine.results``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """``ids`` int64 [nq, k] (-1 = none), ``distances`` float32 [nq, k] (+inf = none)."""

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


@dataclasses.dataclass(frozen=True)
class UpsertResult:
    """Per-item status (``"created"``/``"updated"``) of an upsert; ``seq`` of its last batch."""

    ids: np.ndarray
    status: list[str]
    seq: int

    @property
    def created(self) -> int:
        return sum(s == "created" for s in self.status)

    @property
    def updated(self) -> int:
        return sum(s == "updated" for s in self.status)

    def __len__(self) -> int:
        return len(self.ids)
