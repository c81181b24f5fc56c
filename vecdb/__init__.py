"""vecdb: a multi-tenant vector database (HNSW, SPANN and Curator indexes over RocksDB, gRPC).

Importing vecdb is cheap: no GPU, no server, no RocksDB is touched until asked for.
"""

from __future__ import annotations

from vecdb import errors
from vecdb.errors import VecdbError

__version__ = "0.1.0"


def open(path, **options):  # noqa: A001 - mirrors the embedded API of DESIGN.md
    """Open (or create) an embedded database in the folder ``path``."""
    from vecdb.engine import Database

    return Database(path, **options)


def __getattr__(name):
    if name == "Client":
        from vecdb.client import Client

        return Client
    raise AttributeError(f"module 'vecdb' has no attribute {name!r}")


__all__ = ["open", "errors", "VecdbError", "Client", "__version__"]
