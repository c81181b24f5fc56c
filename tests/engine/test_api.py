"""The embedded API: collections, tenants, upsert/get/search/grant/revoke/delete, errors."""

from __future__ import annotations

import numpy as np
import pytest

import vecdb
from vecdb.errors import (
    AlreadyExists,
    DimensionMismatch,
    FailedPrecondition,
    InvalidArgument,
    NonFiniteValue,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from vecdb.index.flat import exact_topk
from vecdb.kernels import metric_code, prepare


@pytest.fixture
def db(tmp_path):
    d = vecdb.open(tmp_path / "data", background_checkpoints=False)
    yield d
    d.close()


@pytest.fixture
def col(db):
    c = db.create_collection("docs", dim=16, metric="l2")
    c.create_tenant("acme")
    c.create_tenant("beta")
    return c


def rand(n, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def snapshot(col, tenants=("acme", "beta")):
    """Everything a tenant can observe, to check that a failed call changed nothing."""
    q = rand(4, col.dim, seed=99)
    out = {"len": len(col), "tenants": col.list_tenants()}
    for t in tenants:
        if t in out["tenants"]:
            r = col.search(q, k=20, tenant=t)
            out[t] = (r.ids.tolist(), col.tenant_stats(t))
    return out


def test_collections_lifecycle(db):
    assert db.list_collections() == []
    c = db.create_collection("a", dim=4)
    db.create_collection("b", dim=8, metric="cosine", index="flat", params={})
    assert db.list_collections() == ["a", "b"]
    assert db.collection("a") is c
    assert c.info()["dim"] == 4 and db.collection("b").metric == "cosine"
    with pytest.raises(AlreadyExists):
        db.create_collection("a", dim=4)
    db.drop_collection("a")
    assert db.list_collections() == ["b"]
    assert not (db.path and __import__("os").path.exists(f"{db.path}/collections/a"))
    with pytest.raises(NotFound):
        db.collection("a")
    with pytest.raises(NotFound):
        db.drop_collection("a")
    with pytest.raises(FailedPrecondition):
        c.search(rand(1, 4), k=1, tenant="x")  # handle of a dropped collection


@pytest.mark.parametrize("kw, err", [
    ({"dim": 0}, InvalidArgument),
    ({"dim": "8"}, InvalidArgument),
    ({"dim": 8, "metric": "hamming"}, InvalidArgument),
    ({"dim": 8, "index": "btree"}, InvalidArgument),
    ({"dim": 8, "index": "flat", "params": {"M": 16}}, InvalidArgument),  # unknown knob
])
def test_bad_collection_schema(db, kw, err):
    with pytest.raises(err):
        db.create_collection("x", **kw)
    assert db.list_collections() == []


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "x" * 200, 5])
def test_bad_collection_name(db, name):
    with pytest.raises(InvalidArgument):
        db.create_collection(name, dim=4)


def test_unknown_option_and_second_process_lock(tmp_path):
    with pytest.raises(InvalidArgument):
        vecdb.open(tmp_path / "d", no_such_option=1)
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    with pytest.raises(FailedPrecondition):  # flock is per open file description
        vecdb.open(tmp_path / "d")
    d.close()
    vecdb.open(tmp_path / "d").close()


def test_tenants(col):
    assert col.list_tenants() == ["acme", "beta"]
    with pytest.raises(AlreadyExists):
        col.create_tenant("acme")
    for bad in ["", 3, "a\nb"]:
        with pytest.raises(InvalidArgument):
            col.create_tenant(bad)
    with pytest.raises(NotFound):
        col.tenant_stats("nobody")
    with pytest.raises(NotFound):
        col.drop_tenant("nobody")


def test_upsert_search_get_exact(col):
    X = rand(300)
    ids = np.arange(1000, 1300, dtype=np.uint64)
    r = col.upsert(ids[:200], X[:200], tenant="acme", payloads=[{"n": i} for i in range(200)])
    assert r.status == ["created"] * 200 and r.created == 200
    col.upsert(ids[200:], X[200:], tenant="beta")
    Q = rand(5, seed=1)
    res = col.search(Q, k=10, tenant="acme")
    I, D = exact_topk(prepare(Q, 16, "l2"), X[:200], 10, metric_code("l2"))
    assert res.ids.dtype == np.int64 and res.ids.shape == (5, 10)
    np.testing.assert_array_equal(res.ids, ids[:200][I].astype(np.int64))
    np.testing.assert_allclose(res.distances, D, rtol=1e-5)
    g = col.get([1005, 1250, 77, 1001], tenant="acme")  # 1250 is beta's, 77 does not exist
    assert g.ids.tolist() == [1005, 1001]
    np.testing.assert_array_equal(g.vectors, X[[5, 1]])
    assert g.payloads == [{"n": 5}, {"n": 1}]
    assert col.tenant_stats("acme") == {"name": "acme", "id": 0, "owned": 200, "granted": 0,
                                        "visible": 200}


