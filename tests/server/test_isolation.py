"""Two tenants' keys do random operations against a live server; no response ever holds a vector
the calling tenant may not see, and every search equals the exact top-k of its visible set."""

from __future__ import annotations

import numpy as np
import pytest

import vecdb
from vecdb import errors

D, K = 6, 8


@pytest.mark.parametrize("seed", [0, 1])
def test_two_tenants_random_ops_never_leak(server, admin, seed):
    rng = np.random.default_rng(seed)
    name = f"iso{seed}"
    col = admin.create_collection(name, dim=D)
    for t in ("a", "b"):
        col.create_tenant(t)
    keys = {t: admin.create_api_key(tenants=[t], role="read_write") for t in ("a", "b")}
    cols = {t: vecdb.Client(server.address, api_key=k).collection(name) for t, k in keys.items()}
    other = {"a": "b", "b": "a"}
    vec: dict[int, np.ndarray] = {}
    owner: dict[int, str] = {}
    grants: dict[int, set[str]] = {}

    def visible(t: str) -> list[int]:
        return sorted(i for i in vec if owner[i] == t or t in grants[i])

    def check_ids(t: str, ids) -> None:
        ok = set(visible(t))
        leaked = [int(i) for i in np.asarray(ids).ravel() if i >= 0 and int(i) not in ok]
        assert not leaked, f"tenant {t} saw foreign ids {leaked}"

    next_id = 0
    for _step in range(150):
        t = str(rng.choice(["a", "b"]))
        c = cols[t]
        mine = [i for i in vec if owner[i] == t]
        op = rng.choice(["upsert", "upsert", "delete", "grant", "revoke", "search", "get",
                         "scroll", "foreign"])
        if op == "upsert":
            n = int(rng.integers(1, 20))
            ids = list(range(next_id, next_id + n))
            next_id += n
            if mine and rng.random() < 0.3:
                ids[0] = int(rng.choice(mine))  # replace one of mine
            X = rng.random((n, D), dtype=np.float32)
            c.upsert(ids, X, tenant=t)
            for i, x in zip(ids, X, strict=True):
                vec[i], owner[i] = x, t
                grants.setdefault(i, set())
        elif op == "delete" and mine:
            ids = [int(i) for i in rng.choice(mine, size=min(3, len(mine)), replace=False)]
            assert c.delete(ids, tenant=t) == len(ids)
            for i in ids:
                del vec[i], owner[i], grants[i]
        elif op in ("grant", "revoke") and mine:
            ids = [int(i) for i in rng.choice(mine, size=min(4, len(mine)), replace=False)]
            fn = c.grant if op == "grant" else c.revoke
            fn(ids, tenant=other[t], owner=t)
            for i in ids:
                (grants[i].add if op == "grant" else grants[i].discard)(other[t])
        elif op == "search":
            Q = rng.random((3, D), dtype=np.float32)
            r = c.search(Q, k=K, tenant=t)
            check_ids(t, r.ids)
            vis = visible(t)
            if vis:
                V = np.stack([vec[i] for i in vis])
                d = ((Q[:, None, :] - V[None]) ** 2).sum(-1)
                want = np.sort(d, axis=1)[:, :K]
                got = r.distances[:, : want.shape[1]]
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            assert (r.ids[:, len(vis):] == -1).all()
        elif op == "get":
            probe = list(vec)[:50] + [10**9]
            g = c.get(probe, tenant=t)
            check_ids(t, g.ids)
            assert sorted(g.ids.tolist()) == sorted(set(probe) & set(visible(t)))
        elif op == "scroll":
            ids = [i for p in c.scroll(t, page_size=16, with_vectors=True) for i in p.ids]
            assert ids == visible(t)
        elif op == "foreign":
            o = other[t]
            theirs = [i for i in vec if owner[i] == o]
            with pytest.raises(errors.PermissionDenied):
                c.search(rng.random((1, D)), k=K, tenant=o)
            with pytest.raises(errors.PermissionDenied):
                c.get(theirs[:5] or [0], tenant=o)
            with pytest.raises(errors.PermissionDenied):
                c.scroll(o).__next__()
            if theirs:
                hidden = [i for i in theirs if t not in grants[i]]
                shared = [i for i in theirs if t in grants[i]]
                if hidden:  # invisible ids look missing, never "someone else's"
                    with pytest.raises(errors.NotFound) as ei:
                        c.delete(hidden[:1], tenant=t)
                    assert "owned" not in str(ei.value)
                    with pytest.raises(errors.PermissionDenied):  # upsert over a foreign id
                        c.upsert(hidden[:1], rng.random((1, D)), tenant=t)
                    assert c.get(hidden[:3], tenant=t).ids.size == 0
                if shared:
                    with pytest.raises(errors.PermissionDenied):
                        c.delete(shared[:1], tenant=t)
    for t in ("a", "b"):
        assert cols[t].tenant_stats(t)["visible"] == len(visible(t))
