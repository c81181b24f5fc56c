"""vecdb.client: the Python SDK (``vecdb.Client``); imports only the generated stubs and itself."""

from vecdb.client.client import Client, RemoteCollection
from vecdb.client.errors import RemoteError
from vecdb.results import GetResult, SearchResult, UpsertResult

__all__ = ["Client", "RemoteCollection", "RemoteError", "SearchResult", "GetResult",
           "UpsertResult"]
