"""Hypothesis state machine: the engine against a plain-Python model.

Random sequences of create_tenant / upsert / delete / grant / revoke / drop_tenant / checkpoint /
reopen (with and without a close checkpoint, i.e. recovery from checkpoint + oplog replay). After
every step: every tenant's search equals the model's exact top-k (flat index), a tenant never
sees a vector not on its access list, counts match, ``get`` returns exactly the visible vectors.
Invalid calls (foreign owner, deleting another tenant's vector, unknown tenant) must raise and
change nothing, which the next invariant check verifies.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import vecdb
from vecdb.errors import InvalidArgument, NotFound, PermissionDenied

DIM = 6
ID_POOL = st.integers(0, 40)
TENANT_POOL = st.sampled_from(["t0", "t1", "t2", "t3"])
QUERIES = np.random.default_rng(123).standard_normal((3, DIM)).astype(np.float32)


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class EngineMachine(RuleBasedStateMachine):
    KIND = "flat"  # exact top-k; subclasses below run approximate kinds (recall >= 0.9)

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vecdb-sm-")
        self.db = vecdb.open(self.dir, background_checkpoints=False)
        self.col = self.db.create_collection("c", dim=DIM, metric="l2", index=self.KIND)
        # model: id -> [vector, owner, set(granted), payload]
        self.model: dict[int, list] = {}
        self.tenants: set[str] = set()
        self.seed = 0

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules ----------------------------------------------------------------------------
    @initialize()
    def two_tenants(self):
        for t in ("t0", "t1"):
            self.col.create_tenant(t)
            self.tenants.add(t)

    @rule(data=st.data())
    def create_tenant(self, data):
        free = sorted({"t0", "t1", "t2", "t3"} - self.tenants)
        name = data.draw(st.sampled_from(free) if free and data.draw(st.integers(0, 4))
                         else TENANT_POOL)
        if name in self.tenants:
            try:
                self.col.create_tenant(name)
                raise AssertionError("duplicate tenant accepted")
            except vecdb.errors.AlreadyExists:
                return
        self.col.create_tenant(name)
        self.tenants.add(name)

    @rule(data=st.data(), with_payload=st.booleans())
    def upsert(self, data, with_payload):
        ids = data.draw(st.lists(ID_POOL, min_size=1, max_size=6, unique=True))
        tenant = self._some_tenant(data)
        X = np.stack([vec(self.seed + i) for i in range(len(ids))])
        self.seed += len(ids)
        payloads = [{"s": self.seed, "i": i} for i in ids] if with_payload else None
        if tenant not in self.tenants:
            try:
                self.col.upsert(ids, X, tenant=tenant, payloads=payloads)
                raise AssertionError("unknown tenant accepted")
            except NotFound:
                return
        if any(i in self.model and self.model[i][1] != tenant for i in ids):
            try:
                self.col.upsert(ids, X, tenant=tenant, payloads=payloads)
                raise AssertionError("replacing a foreign vector accepted")
            except PermissionDenied:
                return
        r = self.col.upsert(ids, X, tenant=tenant, payloads=payloads)
        assert r.status == ["updated" if i in self.model else "created" for i in ids]
        for j, i in enumerate(ids):
            grants = self.model[i][2] if i in self.model else set()
            self.model[i] = [X[j], tenant, grants, payloads[j] if payloads else None]

    def _visible(self, i: int, tenant: str) -> bool:
        m = self.model.get(i)
        return m is not None and (m[1] == tenant or tenant in m[2])

    def _some_ids(self, data, max_size: int) -> list[int]:
        """Mostly existing ids (so valid calls are common), sometimes any id of the pool."""
        pool = ID_POOL
        if self.model and data.draw(st.integers(0, 3)):
            pool = st.sampled_from(sorted(self.model))
        return data.draw(st.lists(pool, min_size=1, max_size=max_size, unique=True))

    def _some_tenant(self, data) -> str:
        if self.tenants and data.draw(st.integers(0, 4)):
            return data.draw(st.sampled_from(sorted(self.tenants)))
        return data.draw(TENANT_POOL)

    @rule(data=st.data())
    def delete(self, data):
        ids = self._some_ids(data, 4)
        tenant = self._some_tenant(data)
        if self.model and data.draw(st.booleans()):  # often: the owner deletes its own
            tenant = self.model[ids[0]][1] if ids[0] in self.model else tenant
        if tenant not in self.tenants:
            expect = NotFound
        elif not all(self._visible(i, tenant) for i in ids):
            expect = NotFound
        elif any(self.model[i][1] != tenant for i in ids):
            expect = PermissionDenied
        else:
            assert self.col.delete(ids, tenant=tenant) == len(ids)
            for i in ids:
                del self.model[i]
            return
        try:
            self.col.delete(ids, tenant=tenant)
            raise AssertionError(f"delete should raise {expect.__name__}")
        except expect:
            pass

    def _expect_access(self, ids, tenant, revoke) -> int | type[Exception]:
        """The model's answer to grant/revoke: the number changed, or the error to expect."""
        if tenant not in self.tenants or any(i not in self.model for i in ids):
            return NotFound
        if revoke and any(self.model[i][1] == tenant for i in ids):
            return InvalidArgument
        changed = 0
        for i in ids:
            g = self.model[i][2]
            if revoke and tenant in g:
                g.discard(tenant)
                changed += 1
            elif not revoke and tenant not in g and self.model[i][1] != tenant:
                g.add(tenant)
                changed += 1
        return changed

    def _access(self, ids, tenant, revoke):
        op = self.col.revoke if revoke else self.col.grant
        expect = self._expect_access(ids, tenant, revoke)
        if isinstance(expect, int):
            assert op(ids, tenant=tenant) == expect
            return
        try:
            op(ids, tenant=tenant)
            raise AssertionError(f"{op.__name__} should raise {expect.__name__}")
        except expect:
            pass

    @precondition(lambda self: self.model and self.tenants)
    @rule(data=st.data())
    def grant(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=4,
                                 unique=True))
        self._access(ids, data.draw(st.sampled_from(sorted(self.tenants))), False)

    @precondition(lambda self: any(m[2] for m in self.model.values()))
    @rule(data=st.data())
    def revoke(self, data):
        pairs = sorted((i, t) for i, m in self.model.items() for t in m[2])
        i, t = data.draw(st.sampled_from(pairs))
        more = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=2))
        self._access(list(dict.fromkeys([i, *more])), t, True)

    @rule(data=st.data(), revoke=st.booleans())
    def bad_or_random_access(self, data, revoke):
        self._access(self._some_ids(data, 3), data.draw(TENANT_POOL), revoke)

    @rule(data=st.data())
    def drop_tenant(self, data):
        if data.draw(st.integers(0, 3)):  # rarer than the other writes
            return
        tenant = self._some_tenant(data)
        if tenant not in self.tenants:
            try:
                self.col.drop_tenant(tenant)
                raise AssertionError("dropping an unknown tenant accepted")
            except NotFound:
                return
        owned = [i for i, m in self.model.items() if m[1] == tenant]
        shared = [i for i, m in self.model.items() if tenant in m[2]]
        assert self.col.drop_tenant(tenant) == {"deleted": len(owned), "revoked": len(shared)}
        for i in owned:
            del self.model[i]
        for m in self.model.values():
            m[2].discard(tenant)
        self.tenants.discard(tenant)

    @precondition(lambda self: self.model)
    @rule()
    def checkpoint(self):
        self.col.checkpoint()

    @rule(checkpoint_on_close=st.booleans())
    def reopen(self, checkpoint_on_close):
        self.col.close(checkpoint=checkpoint_on_close)
        self.db.close()
        self.db = vecdb.open(self.dir, background_checkpoints=False)
        self.col = self.db.collection("c")

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def counts_match(self):
        assert len(self.col) == len(self.model)
        assert self.col.list_tenants() == sorted(self.tenants)
        for t in self.tenants:
            s = self.col.tenant_stats(t)
            owned = sum(m[1] == t for m in self.model.values())
            shared = sum(t in m[2] for m in self.model.values())
            assert (s["owned"], s["granted"], s["visible"]) == (owned, shared, owned + shared)

    @precondition(lambda self: self.tenants)
    @invariant()
    def search_is_exact_and_isolated(self):
        k = 5
        for t in sorted(self.tenants):
            vis = sorted(i for i in self.model if self._visible(i, t))
            res = self.col.search(QUERIES, k=k, tenant=t)
            assert set(res.ids.ravel().tolist()) - {-1} <= set(vis)  # never a foreign vector
            if not vis:
                assert (res.ids == -1).all()
                continue
            X = np.stack([self.model[i][0] for i in vis]).astype(np.float64)
            D = ((QUERIES[:, None, :].astype(np.float64) - X[None]) ** 2).sum(-1)
            order = np.argsort(D, axis=1, kind="stable")[:, :k]
            m = min(k, len(vis))
            want_ids = np.array(vis)[order[:, :m]]
            want_d = np.take_along_axis(D, order[:, :m], axis=1)
            if self.KIND != "flat":
                hits = sum(len(np.intersect1d(f, w)) for f, w in zip(res.ids, want_ids,
                                                                       strict=True))
                assert hits / want_ids.size >= 0.9, f"recall {hits / want_ids.size:.2f}"
                continue
            np.testing.assert_allclose(res.distances[:, :m], want_d, rtol=1e-4, atol=1e-5)
            assert (res.ids[:, m:] == -1).all()
            for q in range(len(QUERIES)):  # ids must match except within float ties
                for j in range(m):
                    if res.ids[q, j] != want_ids[q, j]:
                        assert abs(float(res.distances[q, j]) - want_d[q, j]) < 1e-4

    @precondition(lambda self: self.tenants)
    @invariant()
    def get_returns_exactly_the_visible(self):
        for t in sorted(self.tenants):
            g = self.col.get(list(range(41)), tenant=t)
            want = [i for i in range(41) if self._visible(i, t)]
            assert g.ids.tolist() == want
            for j, i in enumerate(want):
                np.testing.assert_array_equal(g.vectors[j], self.model[i][0])
                assert g.payloads[j] == self.model[i][3]


EngineMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=35, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngine = EngineMachine.TestCase


def _approximate_machine(kind: str):
    """The same machine over an approximate index kind, if it exists in this checkout."""
    try:
        importlib.import_module(f"vecdb.index.{kind}")
    except ImportError:
        return None
    machine = type(f"{kind.title()}Machine", (EngineMachine,), {"KIND": kind})
    machine.TestCase.settings = settings(
        max_examples=6, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    return machine.TestCase


def _register() -> None:
    for kind in ("hnsw", "curator", "spann"):
        case = _approximate_machine(kind)
        if case is not None:
            globals()[f"Test{kind.title()}Engine"] = case


_register()
