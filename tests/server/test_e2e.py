"""End to end against a real ``vecdb serve`` process: every RPC, every error code, health,
reflection, metrics and graceful shutdown."""

from __future__ import annotations

import socket
import urllib.request

import grpc
import numpy as np
import pytest

import vecdb
from vecdb import errors
from vecdb.server.testing import ServerProcess

D = 16
rng = np.random.default_rng(7)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a small message limit so RESOURCE_EXHAUSTED is cheap to provoke
    with ServerProcess(str(tmp_path_factory.mktemp("e2e") / "data"),
                       extra_args=("--max-message-mb", "2")) as srv:
        yield srv


@pytest.fixture(scope="module")
def col(admin):
    c = admin.create_collection("docs", dim=D, metric="l2")
    c.create_tenant("acme")
    c.create_tenant("beta")
    return c


def test_collections_rpcs(admin, col):
    assert "docs" in admin.list_collections()
    info = admin.collection("docs").info()
    assert (info["dim"], info["metric"], info["index"]) == (D, "l2", "flat")
    tmp = admin.create_collection("tmp", dim=3, metric="cosine")
    assert tmp.metric == "cosine" and tmp.dim == 3
    assert admin.has_collection("tmp")
    admin.drop_collection("tmp")
    assert "tmp" not in admin.list_collections()


def test_tenants_rpcs(admin, col):
    assert col.create_tenant("gamma") >= 0
    assert {"acme", "beta", "gamma"} <= set(col.list_tenants())
    col.upsert([10_000], rng.random((1, D)), tenant="gamma")
    st = col.tenant_stats("gamma")
    assert (st["owned"], st["visible"]) == (1, 1)
    assert col.drop_tenant("gamma") == {"deleted": 1, "revoked": 0}
    assert "gamma" not in col.list_tenants()


