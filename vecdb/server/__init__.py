"""vecdb.server: the gRPC service over an embedded database (see ``app.py`` for the picture).

Start one with ``vecdb serve --data DIR --port N`` or in-process::

    from vecdb.server import ServerConfig, VecdbServer
    with VecdbServer(ServerConfig(data="./data", port=0, no_auth=True)) as srv:
        print(srv.port)
"""

from vecdb.server.app import SERVICE_NAMES, VecdbServer, serve
from vecdb.server.auth import KeyStore, Principal
from vecdb.server.config import ServerConfig

__all__ = ["VecdbServer", "ServerConfig", "serve", "KeyStore", "Principal", "SERVICE_NAMES"]
