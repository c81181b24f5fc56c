"""Congruence: the same scenario against the embedded engine and through the server must give
the same results (ids, distances, payloads, statuses, counts, errors)."""

from __future__ import annotations

import numpy as np
import pytest

import vecdb
from vecdb import errors

D = 12


def _scenario(db, name: str, metric: str, index: str, seed: int) -> list:
    """Run a fixed sequence of operations on ``db`` (embedded Database or Client); returns a
    trace of every observable result."""
    rng = np.random.default_rng(seed)
    trace: list = []
    col = db.create_collection(name, dim=D, metric=metric, index=index)
    for t in ("acme", "beta", "gamma"):
        col.create_tenant(t)
    X = rng.standard_normal((400, D)).astype(np.float32)
    r = col.upsert(np.arange(300), X[:300], tenant="acme",
                   payloads=[{"n": i} if i % 3 else None for i in range(300)])
    trace.append(("upsert", r.status[:5], r.created))
    r = col.upsert(np.arange(290, 400), X[290:400], tenant="acme")
    trace.append(("upsert2", r.created, r.updated))
    col.upsert(np.arange(1000, 1100), X[:100] * 0.5, tenant="beta")
    trace.append(("grant", col.grant(np.arange(0, 50), tenant="beta", owner="acme")))
    trace.append(("grant-again", col.grant(np.arange(40, 60), tenant="beta", owner="acme")))
    trace.append(("revoke", col.revoke(np.arange(0, 10), tenant="beta", owner="acme")))
    trace.append(("delete", col.delete(np.arange(100, 150), tenant="acme")))
    Q = rng.standard_normal((7, D)).astype(np.float32)
    for t in ("acme", "beta", "gamma"):
        s = col.search(Q, k=15, tenant=t)
        trace.append(("search", t, s.ids.tolist(), np.round(s.distances, 4).tolist()))
        trace.append(("stats", col.tenant_stats(t)))
    g = col.get([5, 120, 299, 1000, 1050, 77777], tenant="beta")
    trace.append(("get", g.ids.tolist(), g.vectors.round(5).tolist(), g.payloads))
    g = col.get([1, 2, 3, 299], tenant="acme")
    trace.append(("get", g.ids.tolist(), g.payloads))
    for bad in (lambda: col.upsert([1], X[:1, :5], tenant="acme"),
                lambda: col.delete([1000], tenant="acme"),
                lambda: col.delete([20], tenant="beta"),
                lambda: col.search(Q, k=3, tenant="zeta"),
                lambda: col.create_tenant("beta"),
                lambda: col.revoke([1], tenant="acme", owner="acme")):
        try:
            bad()
            trace.append(("no error",))
        except errors.VecdbError as e:
            trace.append(("error", e.grpc_code))
    trace.append(("drop", col.drop_tenant("beta")))
    s = col.search(Q, k=5, tenant="acme")
    trace.append(("search-after-drop", s.ids.tolist()))
    trace.append(("tenants", col.list_tenants()))
    return trace


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_embedded_and_remote_agree(tmp_path, admin, metric):
    name = f"cg-{metric}"
    with vecdb.open(str(tmp_path / "emb")) as db:
        local = _scenario(db, name, metric, "flat", 11)
    remote = _scenario(admin, name, metric, "flat", 11)
    assert len(local) == len(remote)
    for a, b in zip(local, remote, strict=True):
        assert a == b
    assert ("error", "INVALID_ARGUMENT") in local and ("error", "NOT_FOUND") in local