def test_points_rpcs(admin, col):
    X = rng.random((200, D), dtype=np.float32)
    ids = np.arange(200, dtype=np.uint64)
    r = col.upsert(ids, X, tenant="acme", payloads=[{"i": int(i)} for i in ids])
    assert r.created == 200 and len(r) == 200
    assert col.upsert(ids[:2], X[:2], tenant="acme").status == ["updated", "updated"]
    res = col.search(X[:5], k=3, tenant="acme")
    assert res.ids.dtype == np.int64 and res.ids.shape == (5, 3)
    np.testing.assert_array_equal(res.ids[:, 0], np.arange(5))
    exact = ((X[:5, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(res.distances, np.sort(exact, axis=1)[:, :3], rtol=1e-4,
                               atol=1e-5)
    g = col.get([3, 1, 99_999], tenant="acme")
    # id 1 was re-upserted without a payload: upsert replaces vector and payload
    assert g.ids.tolist() == [3, 1] and g.payloads == [{"i": 3}, None]
    np.testing.assert_array_equal(g.vectors, X[[3, 1]])
    # sharing without copying: beta sees nothing until granted
    assert (col.search(X[:1], k=5, tenant="beta").ids == -1).all()
    assert col.grant([0, 1], tenant="beta", owner="acme") == 2
    assert sorted(col.search(X[:1], k=5, tenant="beta").ids[0][:2].tolist()) == [0, 1]
    assert col.revoke([1], tenant="beta", owner="acme") == 1
    assert col.search(X[:1], k=5, tenant="beta").ids[0].tolist() == [0, -1, -1, -1, -1]
    batch = admin.search_batch([
        {"collection": "docs", "tenant": "acme", "queries": X[:2], "k": 2},
        {"collection": "docs", "tenant": "beta", "queries": X[:1], "k": 2}])
    assert batch[0].ids[:, 0].tolist() == [0, 1] and batch[1].ids[0].tolist() == [0, -1]
    pages = list(col.scroll("acme", page_size=64, with_vectors=True, with_payloads=True))
    assert [len(p) for p in pages] == [64, 64, 64, 8]
    allids = np.concatenate([p.ids for p in pages])
    np.testing.assert_array_equal(allids, ids)
    np.testing.assert_array_equal(np.concatenate([p.vectors for p in pages]), X)
    rest = list(col.scroll("acme", start_after=195))
    assert np.concatenate([p.ids for p in rest]).tolist() == [196, 197, 198, 199]
    assert col.export("beta").ids.tolist() == [0]
    n = col.ingest(((np.arange(s, s + 50) + 1000, rng.random((50, D))) for s in range(0, 500, 50)),
                   tenant="acme", window=3)
    assert n == 500 and col.tenant_stats("acme")["owned"] == 700
    assert col.delete(np.arange(1000, 1500), tenant="acme") == 500
    assert col.count() == 200
    admin.checkpoint("docs")
    admin.checkpoint()


def test_admin_rpcs(admin, server):
    key = admin.create_api_key(tenants=["acme"], role="read", description="ro")
    keys = admin.list_api_keys()
    mine = [k for k in keys if k["description"] == "ro"]
    assert len(mine) == 1 and mine[0]["tenants"] == ["acme"] and key not in str(keys)
    with vecdb.Client(server.address, api_key=key) as c:
        assert c.whoami() == {"key_id": mine[0]["key_id"], "role": "read", "tenants": ["acme"]}
    admin.revoke_api_key(mine[0]["key_id"])
    with vecdb.Client(server.address, api_key=key) as c, pytest.raises(errors.Unauthenticated):
        c.whoami()


def test_error_codes(admin, col, server):
    X = rng.random((2, D), dtype=np.float32)
    # INVALID_ARGUMENT: wrong dim, NaN, duplicate ids, bad k, bad params
    with pytest.raises(errors.InvalidArgument, match="dimension"):
        col.upsert([1, 2], rng.random((2, D + 1)), tenant="acme")
    bad = X.copy()
    bad[1, 3] = np.nan
    with pytest.raises(errors.InvalidArgument, match="NaN"):
        col.upsert([5000, 5001], bad, tenant="acme")
    with pytest.raises(errors.InvalidArgument, match="duplicate"):
        col.upsert([7, 7], X, tenant="acme")
    with pytest.raises(errors.InvalidArgument):
        col.search(X, k=0, tenant="acme")
    with pytest.raises(errors.InvalidArgument):
        col.search(X, k=3, tenant="acme", params={"no_such_knob": 1})
    with pytest.raises(errors.InvalidArgument):
        admin.create_collection("bad name!", dim=4)
    assert col.get([5000, 5001], tenant="acme").ids.size == 0  # nothing written
    # NOT_FOUND
    with pytest.raises(errors.NotFound):
        admin.collection("nope")
    with pytest.raises(errors.NotFound):
        col.search(X, k=1, tenant="nobody")
    with pytest.raises(errors.NotFound):
        col.delete([123_456], tenant="acme")
    # ALREADY_EXISTS
    with pytest.raises(errors.AlreadyExists):
        admin.create_collection("docs", dim=D)
    with pytest.raises(errors.AlreadyExists):
        col.create_tenant("acme")
    # UNAUTHENTICATED: no key, wrong key
    for key in (None, "vdb_0000_wrong", server.api_key + "x"):
        with vecdb.Client(server.address, api_key=key) as c, \
                pytest.raises(errors.Unauthenticated):
            c.list_collections()
    # PERMISSION_DENIED: a tenant key reaching another tenant; read-only writing; admin RPCs
    kb = admin.create_api_key(tenants=["beta"], role="read_write")
    kr = admin.create_api_key(tenants=["acme"], role="read")
    with vecdb.Client(server.address, api_key=kb) as c:
        cb = c.collection("docs")
        assert cb.count() == 0  # tenant keys do not see collection-wide counts
        with pytest.raises(errors.PermissionDenied):
            cb.search(X, k=1, tenant="acme")
        with pytest.raises(errors.PermissionDenied):
            cb.upsert([9], X[:1], tenant="acme")
        with pytest.raises(errors.PermissionDenied):
            cb.get([0], tenant="acme")
        with pytest.raises(errors.PermissionDenied):
            cb.grant([0], tenant="beta", owner="acme")
        with pytest.raises(errors.PermissionDenied):
            cb.grant([0], tenant="beta")  # no owner = admin only
        with pytest.raises(errors.PermissionDenied):
            c.create_collection("mine", dim=2)
        with pytest.raises(errors.PermissionDenied):
            c.create_api_key(tenants=["acme"])
        with pytest.raises(errors.PermissionDenied):
            cb.drop_tenant("beta")
        assert cb.list_tenants() == ["beta"]
        with pytest.raises(errors.PermissionDenied):  # beta can see id 0 but does not own it
            cb.delete([0], tenant="beta")
    with vecdb.Client(server.address, api_key=kr) as c:
        with pytest.raises(errors.PermissionDenied, match="read-only"):
            c.collection("docs").upsert([9], X[:1], tenant="acme")
        assert c.collection("docs").search(X, k=1, tenant="acme").ids.shape == (2, 1)
    # RESOURCE_EXHAUSTED: a message over the server's 2 MiB limit
    with vecdb.Client(server.address, api_key=server.api_key,
                      max_message_bytes=64 << 20) as c:
        big = rng.random((40_000, D), dtype=np.float32)  # 2.5 MiB
        with pytest.raises(errors.ResourceExhausted):
            c.collection("docs").upsert(np.arange(40_000) + 10**6, big, tenant="acme")
    assert col.get([10**6], tenant="acme").ids.size == 0
    # the default client splits the same upsert into messages under the limit
    with vecdb.Client(server.address, api_key=server.api_key, max_message_bytes=1 << 20) as c:
        r = c.collection("docs").upsert(np.arange(40_000) + 10**6, big, tenant="acme")
        assert r.created == 40_000
        assert c.collection("docs").delete(np.arange(40_000) + 10**6, tenant="acme") == 40_000


def test_stream_error_ends_stream_keeps_acked(col):
    X = rng.random((10, D), dtype=np.float32)
    acked = []

    def batches():
        yield np.arange(10) + 20_000, X
        yield np.arange(10) + 20_010, rng.random((10, D + 2))  # wrong dim

    with pytest.raises(errors.InvalidArgument, match="batch 1"):
        col.ingest(batches(), tenant="acme", window=1, on_ack=acked.append)
    assert [a.tolist() for a in acked] == [list(range(20_000, 20_010))]
    assert col.get(np.arange(20_000, 20_020), tenant="acme").ids.tolist() == \
        list(range(20_000, 20_010))
    col.delete(np.arange(20_000, 20_010), tenant="acme")


def test_deadline_exceeded(col):
    from vecdb.client import RemoteError

    codes = set()
    for _ in range(20):  # a 1 us deadline; a rare lucky call may still finish in time
        try:
            col.search(rng.random((64, D)), k=50, tenant="acme", timeout=1e-6)
        except RemoteError as e:
            codes.add(e.code)
            break
    assert codes == {"DEADLINE_EXCEEDED"}


def test_health_and_reflection(server, admin):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    assert admin.health() == "SERVING"
    assert admin.health("vecdb.v1.Points") == "SERVING"
    with grpc.insecure_channel(server.address) as ch:  # no key needed for either
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"vecdb.v1.Collections", "vecdb.v1.Tenants", "vecdb.v1.Points",
                "vecdb.v1.Admin", "grpc.health.v1.Health"} <= services
        fd = db.FindFileContainingSymbol("vecdb.v1.Points")
        assert fd.name == "vecdb/v1/points.proto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_graceful_shutdown_and_metrics(tmp_path):
    mport = _free_port()
    srv = ServerProcess(str(tmp_path / "data"), extra_args=("--metrics-port", str(mport)))
    with srv:
        with vecdb.Client(srv.address, api_key=srv.api_key) as c:
            col = c.create_collection("g", dim=4)
            col.create_tenant("t")
            X = rng.random((3000, 4), dtype=np.float32)
            col.ingest(((np.arange(s, s + 500), X[s: s + 500]) for s in range(0, 3000, 500)),
                       tenant="t")
            col.search(X[:2], k=2, tenant="t")
            text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) \
                .read().decode()
            assert 'vecdb_requests_total{code="OK",method="Points/Search"}' in text
            assert 'vecdb_vectors{collection="g",tenant="t"} 3000.0' in text
            assert "vecdb_request_seconds_bucket" in text
        assert srv.terminate() == 0  # SIGTERM -> finish, checkpoint, close, exit 0
    log = open(srv.log_path).read()
    assert "shutdown complete" in log
    assert any(p.name.startswith("ckpt-") for p in (tmp_path / "data" / "collections" / "g")
               .iterdir())
    with vecdb.open(str(tmp_path / "data")) as db:  # lock released, data intact
        g = db.collection("g")
        assert len(g) == 3000
        np.testing.assert_array_equal(g.get([7], tenant="t").vectors, X[[7]])


def test_auth_required_unless_explicitly_disabled(tmp_path):
    from vecdb.server import ServerConfig

    with pytest.raises(errors.InvalidArgument, match="no-auth"):
        ServerConfig.load(None, env={}, data=str(tmp_path / "x"))
    with ServerProcess(str(tmp_path / "open"), extra_args=("--no-auth",)) as srv, \
            vecdb.Client(srv.address) as c:
        assert c.whoami()["role"] == "admin"


def test_tls(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    srv = ServerProcess(str(tmp_path / "data"),
                        extra_args=("--tls-cert", str(crt), "--tls-key", str(key)))
    with srv:
        with vecdb.Client(srv.address, api_key=srv.api_key, tls=str(crt)) as c:
            assert c.health() == "SERVING" and c.whoami()["role"] == "admin"
        with vecdb.Client(srv.address, api_key=srv.api_key, retry_s=0, timeout=3) as c, \
                pytest.raises(errors.VecdbError):  # plaintext against a TLS port fails
            c.whoami()


def test_sigterm_during_stream_keeps_every_ack(tmp_path):
    import threading
    import time

    srv = ServerProcess(str(tmp_path / "data"), extra_args=("--grace", "1"))
    X = rng.random((200 * 100, 4), dtype=np.float32)
    acked: list[np.ndarray] = []
    out: dict = {}
    with srv:
        c = vecdb.Client(srv.address, api_key=srv.api_key, retry_s=0.5)
        col = c.create_collection("s", dim=4)
        col.create_tenant("t")

        def batches():
            for lo in range(0, len(X), 100):
                time.sleep(0.02)  # ~4 s of stream: far longer than the 1 s grace period
                yield np.arange(lo, lo + 100), X[lo: lo + 100]

        def run():
            try:
                col.ingest(batches(), tenant="t", window=2, on_ack=acked.append)
            except errors.VecdbError as e:
                out["error"] = e

        th = threading.Thread(target=run)
        th.start()
        while sum(map(len, acked)) < 2000 and th.is_alive():
            time.sleep(0.005)
        assert srv.terminate() == 0  # in-flight stream: finished or cut at the grace period
        th.join(30)
        c.close()
    assert "error" in out  # the stream could not complete: the server went away
    done = np.concatenate(acked)
    assert 2000 <= len(done) < len(X)
    with vecdb.open(str(tmp_path / "data")) as db:
        g = db.collection("s").get(done, tenant="t")
        assert len(g) == len(done)  # every acknowledged batch is there
        assert len(db.collection("s")) % 100 == 0  # and no half batch
