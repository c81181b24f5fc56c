"""CuratorIndex: access safety against a brute-force model (Hypothesis state machine), shortlist
split/merge and Bloom invariants after random operations, recall against filtered exact ground
truth, persistence, retraining, and the contract's errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vecdb.errors import DimensionMismatch, InvalidArgument, NonFiniteValue
from vecdb.index import CuratorIndex, CuratorSearchParams, FlatIndex, Index, index_class

EXACT = CuratorSearchParams(gamma1=1e6, gamma2=1e6)  # budget above any tenant: exact scan


def check_invariants(idx: CuratorIndex) -> None:
    """The structural invariants of native/_curator_impl.c, checked from the outside."""
    core, tree = idx.core, idx.tree
    parent, cptr = tree["parent"], tree["child_ptr"]
    max_sl = idx.params["max_sl_size"]
    nodes, tenants, indptr, ids = core.lists()

    def path(slot: int) -> list[int]:
        n, out = core.slot_leaf(slot), []
        while n >= 0:
            out.append(int(n))
            n = parent[n]
        return out

    seen: dict[tuple[int, int], int] = {}
    where: dict[int, set[int]] = {}
    for i, (node, t) in enumerate(zip(nodes.tolist(), tenants.tolist(), strict=True)):
        members = ids[indptr[i] : indptr[i + 1]].tolist()
        assert members, "empty shortlist kept"
        if cptr[node + 1] > cptr[node]:  # internal node: bounded
            assert len(members) <= max_sl, (node, t, len(members))
        # Bloom filters: no false negatives at the node and every ancestor
        a = node
        while a >= 0:
            assert core.bloom_has(a, t), (a, t)
            a = parent[a]
        where.setdefault(t, set()).add(node)
        for s in members:
            assert node in path(s), "entry off its slot's path"
            assert (s, t) not in seen, "pair in two shortlists"
            seen[(s, t)] = node
    # antichain: no shortlist of a tenant above another of the same tenant
    for t, ns in where.items():
        for n in ns:
            a = parent[n]
            while a >= 0:
                assert a not in ns, (t, n, a)
                a = parent[a]
    # every granted pair is in exactly one shortlist, and nothing else is
    granted = {(int(s), int(t)) for s in core.live_slots() for t in core.slot_tenants(int(s))}
    assert granted == set(seen)


def brute(X: dict[int, np.ndarray], q: np.ndarray, k: int, allowed) -> list[float]:
    cand = [s for s in X if allowed is None or s in allowed]
    d = sorted(float(((X[s].astype(np.float64) - q) ** 2).sum()) for s in cand)
    return d[:k]


class CuratorModel(RuleBasedStateMachine):
    """Random insert/grant/revoke/delete/search sequences against a plain-Python model.

    Tiny ``max_sl_size``/``leaf_size`` and an early ``train_size`` force many splits, merges and a
    retrain inside short sequences.
    """

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed):
        self.rng = np.random.default_rng(seed)
        self.dim = 4
        self.idx = CuratorIndex(self.dim, "l2", nlist=3, fanout=2, leaf_size=3, max_sl_size=3,
                                train_size=24, retrain_factor=3.0, bloom_bits=64, niter=4,
                                background_retrain=False, seed=seed)
        self.vecs: dict[int, np.ndarray] = {}
        self.acl: dict[int, set[int]] = {}
        self.next = 0

    @rule(n=st.integers(1, 12), tenants=st.lists(st.integers(0, 5), min_size=0, max_size=3))
    def insert(self, n, tenants):
        X = self.rng.standard_normal((n, self.dim)).astype(np.float32)
        acl = [sorted(set(tenants) | {int(self.rng.integers(0, 6))}) for _ in range(n)]
        slots = self.idx.add(X, acl=acl)
        for s, x, a in zip(slots.tolist(), X, acl, strict=True):
            self.vecs[s] = x
            self.acl[s] = set(a)

    @rule(i=st.integers(0, 10**6), t=st.integers(0, 5))
    def grant(self, i, t):
        if not self.vecs:
            return
        s = sorted(self.vecs)[i % len(self.vecs)]
        self.idx.grant(s, t)
        self.acl[s].add(t)

    @rule(i=st.integers(0, 10**6), j=st.integers(0, 10))
    def revoke(self, i, j):
        if not self.vecs:
            return
        s = sorted(self.vecs)[i % len(self.vecs)]
        ts = sorted(self.acl[s]) or [j % 6]
        t = ts[j % len(ts)]
        self.idx.revoke(s, t)
        self.acl[s].discard(t)

    @rule(i=st.integers(0, 10**6))
    def delete(self, i):
        if not self.vecs:
            return
        s = sorted(self.vecs)[i % len(self.vecs)]
        self.idx.remove([s])
        del self.vecs[s], self.acl[s]

    @rule(t=st.integers(0, 6), k=st.integers(1, 8), exact=st.booleans())
    def search(self, t, k, exact):
        q = self.rng.standard_normal(self.dim).astype(np.float32)
        found, dist = self.idx.search(q, k, tenant=t, params=EXACT if exact else None)
        got = [s for s in found[0].tolist() if s >= 0]
        allowed = {s for s, a in self.acl.items() if t in a}
        assert set(got) <= allowed, "returned a vector the tenant may not see"
        assert len(set(got)) == len(got)
        if exact:
            want = brute(self.vecs, q, k, allowed)
            assert len(got) == len(want)
            np.testing.assert_allclose(dist[0][: len(want)], want, rtol=1e-4, atol=1e-4)

    @rule(k=st.integers(1, 5))
    def search_all(self, k):
        q = self.rng.standard_normal(self.dim).astype(np.float32)
        found, dist = self.idx.search(q, k, params=EXACT)
        got = [s for s in found[0].tolist() if s >= 0]
        assert set(got) <= set(self.vecs)
        want = brute(self.vecs, q, k, None)
        np.testing.assert_allclose(dist[0][: len(want)], want, rtol=1e-4, atol=1e-4)

    @invariant()
    def structure(self):
        if not hasattr(self, "idx"):
            return
        assert len(self.idx) == len(self.vecs)
        for s in list(self.vecs)[:5]:
            assert set(self.idx.tenants_of(s).tolist()) == self.acl[s]
        check_invariants(self.idx)


CuratorModel.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestCuratorModel = CuratorModel.TestCase


# ----------------------------------------------------------------------------------- recall
@pytest.fixture(scope="module")
def wordnet_index(glove_wordnet):
    g = glove_wordnet
    idx = CuratorIndex(50, "ip")
    idx.add(g["base"], acl=(g["acl_indptr"], g["acl_indices"]))
    return idx


def _recall(idx, g, params, sel) -> float:
    hits = total = 0
    for i in sel:
        found, _ = idx.search(g["queries"][i], 10, tenant=int(g["query_tenant"][i]), params=params)
        gt = g["gt"][i, :10]
        gt = gt[gt >= 0]
        hits += len(np.intersect1d(found[0], gt))
        total += len(gt)
    return hits / total


def test_recall_on_glove_wordnet(glove_wordnet, wordnet_index):
    g, idx = glove_wordnet, wordnet_index
    assert idx.trained and len(idx.tree["parent"]) > 100
    sel = np.arange(len(g["queries"]))
    assert _recall(idx, g, CuratorSearchParams(gamma1=4, gamma2=64), sel) >= 0.9
    lo = _recall(idx, g, CuratorSearchParams(gamma1=1, gamma2=2), sel[::4])
    hi = _recall(idx, g, EXACT, sel[::4])
    assert lo < hi and hi > 0.999  # the knob matters; an unbounded budget is exact


def test_results_only_from_tenant_on_glove_wordnet(glove_wordnet, wordnet_index):
    g, idx = glove_wordnet, wordnet_index
    for i in range(0, 1000, 10):
        t = int(g["query_tenant"][i])
        found, dist = idx.search(g["queries"][i], 10, tenant=t)
        for s in found[0][found[0] >= 0].tolist():
            assert t in idx.tenants_of(s)
        assert (np.diff(dist[0][np.isfinite(dist[0])]) >= 0).all()


# ----------------------------------------------------------------------------- structure
def _random_index(seed=0, n=3000, n_tenants=40, **kw):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    acl = [rng.choice(n_tenants, size=rng.integers(1, 4), replace=False) for _ in range(n)]
    params = dict(nlist=8, fanout=4, leaf_size=16, max_sl_size=16, train_size=1000)
    params.update(kw)
    idx = CuratorIndex(8, "l2", **params)
    for s in range(0, n, 500):
        idx.add(X[s : s + 500], acl=acl[s : s + 500])
    return idx, X, acl, rng


def test_split_merge_invariants_after_random_ops():
    idx, X, acl, rng = _random_index()
    assert idx.trained
    check_invariants(idx)
    nodes0 = len(idx.core.lists()[0])
    # revoke most pairs of a big tenant: its shortlists must merge back towards the root
    t = 3
    members = [s for s in range(len(X)) if t in acl[s]]
    for s in members[:-5]:
        idx.revoke(s, t)
    nodes, tenants, _, _ = idx.core.lists()
    t_nodes = nodes[tenants == t]
    assert len(t_nodes) == 1  # 5 entries fit one shortlist: merged to a single one
    check_invariants(idx)
    for _ in range(400):
        op = rng.integers(0, 3)
        s = int(rng.integers(0, len(X)))
        if idx.core.slot_leaf(s) < 0:
            continue
        if op == 0:
            idx.grant(s, int(rng.integers(0, 40)))
        elif op == 1:
            ts = idx.tenants_of(s)
            if len(ts):
                idx.revoke(s, int(rng.choice(ts)))
        else:
            idx.remove([s])
    check_invariants(idx)
    idx.core.rebuild_bloom()
    check_invariants(idx)
    assert len(idx.core.lists()[0]) > 0 and nodes0 > 0


def test_small_tenant_is_one_exact_shortlist():
    idx, X, acl, _ = _random_index(n_tenants=40)
    for s in range(10):
        idx.grant(s, 999)
    nodes, tenants, _, _ = idx.core.lists()
    assert nodes[tenants == 999].tolist() == [0]  # at the root: one bucket, scanned exactly
    q = X[3] + 0.01
    found, _ = idx.search(q, 5, tenant=999, params={"gamma1": 1, "gamma2": 1})
    d = ((X[:10] - q) ** 2).sum(1)
    assert found[0].tolist() == np.argsort(d)[:5].tolist()


def test_unfiltered_search_and_unknown_tenant():
    idx, X, _, _ = _random_index()
    found, dist = idx.search(X[:20], 1, params=EXACT)
    assert found[:, 0].tolist() == list(range(20))
    found, dist = idx.search(X[:2], 3, tenant=12345)
    assert (found == -1).all() and np.isinf(dist).all()


def test_save_load_equal(tmp_path):
    idx, X, _, rng = _random_index(seed=1)
    idx.remove(np.arange(0, 3000, 7))
    idx.revoke(1, int(idx.tenants_of(1)[0]))
    Q = rng.standard_normal((30, 8)).astype(np.float32)
    path = tmp_path / "cur.idx"
    idx.save(path)
    back = Index.load(path)
    assert isinstance(back, CuratorIndex) and len(back) == len(idx)
    for t in (None, 0, 5, 39):
        for params in (None, {"gamma1": 1, "gamma2": 2}):
            a = idx.search(Q, 10, tenant=t, params=params)
            b = back.search(Q, 10, tenant=t, params=params)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    check_invariants(back)
    la, lb = idx.core.lists(), back.core.lists()
    key = lambda ls: sorted(  # noqa: E731
        (int(n), int(t), tuple(sorted(ls[3][ls[2][i] : ls[2][i + 1]].tolist())))
        for i, (n, t) in enumerate(zip(ls[0], ls[1], strict=True)))
    assert key(la) == key(lb)
    # the loaded index keeps working
    back.add(X[:3], slots=[5000, 5001, 5002], acl=[[0], [0], [1]])
    check_invariants(back)


def test_retrain_trigger_and_explicit():
    idx, X, acl, rng = _random_index(n=1200, train_size=300, retrain_factor=2.0,
                                     background_retrain=False)
    assert idx.trained and idx._trained_on > 300  # retrained as it grew 2x past the sample
    before = {t: idx.search(X[:5], 5, tenant=t, params=EXACT)[1] for t in (0, 1, 2)}
    idx.retrain()
    check_invariants(idx)
    for t, d in before.items():
        np.testing.assert_allclose(idx.search(X[:5], 5, tenant=t, params=EXACT)[1], d)


def test_untrained_is_exact():
    idx = CuratorIndex(8, train_size=10_000)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 8)).astype(np.float32)
    idx.add(X, acl=[[i % 3] for i in range(500)])
    assert not idx.trained
    ref = FlatIndex(8)
    ref.add(X, acl=[[i % 3] for i in range(500)])
    a = idx.search(X[:10], 7, tenant=1, params={"gamma1": 1, "gamma2": 1})
    b = ref.search(X[:10], 7, tenant=1)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_other_metrics_exact_with_full_budget(metric):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((1500, 16)).astype(np.float32)
    acl = [[i % 5, 7] for i in range(1500)]
    idx = CuratorIndex(16, metric, train_size=500, leaf_size=32, max_sl_size=32)
    idx.add(X, acl=acl)
    ref = FlatIndex(16, metric)
    ref.add(X, acl=acl)
    for t in (0, 4, 7):
        np.testing.assert_allclose(idx.search(X[:8], 10, tenant=t, params=EXACT)[1],
                                   ref.search(X[:8], 10, tenant=t)[1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- contract
def test_registry_and_params():
    assert index_class("curator") is CuratorIndex
    p = CuratorSearchParams.from_dict({"gamma1": 3, "gamma2": 5.5})
    assert p.gamma1 == 3 and p.gamma2 == 5.5
    with pytest.raises(InvalidArgument):
        CuratorSearchParams.from_dict({"ef": 3})
    with pytest.raises(InvalidArgument):
        CuratorSearchParams(gamma1=0.5)
    with pytest.raises(InvalidArgument):
        CuratorSearchParams(gamma2=float("nan"))
    with pytest.raises(InvalidArgument):
        CuratorIndex(8, nlist=1)
    with pytest.raises(InvalidArgument):
        CuratorIndex(8, bogus=3)


def test_bad_input_changes_nothing():
    idx, X, _, _ = _random_index(n=1000)
    n0, lists0 = len(idx), idx.core.lists()
    with pytest.raises(DimensionMismatch):
        idx.add(np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(NonFiniteValue):
        idx.add(np.array([[np.nan] * 8], dtype=np.float32), acl=[[1]])
    with pytest.raises(InvalidArgument):
        idx.add(np.zeros((2, 8), dtype=np.float32), acl=[[1]])  # acl length
    with pytest.raises(InvalidArgument):
        idx.add(np.zeros((1, 8), dtype=np.float32), acl=[[-1]])
    with pytest.raises(InvalidArgument):
        idx.add(np.zeros((1, 8), dtype=np.float32), acl=[[2**31]])
    with pytest.raises(InvalidArgument):
        idx.grant(10**6, 1)
    with pytest.raises(InvalidArgument):
        idx.grant(1, -1)
    with pytest.raises(InvalidArgument):
        idx.revoke(2**40, 1)
    with pytest.raises(InvalidArgument):
        idx.search(X[:1], 0)
    with pytest.raises(InvalidArgument):
        idx.search(X[:1], 5, tenant=-3)
    with pytest.raises(InvalidArgument):
        idx.search(X[:1], 5, params={"gamma3": 1})
    assert len(idx) == n0
    for a, b in zip(lists0, idx.core.lists(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_replace_slot_moves_vector_and_acl():
    idx, X, _, _ = _random_index(n=1000)
    new = X[500] + 0.0
    idx.add(new[None], slots=[3], acl=[[77]])
    assert idx.tenants_of(3).tolist() == [77]
    found, _ = idx.search(new, 1, tenant=77)
    assert found[0, 0] == 3
    check_invariants(idx)
    assert idx.memory_bytes() > idx.structure_bytes() > 0


def test_concurrent_searches_and_writes():
    """Searches (native, GIL released, shared read lock) run while another thread writes."""
    import threading

    idx, X, acl, rng = _random_index(n=2000)
    allowed0 = {s for s in range(2000) if 0 in acl[s]}
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        r = np.random.default_rng(threading.get_ident() % 1000)
        try:
            while not stop.is_set():
                found, _ = idx.search(r.standard_normal((4, 8)).astype(np.float32), 5, tenant=0)
                assert set(found[found >= 0].tolist()) <= allowed0
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):  # tenant 0 never changes; everything else churns
        s = 2000 + i
        idx.add(rng.standard_normal((1, 8)).astype(np.float32), slots=[s], acl=[[1, 2]])
        idx.grant(s, 3)
        idx.revoke(int(rng.integers(0, 2000)), 5)
        if i % 3 == 0:
            idx.remove([s])
    idx.retrain()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    check_invariants(idx)


def test_driven_by_the_engine(tmp_path):
    """The engine drives the index through the contract: upsert (owner first), grant, revoke,
    scoped search, checkpoint and reopen."""
    vecdb = pytest.importorskip("vecdb")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    db = vecdb.open(str(tmp_path / "db"))
    col = db.create_collection("docs", dim=8, metric="l2", index="curator",
                               params={"train_size": 200, "leaf_size": 16, "max_sl_size": 16})
    for name in ("a", "b"):
        col.create_tenant(name)
    ids = np.arange(600, dtype=np.uint64)
    col.upsert(ids, X, tenant="a")
    col.grant(ids[::3], tenant="b")
    col.revoke(ids[:30:3], tenant="b")
    res = col.search(X[:5], k=4, tenant="b", params={"gamma1": 1e6, "gamma2": 1e6})
    allowed = set(range(30, 600, 3))
    assert set(np.asarray(res.ids).ravel().tolist()) <= allowed
    want = sorted(allowed, key=lambda i: float(((X[i] - X[0]) ** 2).sum()))[:4]
    assert np.asarray(res.ids)[0].tolist() == want
    db.close()
    db = vecdb.open(str(tmp_path / "db"))
    again = db.collection("docs").search(X[:5], k=4, tenant="b",
                                         params={"gamma1": 1e6, "gamma2": 1e6})
    np.testing.assert_array_equal(np.asarray(again.ids), np.asarray(res.ids))
    db.close()


def test_background_retrain_replays_concurrent_writes():
    """Writes made while a background rebuild runs are journaled and replayed before the swap."""
    import threading

    idx, X, acl, rng = _random_index(n=2000)
    model = {s: set(a.tolist()) for s, a in enumerate(acl)}
    go = threading.Event()
    idx._before_swap = go.wait  # hold the swap until the writes below are done
    gen = idx._generation
    th = idx.retrain(background=True)
    assert th is not None and idx.retrain(background=True) is None  # one at a time
    new = rng.standard_normal((50, 8)).astype(np.float32)
    idx.add(new, slots=np.arange(5000, 5050), acl=[[0, 41]] * 50)
    model.update({s: {0, 41} for s in range(5000, 5050)})
    idx.add(new[:1], slots=[7], acl=[[42]])  # replace a snapshotted slot
    model[7] = {42}
    for s in range(100, 140):
        idx.remove([s])
        del model[s]
    idx.grant(200, 43)
    model[200].add(43)
    t = int(idx.tenants_of(201)[0])
    idx.revoke(201, t)
    model[201].discard(t)
    assert idx._generation == gen  # not swapped yet: searches still use the old structure
    go.set()
    th.join(30)
    assert not th.is_alive() and idx._generation == gen + 1 and idx._journal is None
    check_invariants(idx)
    assert len(idx) == len(model)
    for s in (7, 200, 201, 5000, 5049, 1999):
        assert set(idx.tenants_of(s).tolist()) == model[s]
    found, _ = idx.search(new[0], 1, tenant=42, params=EXACT)
    assert found[0, 0] == 7
    found, _ = idx.search(X[100:140], 5, params=EXACT)
    assert not (set(found.ravel().tolist()) & set(range(100, 140)))


def test_automatic_background_retrain():
    idx, X, _, rng = _random_index(n=1000, train_size=500, retrain_factor=2.0)
    assert idx._trained_on == 500
    gen = idx._generation
    idx.add(rng.standard_normal((200, 8)).astype(np.float32), acl=[[1]] * 200)  # 1200 > 2 x 500
    for _ in range(300):
        if idx._generation > gen:
            break
        threading_sleep(0.05)
    assert idx._generation > gen and idx._trained_on == 1200
    check_invariants(idx)


def threading_sleep(s: float) -> None:
    import time

    time.sleep(s)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_fast_path_matches_general_path(metric):
    """The native fast path (float32 query, plain knobs) returns what the general path returns
    for the same query presented in a way only the general path takes (float64, numpy ints)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3000, 12)).astype(np.float32)
    acl = [[i % 7, 9] for i in range(3000)]
    idx = CuratorIndex(12, metric, train_size=500, leaf_size=32, max_sl_size=32)
    idx.add(X, acl=acl)
    Q = rng.standard_normal((6, 12)).astype(np.float32)
    for params in (None, {"gamma1": 1.5, "gamma2": 4}, CuratorSearchParams(gamma2=2.0)):
        for t in (None, 0, 9):
            fast = idx.search(Q, 10, tenant=t, params=params)
            slow = idx.search(Q.astype(np.float64), np.int64(10),
                              tenant=None if t is None else np.int32(t),
                              params=dict(params) if isinstance(params, dict) else params)
            np.testing.assert_array_equal(fast[0], slow[0])
            np.testing.assert_allclose(fast[1], slow[1], rtol=1e-6, atol=1e-6)
            one = idx.search(Q[2], 10, tenant=t, params=params)  # 1-D query: one row
            np.testing.assert_array_equal(one[0], fast[0][2:3])
    with idx._lock.write():  # the writer's own reads take nothing (no self-deadlock)
        assert idx.search(Q[0], 3, tenant=0)[0].shape == (1, 3)


def test_fast_path_rejects_what_the_boundary_rejects():
    idx, X, _, _ = _random_index(n=1000)
    q = X[0].copy()
    with pytest.raises(NonFiniteValue):
        idx.search(np.full(8, np.nan, dtype=np.float32), 5, tenant=1)
    with pytest.raises(DimensionMismatch):
        idx.search(np.zeros(9, dtype=np.float32), 5, tenant=1)
    for k in (0, True, 2.0):
        with pytest.raises(InvalidArgument):
            idx.search(q, k, tenant=1)
    for t in (-1, 2**31, True, "a"):
        with pytest.raises(InvalidArgument):
            idx.search(q, 5, tenant=t)
    for p in ({"gamma1": 0.5}, {"gamma2": float("inf")}, {"gamma1": True}, {"ef": 4},
              {"gamma1": 2, "gamma2": 2, "x": 1}):
        with pytest.raises(InvalidArgument):
            idx.search(q, 5, tenant=1, params=p)
    cos = CuratorIndex(8, "cosine")
    cos.add(X[:50], acl=[[1]] * 50)
    with pytest.raises(InvalidArgument):
        cos.search(np.zeros(8, dtype=np.float32), 5, tenant=1)
