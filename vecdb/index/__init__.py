"""vecdb.index: every index kind behind one contract (see ``base.py``).

Kinds are resolved lazily by name so importing vecdb.index does not import every native module.
"""

from __future__ import annotations

import importlib

from vecdb.errors import InvalidArgument
from vecdb.index.acl import AccessLists, normalize_acl
from vecdb.index.base import Index, SearchParams
from vecdb.index.flat import FlatIndex, FlatSearchParams

# kind -> (module, index class, search-params class)
_KINDS = {
    "flat": ("vecdb.index.flat", "FlatIndex", "FlatSearchParams"),
    "hnsw": ("vecdb.index.hnsw", "HNSWIndex", "HNSWSearchParams"),
    "spann": ("vecdb.index.spann", "SPANNIndex", "SPANNSearchParams"),
    "curator": ("vecdb.index.curator", "CuratorIndex", "CuratorSearchParams"),
}
KINDS = tuple(_KINDS)


def index_class(kind: str) -> type[Index]:
    """The index class registered under ``kind`` (flat, hnsw, spann, curator)."""
    if kind not in _KINDS:
        raise InvalidArgument(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    mod, cls, _ = _KINDS[kind]
    return getattr(importlib.import_module(mod), cls)


def __getattr__(name):
    for mod, cls, params in _KINDS.values():
        if name in (cls, params):
            return getattr(importlib.import_module(mod), name)
    raise AttributeError(f"module 'vecdb.index' has no attribute {name!r}")


__all__ = [
    "Index",
    "SearchParams",
    "AccessLists",
    "normalize_acl",
    "FlatIndex",
    "FlatSearchParams",
    "HNSWIndex",
    "HNSWSearchParams",
    "SPANNIndex",
    "SPANNSearchParams",
    "CuratorIndex",
    "CuratorSearchParams",
    "index_class",
    "KINDS",
]
