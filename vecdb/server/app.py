"""``VecdbServer``: the gRPC server around one embedded database.

::

    VecdbServer(config).start()      opens the database, binds the port, health = SERVING
      grpc.server(thread pool, [ServerInterceptor])
        Collections / Tenants / Points / Admin servicers  -> vecdb.engine.Database
        grpc.health.v1.Health, server reflection          (no key needed)
      Prometheus /metrics on its own HTTP port (optional)
    .stop()                          health = NOT_SERVING, refuse new RPCs, finish in-flight ones
                                     (grace period), checkpoint and close the database

The thread pool is fine for concurrency: the kernels and RocksDB release the GIL.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures

import grpc

import vecdb
from vecdb._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    points_pb2,
    points_pb2_grpc,
    tenants_pb2,
    tenants_pb2_grpc,
)
from vecdb.server.auth import KeyStore
from vecdb.server.config import ServerConfig
from vecdb.server.interceptors import ServerInterceptor
from vecdb.server.metrics import Metrics
from vecdb.server.services import AdminService, CollectionsService, PointsService, TenantsService

log = logging.getLogger("vecdb.server")

SERVICE_NAMES = tuple(m.DESCRIPTOR.services_by_name[s].full_name for m, s in (
    (collections_pb2, "Collections"), (tenants_pb2, "Tenants"), (points_pb2, "Points"),
    (admin_pb2, "Admin")))


class VecdbServer:
    """A running vecdb gRPC server (``start``/``wait``/``stop``)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.db = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def start(self) -> VecdbServer:
        cfg = self.config
        os.makedirs(cfg.data, exist_ok=True)
        self.keys = None if cfg.no_auth else KeyStore(cfg.data, cfg.api_key)
        self.db = vecdb.open(cfg.data, **cfg.db)
        try:
            self._build()
        except BaseException:
            self.db.close()
            raise
        return self

    def _build(self) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        cfg = self.config
        self.metrics = Metrics(self.db)
        limit = cfg.max_message_mb << 20
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="vecdb-rpc"),
            interceptors=[ServerInterceptor(self.keys, self.metrics, not cfg.no_auth)],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=max(64, cfg.workers * 8))
        collections_pb2_grpc.add_CollectionsServicer_to_server(CollectionsService(self.db),
                                                                self.server)
        tenants_pb2_grpc.add_TenantsServicer_to_server(TenantsService(self.db), self.server)
        points_pb2_grpc.add_PointsServicer_to_server(PointsService(self.db), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.db, self.keys), self.server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        addr = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert:
            with open(cfg.tls_key, "rb") as f:
                key = f.read()
            with open(cfg.tls_cert, "rb") as f:
                cert = f.read()
            self.port = self.server.add_secure_port(
                addr, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = self.server.add_insecure_port(addr)
        if not self.port:
            raise OSError(f"cannot bind {addr}")
        self.server.start()
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            self.metrics_port = self.metrics.serve_http(cfg.metrics_host, cfg.metrics_port)
        log.info("vecdb %s serving %s on %s:%d (auth %s, tls %s)", vecdb.__version__,
                 cfg.data, cfg.host, self.port, "off" if cfg.no_auth else "on",
                 "on" if cfg.tls_cert else "off")

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, finish in-flight RPCs, checkpoint, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down: finishing in-flight requests (grace %.0f s)", grace)
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.metrics.close()
        self.db.close()  # checkpoints dirty collections
        log.info("shutdown complete")

    def wait(self) -> None:
        """Block until ``stop`` (or a SIGTERM/SIGINT handled by ``serve``)."""
        self._stopped.wait()

    def __enter__(self) -> VecdbServer:
        return self.start() if self.db is None else self

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)


def serve(config: ServerConfig) -> None:
    """Run a server in the foreground until SIGTERM/SIGINT, then shut down gracefully."""
    srv = VecdbServer(config).start()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"vecdb serving on {config.host}:{srv.port}", flush=True)
    if srv.metrics_port:
        print(f"metrics on http://{config.metrics_host}:{srv.metrics_port}/metrics", flush=True)
    while not stop.wait(0.5):
        pass
    srv.stop()
