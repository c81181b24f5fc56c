"""FlatIndex: exact results, tenant filtering, deletes, persistence, and the contract's errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vecdb.errors import DimensionMismatch, InvalidArgument, NonFiniteValue
from vecdb.index import FlatIndex, Index, index_class, normalize_acl
from vecdb.index.base import SearchParams


def brute(X: dict[int, np.ndarray], q: np.ndarray, k: int, metric: str, allowed=None):
    """Plain-Python model: exact top-k slots among ``allowed`` (ties broken by slot)."""
    cand = sorted(s for s in X if allowed is None or s in allowed)
    if metric == "l2":
        d = [float(((X[s].astype(np.float64) - q) ** 2).sum()) for s in cand]
    else:
        d = [-float(X[s].astype(np.float64) @ q) for s in cand]
    order = sorted(range(len(cand)), key=lambda i: (d[i], cand[i]))[:k]
    return [cand[i] for i in order]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_on_sift(sift5k, metric):
    idx = FlatIndex(128, metric)
    idx.add(sift5k["base"])
    found, dist = idx.search(sift5k["queries"], 10)
    if metric == "l2":
        assert (found == sift5k["gt"][:, :10]).mean() > 0.999
        np.testing.assert_allclose(dist, sift5k["gt_dist"][:, :10], rtol=1e-4)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_tenant_filter_on_glove_wordnet(glove_wordnet):
    g = glove_wordnet
    idx = FlatIndex(50, "ip")
    idx.add(g["base"], acl=(g["acl_indptr"], g["acl_indices"]))
    sel = np.arange(0, 1000, 25)
    for i in sel:
        found, _ = idx.search(g["queries"][i], 10, tenant=int(g["query_tenant"][i]))
        gt = g["gt"][i, :10]
        assert set(found[0][found[0] >= 0]) == set(gt[gt >= 0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),  # n
    st.integers(1, 6),  # dim
    st.integers(1, 12),  # k
    st.sampled_from(["l2", "ip"]),
    st.data(),
)
def test_property_matches_model(n, dim, k, metric, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    X = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)  # small ints: many exact ties
    acl = [sorted(set(rng.integers(0, 4, size=rng.integers(0, 3)).tolist())) for _ in range(n)]
    idx = FlatIndex(dim, metric)
    slots = idx.add(X, acl=acl)
    model = {int(s): X[i] for i, s in enumerate(slots)}
    access = {int(s): set(acl[i]) for i, s in enumerate(slots)}
    # random deletes, grants and revokes
    for _ in range(data.draw(st.integers(0, 10))):
        op = data.draw(st.sampled_from(["del", "grant", "revoke"]))
        if not model:
            break
        s = data.draw(st.sampled_from(sorted(model)))
        t = data.draw(st.integers(0, 3))
        if op == "del":
            idx.remove([s])
            del model[s], access[s]
        elif op == "grant":
            idx.grant(s, t)
            access[s].add(t)
        else:
            idx.revoke(s, t)
            access[s].discard(t)
    q = rng.integers(-3, 4, size=dim).astype(np.float32)
    assert len(idx) == len(model)
    for tenant in [None, 0, 1, 2, 3]:
        allowed = None if tenant is None else {s for s, a in access.items() if tenant in a}
        found, dist = idx.search(q, k, tenant=tenant)
        want = brute(model, q.astype(np.float64), k, metric, allowed)
        assert found[0][: len(want)].tolist() == want
        assert (found[0][len(want) :] == -1).all() and np.isinf(dist[0][len(want) :]).all()


def test_remove_and_reuse_slot():
    idx = FlatIndex(2, "l2")
    idx.add([[0, 0], [1, 1], [5, 5]], acl=[[0], [0], [1]])
    idx.remove([1])
    assert len(idx) == 2
    assert idx.search([1, 1], 3)[0].tolist() == [[0, 2, -1]]
    assert idx.search([1, 1], 3, tenant=0)[0].tolist() == [[0, -1, -1]]
    idx.add([[1.1, 1.1]], slots=[1], acl=[[1]])  # reuse
    assert idx.search([1, 1], 1, tenant=1)[0].tolist() == [[1]]
    idx.add([[9, 9]], slots=[1], acl=[[1]])  # replace
    assert len(idx) == 3
    assert idx.search([9, 9], 1)[0].tolist() == [[1]]


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    idx = FlatIndex(16, "cosine")
    idx.add(rng.standard_normal((300, 16)), acl=[[i % 5] for i in range(300)])
    idx.remove(np.arange(0, 300, 7))
    idx.grant(3, 4)
    Q = rng.standard_normal((20, 16))
    idx.save(tmp_path / "f.idx")
    back = Index.load(tmp_path / "f.idx")
    assert isinstance(back, FlatIndex) and len(back) == len(idx)
    for t in [None, 0, 4]:
        a, b = idx.search(Q, 10, tenant=t), back.search(Q, 10, tenant=t)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_save_writes_np_savez_members(tmp_path):
    """``Index.save`` (through ``vecdb.storage.npz.write_npz``) writes the archive ``np.savez``
    wrote before: the same members in the same order, byte for byte."""
    import json
    import zipfile

    rng = np.random.default_rng(1)
    idx = FlatIndex(8)
    idx.add(rng.standard_normal((100, 8)), acl=[[i % 3] for i in range(100)])
    idx.remove(np.arange(0, 100, 9))
    idx.save(tmp_path / "f.idx")
    meta, arrays = idx._state()
    meta = {"kind": idx.kind, "dim": idx.dim, "metric": idx.metric, **meta}
    with open(tmp_path / "ref.npz", "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    with zipfile.ZipFile(tmp_path / "f.idx") as a, zipfile.ZipFile(tmp_path / "ref.npz") as b:
        assert a.namelist() == b.namelist()
        for name in b.namelist():
            assert a.read(name) == b.read(name), name

def test_bad_input_changes_nothing():
    idx = FlatIndex(4, "l2")
    idx.add(np.ones((3, 4)))
    with pytest.raises(DimensionMismatch):
        idx.add(np.ones((2, 5)))
    bad = np.ones((2, 4))
    bad[1, 2] = np.inf
    with pytest.raises(NonFiniteValue):
        idx.add(bad)
    with pytest.raises(InvalidArgument):
        idx.add(np.ones((2, 4)), slots=[7, 7])
    with pytest.raises(InvalidArgument):
        idx.add(np.ones((2, 4)), acl=[[0]])
    with pytest.raises(InvalidArgument):
        idx.search(np.ones(4), 0)
    with pytest.raises(InvalidArgument):
        idx.search(np.ones(4), 3, params={"ef": 10})
    with pytest.raises(InvalidArgument):
        idx.grant(99, 1)
    with pytest.raises(InvalidArgument):
        FlatIndex(0)
    with pytest.raises(InvalidArgument):
        index_class("lsh")
    assert len(idx) == 3


def test_normalize_acl_forms():
    ip, ix = normalize_acl([[2, 1, 2], [], 5], 3)
    assert ip.tolist() == [0, 2, 2, 3] and ix.tolist() == [1, 2, 5]
    ip2, ix2 = normalize_acl((ip, ix), 3)
    assert ip2.tolist() == ip.tolist() and ix2.tolist() == ix.tolist()
    with pytest.raises(InvalidArgument):
        normalize_acl([[-1]], 1)


def test_search_params_reject_unknown():
    with pytest.raises(InvalidArgument, match="unknown search parameter"):
        SearchParams.from_dict({"nprobe": 3})