def test_empty_calls(col):
    r = col.upsert([], np.zeros((0, 16), dtype=np.float32), tenant="acme")
    assert len(r) == 0 and r.status == []
    assert col.delete([], tenant="acme") == 0
    assert col.grant([], tenant="beta") == 0
    assert len(col.get([], tenant="acme")) == 0
    assert list(col._store.iterate("oplog")) == []  # nothing was logged
    with pytest.raises(NotFound):
        col.upsert([], np.zeros((0, 16), dtype=np.float32), tenant="nobody")


def test_replace_keeps_slot_and_grants(col):
    X = rand(10)
    col.upsert(range(10), X, tenant="acme", payloads=[{"v": 1}] * 10)
    col.grant([3], tenant="beta")
    Y = rand(2, seed=5)
    r = col.upsert([3, 42], Y, tenant="acme")
    assert r.status == ["updated", "created"]
    assert len(col) == 11
    g = col.get([3], tenant="beta")
    np.testing.assert_array_equal(g.vectors[0], Y[0])
    assert g.payloads == [None]  # replace drops the old payload
    assert col.search(Y[:1], k=1, tenant="beta").ids[0, 0] == 3


def test_grant_revoke_and_isolation(col):
    col.upsert(range(50), rand(50), tenant="acme")
    col.upsert(range(50, 100), rand(50, seed=3), tenant="beta")
    Q = rand(8, seed=7)
    assert set(col.search(Q, k=100, tenant="beta").ids.ravel().tolist()) - {-1} == set(
        range(50, 100))
    assert col.grant([1, 2, 3], tenant="beta") == 3
    assert col.grant([1, 2], tenant="beta") == 0  # idempotent
    assert col.grant([4], tenant="acme") == 0  # owner already sees it
    seen = set(col.search(Q, k=100, tenant="beta").ids.ravel().tolist()) - {-1}
    assert seen == set(range(50, 100)) | {1, 2, 3}
    assert col.tenant_stats("beta")["visible"] == 53
    assert col.revoke([2], tenant="beta") == 1
    assert col.revoke([2], tenant="beta") == 0
    seen = set(col.search(Q, k=100, tenant="beta").ids.ravel().tolist()) - {-1}
    assert seen == set(range(50, 100)) | {1, 3}
    with pytest.raises(InvalidArgument):
        col.revoke([1], tenant="acme")  # the owner cannot be revoked
    with pytest.raises(NotFound):
        col.grant([60], tenant="beta", owner="acme")  # 60 is beta's: invisible to acme
    col.grant([61], tenant="acme")
    with pytest.raises(PermissionDenied):
        col.grant([61], tenant="acme", owner="acme")  # shared with acme, not acme's
    assert col.grant([5], tenant="beta", owner="acme") == 1


def test_ids_enumeration(col):
    col.upsert([5, 1, 9], rand(3), tenant="acme")
    col.upsert([7, 3], rand(2), tenant="beta")
    col.grant([9], tenant="beta")
    assert col.ids("acme").tolist() == [1, 5, 9]
    assert col.ids("beta").tolist() == [3, 7, 9]
    assert col.ids("beta", start=4, limit=1).tolist() == [7]
    with pytest.raises(NotFound):
        col.ids("nobody")


def test_delete_only_by_owner(col):
    col.upsert(range(10), rand(10), tenant="acme")
    col.grant([1], tenant="beta")
    before = snapshot(col)
    with pytest.raises(PermissionDenied):
        col.delete([1], tenant="beta")  # shared with beta, not beta's
    with pytest.raises(NotFound) as e:
        col.delete([2], tenant="beta")  # invisible to beta: reported as not found
    assert "acme" not in str(e.value)
    with pytest.raises(NotFound):
        col.delete([1, 99], tenant="acme")  # all-or-nothing
    assert snapshot(col) == before
    assert col.delete([1, 2], tenant="acme") == 2
    assert len(col) == 8
    assert col.get([1, 2], tenant="acme").ids.tolist() == []
    assert col.tenant_stats("beta")["visible"] == 0
    col.upsert([1], rand(1), tenant="beta")  # a deleted id can be reused by anyone
    assert col.get([1], tenant="beta").ids.tolist() == [1]


