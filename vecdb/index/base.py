"""The index contract every vecdb index implements (flat, hnsw, spann, curator).

faiss-shaped and deliberately small::

    add(vectors, slots=None, acl=None) -> slots      # acl: CSR (indptr, indices) or list of lists
    remove(slots)                                     # deleted slots are never returned again
    grant(slot, tenant) / revoke(slot, tenant)        # change one access list, no vector copy
    search(queries, k, tenant=None, params=None) -> (slots int64 [nq,k], dist float32 [nq,k])
    memory_bytes() ; save(path) ; Index.load(path) ; len(index)

Indexes see integer slots and integer tenant ids only (names live in the engine). Results are
padded with slot -1 / distance +inf when fewer than k vectors match. Distances are the kernels'
convention (squared L2, or negated inner product for ip/cosine): smaller is closer, everywhere.
Search knobs travel in a frozen per-call ``SearchParams`` dataclass, never as index state, so
concurrent searches with different knobs cannot race.
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from vecdb.errors import InvalidArgument
from vecdb.kernels import check_k, check_metric, prepare
from vecdb.storage.npz import write_npz


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Base of every index's per-call search knobs (flat has none)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SearchParams:
        """Build from a user dict; an unknown knob is an error, never silently ignored."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidArgument(
                f"unknown search parameter(s) {unknown} for {cls.__name__}; known: {sorted(names)}"
            )
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"bad search parameters for {cls.__name__}: {e}") from None


def check_build_params(cls_name: str, given: dict[str, Any], allowed: dict[str, Any]) -> dict:
    """Validate creation knobs against ``allowed`` (name -> default); returns the full dict."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InvalidArgument(
            f"unknown parameter(s) {unknown} for {cls_name}; known: {sorted(allowed)}"
        )
    out = dict(allowed)
    out.update(given)
    return out


class Index(ABC):
    """Abstract base: shared validation, slot bookkeeping helpers and the persistence format."""

    kind: ClassVar[str] = "abstract"
    params_class: ClassVar[type[SearchParams]] = SearchParams
    # True where the class overrides ``load`` with a reader of the same file format that
    # ``Index.load`` must hand the file to (it reads the arrays chunk by chunk).
    streams_load: ClassVar[bool] = False

    def __init__(self, dim: int, metric: str = "l2"):
        if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or dim < 1:
            raise InvalidArgument(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.metric = check_metric(metric)

    # -- boundary helpers -----------------------------------------------------------------
    def _prepare(self, vectors, name: str = "vectors") -> np.ndarray:
        """Validate and (cosine) normalise vectors: float32 C-contiguous [n, dim]."""
        return prepare(vectors, self.dim, self.metric, name)

    def _params(self, params) -> SearchParams:
        if params is None:
            return self.params_class()
        if isinstance(params, dict):
            return self.params_class.from_dict(params)
        if not isinstance(params, self.params_class):
            raise InvalidArgument(
                f"{type(self).__name__} expects {self.params_class.__name__}, "
                f"got {type(params).__name__}"
            )
        return params

    @staticmethod
    def _slots(slots, n: int | None = None, name: str = "slots") -> np.ndarray:
        s = np.asarray(slots)
        if s.ndim == 0:
            s = s.reshape(1)
        if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
            raise InvalidArgument(f"{name}: expected a 1-D integer array")
        s = s.astype(np.int64)
        if n is not None and len(s) != n:
            raise InvalidArgument(f"{name}: expected {n} slots, got {len(s)}")
        if s.size and s.min() < 0:
            raise InvalidArgument(f"{name}: slots must be non-negative")
        if len(np.unique(s)) != len(s):
            raise InvalidArgument(f"{name}: duplicate slots in one call")
        return s

    @staticmethod
    def _k(k) -> int:
        return check_k(k)

    # -- the contract ---------------------------------------------------------------------
    @abstractmethod
    def add(self, vectors, slots=None, acl=None) -> np.ndarray:
        """Insert (or replace) vectors at ``slots`` (default: the next free ones); returns slots."""

    @abstractmethod
    def remove(self, slots) -> None:
        """Delete slots; unknown slots are ignored."""

    @abstractmethod
    def grant(self, slot: int, tenant: int) -> None:
        """Let ``tenant`` see ``slot``."""

    @abstractmethod
    def revoke(self, slot: int, tenant: int) -> None:
        """Stop ``tenant`` seeing ``slot``."""

    @abstractmethod
    def search(self, queries, k: int, tenant: int | None = None, params=None):
        """k nearest per query among the slots ``tenant`` may see (all slots if tenant is None)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes of RAM the index holds (vectors included)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, named numpy arrays) that fully describe the index."""

    @classmethod
    @abstractmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Index: ...

    # -- persistence: one format for every in-memory index --------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically (temp file + rename); no pickle."""
        meta, arrays = self._state()
        meta = {"kind": self.kind, "dim": self.dim, "metric": self.metric, **meta}
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as f:
            # np.savez's archive, with the arrays written from their own memory
            write_npz(f, {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                          **arrays})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Read an index written by ``save``."""
        if cls.kind == "abstract":  # a kind with its own streaming reader (hnsw) takes the file
            with np.load(path, allow_pickle=False) as z:
                kind = json.loads(z["__meta__"].tobytes().decode())["kind"]
            target = _index_class(kind)
            if target.streams_load:
                return target.load(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
            meta = json.loads(z["__meta__"].tobytes().decode())
        if cls.kind != "abstract" and meta["kind"] != cls.kind:
            raise InvalidArgument(f"{path}: holds a {meta['kind']!r} index, not {cls.kind!r}")
        target = cls if cls.kind != "abstract" else _index_class(meta["kind"])
        return target._from_state(meta, arrays)


def _index_class(kind: str) -> type[Index]:
    from vecdb.index import index_class

    return index_class(kind)


def pad_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty result arrays: slots -1, distances +inf."""
    return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), np.inf, dtype=np.float32)
