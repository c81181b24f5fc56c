"""vecdb.engine: the database layer (collections, tenants, access lists, durable writes, recovery).

::

    db = vecdb.open("./data")                      # vecdb.engine.Database
    col = db.create_collection("docs", dim=384, metric="cosine", index="hnsw", params={...})
    col.create_tenant("acme")
    col.upsert(ids, vectors, tenant="acme", payloads=None)     # -> UpsertResult (per-item status)
    col.grant(ids, tenant="beta"); col.revoke(ids, tenant="beta")
    res = col.search(queries, k=10, tenant="beta")            # -> SearchResult(.ids, .distances)
    col.get(ids, tenant="acme")                     # -> GetResult(.ids, .vectors, .payloads)
    db.close()

See ``collection.py`` for the write path and recovery, ``codec.py`` for the on-disk layout.
"""

from vecdb.engine.collection import Collection
from vecdb.engine.database import Database
from vecdb.engine.options import Options
from vecdb.results import GetResult, SearchResult, UpsertResult

__all__ = ["Database", "Collection", "Options", "SearchResult", "GetResult", "UpsertResult"]