def test_drop_tenant(col):
    col.create_tenant("gamma")
    col.upsert(range(20), rand(20), tenant="acme")
    col.upsert(range(20, 30), rand(10, seed=2), tenant="beta")
    col.grant(range(20, 25), tenant="acme")
    col.grant(range(0, 5), tenant="gamma")
    assert col.drop_tenant("beta") == {"deleted": 10, "revoked": 0}
    assert col.list_tenants() == ["acme", "gamma"]
    assert len(col) == 20
    assert col.tenant_stats("acme")["visible"] == 20
    assert col.drop_tenant("acme") == {"deleted": 20, "revoked": 0}
    assert col.tenant_stats("gamma")["visible"] == 0 and len(col) == 0
    col.create_tenant("beta")  # the name can be reused, with a fresh id
    assert col.tenant_stats("beta")["visible"] == 0
    assert (col.search(rand(2), k=5, tenant="beta").ids == -1).all()


def test_drop_tenant_removes_its_grants(col):
    col.upsert(range(10), rand(10), tenant="acme")
    col.grant([1, 2], tenant="beta")
    assert col.drop_tenant("beta") == {"deleted": 0, "revoked": 2}
    col.create_tenant("beta")
    assert (col.search(rand(1), k=10, tenant="beta").ids == -1).all()


@pytest.mark.parametrize("case", ["dim", "nan", "inf", "dup", "count", "tenant", "negid",
                                  "bigid", "floatid", "payload_type", "payload_json",
                                  "payload_len", "owner"])
def test_bad_upsert_changes_nothing(col, case):
    col.upsert(range(5), rand(5), tenant="acme", payloads=[{"a": 1}] * 5)
    col.grant([0], tenant="beta")
    before = snapshot(col)
    X = rand(3)
    ids = [10, 11, 12]
    kw = {"tenant": "acme"}
    err = InvalidArgument
    if case == "dim":
        X, err = rand(3, 15), DimensionMismatch
    elif case == "nan":
        X[1, 3], err = np.nan, NonFiniteValue
    elif case == "inf":
        X[2, 0], err = np.inf, NonFiniteValue
    elif case == "dup":
        ids = [10, 11, 10]
    elif case == "count":
        ids = [10, 11]
    elif case == "tenant":
        kw, err = {"tenant": "nobody"}, NotFound
    elif case == "negid":
        ids = [10, -1, 12]
    elif case == "bigid":
        ids = np.array([10, 2**63, 12], dtype=np.uint64)
    elif case == "floatid":
        ids = [1.5, 2.0, 3.0]
    elif case == "payload_type":
        kw["payloads"] = [{"a": 1}, "x", None]
    elif case == "payload_json":
        kw["payloads"] = [{"a": object()}, None, None]
    elif case == "payload_len":
        kw["payloads"] = [None]
    elif case == "owner":
        col.upsert([50], rand(1), tenant="beta")
        before = snapshot(col)
        ids, kw, err = [10, 50, 12], {"tenant": "acme"}, PermissionDenied
    with pytest.raises(err):
        col.upsert(ids, X, **kw)
    assert snapshot(col) == before


def test_limits(tmp_path):
    d = vecdb.open(tmp_path / "d", max_batch=10, max_payload_bytes=64,
                   background_checkpoints=False)
    c = d.create_collection("c", dim=4)
    c.create_tenant("t")
    with pytest.raises(ResourceExhausted):
        c.upsert(range(11), rand(11, 4), tenant="t")
    with pytest.raises(ResourceExhausted):
        c.upsert([1], rand(1, 4), tenant="t", payloads=[{"x": "y" * 100}])
    assert len(c) == 0
    d.close()


def test_bad_search_and_get(col):
    col.upsert(range(5), rand(5), tenant="acme")
    with pytest.raises(DimensionMismatch):
        col.search(rand(1, 8), k=1, tenant="acme")
    with pytest.raises(NonFiniteValue):
        col.search(np.full((1, 16), np.nan, dtype=np.float32), k=1, tenant="acme")
    with pytest.raises(InvalidArgument):
        col.search(rand(1), k=0, tenant="acme")
    with pytest.raises(NotFound):
        col.search(rand(1), k=1, tenant="nobody")
    with pytest.raises(InvalidArgument):
        col.search(rand(1), k=1, tenant="acme", params={"ef": 10})  # flat has no knobs
    with pytest.raises(InvalidArgument):
        col.search(rand(1), k=1, tenant=None)
    with pytest.raises(NotFound):
        col.get([1], tenant="nobody")
    r = col.search(rand(16)[0], k=8, tenant="acme")  # one vector, k > count: padded
    assert r.ids.shape == (1, 8) and (r.ids[0, 5:] == -1).all()
    assert np.isinf(r.distances[0, 5:]).all()


