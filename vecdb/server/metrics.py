"""Prometheus metrics (optional: without ``prometheus-client`` every call here is a no-op).

- ``vecdb_requests_total{method, code}``: finished RPCs by status code.
- ``vecdb_request_seconds{method}``: latency histogram.
- ``vecdb_vectors{collection, tenant}``: vectors each tenant owns, computed at scrape time.
"""

from __future__ import annotations

import logging

log = logging.getLogger("vecdb.server")

try:  # optional dependency
    import prometheus_client as _prom
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # pragma: no cover - exercised only without the package
    _prom = None

_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """Request counters and latency histograms in a private registry (one per server)."""

    def __init__(self, db=None) -> None:
        self.enabled = _prom is not None
        if not self.enabled:
            return
        self.registry = _prom.CollectorRegistry()
        self._children: dict[tuple[str, str], tuple] = {}
        self.requests = _prom.Counter("vecdb_requests", "Finished RPCs", ["method", "code"],
                                      registry=self.registry)
        self.latency = _prom.Histogram("vecdb_request_seconds", "RPC latency", ["method"],
                                       buckets=_BUCKETS, registry=self.registry)
        if db is not None:
            self.registry.register(_VectorsCollector(db))

    def observe(self, method: str, code: str, seconds: float) -> None:
        if self.enabled:
            c = self._children.get((method, code))
            if c is None:
                c = self._children[(method, code)] = (self.requests.labels(method, code),
                                                      self.latency.labels(method))
            c[0].inc()
            c[1].observe(seconds)

    def serve_http(self, host: str, port: int):
        """Start the ``/metrics`` HTTP endpoint; returns the bound port (None if disabled)."""
        if not self.enabled:
            log.warning("prometheus-client is not installed: no metrics endpoint")
            return None
        srv, _thread = _prom.start_http_server(port, addr=host, registry=self.registry)
        self._http = srv
        return srv.server_port

    def close(self) -> None:
        srv = getattr(self, "_http", None)
        if srv is not None:
            srv.shutdown()


class _VectorsCollector:
    """Vectors owned per (collection, tenant), read from the engine at scrape time."""

    def __init__(self, db) -> None:
        self.db = db

    def collect(self):
        g = GaugeMetricFamily("vecdb_vectors", "Vectors owned per tenant",
                              labels=["collection", "tenant"])
        try:
            for name in self.db.list_collections():
                col = self.db.collection(name)
                for t in col.list_tenants():
                    g.add_metric([name, t], col.tenant_stats(t)["owned"])
        except Exception as e:  # a scrape never breaks the server (e.g. during shutdown)
            log.debug("metrics scrape: %r", e)
        yield g