def test_cosine_and_ip(db):
    for metric in ("cosine", "ip"):
        c = db.create_collection(f"c-{metric}", dim=8, metric=metric)
        c.create_tenant("t")
        X = rand(100, 8)
        c.upsert(range(100), X, tenant="t")
        Q = rand(3, 8, seed=4)
        I, D = exact_topk(prepare(Q, 8, metric), prepare(X, 8, metric), 5, metric_code(metric))
        r = c.search(Q, k=5, tenant="t")
        np.testing.assert_array_equal(r.ids, I)
        np.testing.assert_allclose(r.distances, D, rtol=1e-5, atol=1e-6)


def test_reopen_and_checkpoint(tmp_path):
    X = rand(200)
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.create_collection("c", dim=16)
    c.create_tenant("a")
    c.create_tenant("b")
    c.upsert(range(100), X[:100], tenant="a", payloads=[{"i": i} for i in range(100)])
    assert c.checkpoint() == 1
    c.upsert(range(100, 200), X[100:], tenant="b")
    c.grant([5], tenant="b")
    c.delete([7], tenant="a")
    before = snapshot(c, ("a", "b"))
    d.close()
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.collection("c")
    assert c.recovery["source"] == "checkpoint" and c.recovery["replayed"] == 0  # close ckpt'd
    assert snapshot(c, ("a", "b")) == before
    assert c.get([3], tenant="a").payloads == [{"i": 3}]
    c.upsert([500], rand(1), tenant="a")
    d.close()
    # without the close checkpoint: replay the oplog after the last checkpoint
    d = vecdb.open(tmp_path / "d", background_checkpoints=False, checkpoint_on_close=False)
    c = d.collection("c")
    c.upsert([501], rand(1, seed=8), tenant="b")
    before = snapshot(c, ("a", "b"))
    d.close()
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.collection("c")
    assert c.recovery["replayed"] == 1
    assert snapshot(c, ("a", "b")) == before
    d.close()


def test_reopen_large_from_checkpoint(tmp_path):
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.create_collection("c", dim=4)
    c.create_tenant("a")
    c.upsert(range(5000), rand(5000, 4), tenant="a")
    c.delete(range(0, 5000, 3), tenant="a")
    before = c.search(rand(3, 4), k=7, tenant="a").ids.tolist()
    d.close()
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.collection("c")
    assert c.recovery["source"] == "checkpoint"
    assert len(c) == 5000 - 1667
    assert c.search(rand(3, 4), k=7, tenant="a").ids.tolist() == before
    c.upsert([7000, 7001], rand(2, 4), tenant="a")  # freed slots are reused
    assert c._state.high == 5000
    d.close()


def test_rebuild_from_store_when_checkpoint_is_lost(tmp_path):
    import shutil

    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    c = d.create_collection("c", dim=16)
    c.create_tenant("a")
    c.create_tenant("b")
    c.upsert(range(100), rand(100), tenant="a")
    c.grant([1, 2], tenant="b")
    c.checkpoint()
    c.revoke([2], tenant="b")
    c.upsert([1000], rand(1, seed=2), tenant="b")
    before = snapshot(c, ("a", "b"))
    path = c.path
    c.close(checkpoint=False)
    d.close()
    for p in __import__("os").listdir(path):
        if p.startswith("ckpt-"):
            shutil.rmtree(f"{path}/{p}")
    d = vecdb.open(tmp_path / "d", background_checkpoints=False)
    with pytest.warns(RuntimeWarning, match="rebuilding from the store"):
        c = d.collection("c")
    assert c.recovery["source"] == "store"
    assert snapshot(c, ("a", "b")) == before
    d.close()


def test_background_checkpoint(tmp_path):
    import time

    d = vecdb.open(tmp_path / "d", checkpoint_every_ops=50, checkpoint_every_s=0.2)
    c = d.create_collection("c", dim=4)
    c.create_tenant("t")
    c.upsert(range(100), rand(100, 4), tenant="t")
    deadline = time.time() + 10
    while c._dirty_rows and time.time() < deadline:
        time.sleep(0.05)
    assert c._dirty_rows == 0
    assert list(c._store.iterate("oplog")) == []  # truncated behind the checkpoint
    d.close()
