"""Fuzz the live server with random bytes and random well-typed-but-wrong messages (Hypothesis).

Bad input must come back as a client-error status (INVALID_ARGUMENT, NOT_FOUND, ...), never as
INTERNAL/UNKNOWN, and the server must keep serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vecdb._proto.v1 import (
    admin_pb2,
    collections_pb2,
    common_pb2,
    points_pb2,
    tenants_pb2,
)

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
D = 4


def _methods():
    out = []
    for mod in (collections_pb2, tenants_pb2, points_pb2, admin_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.append((f"/{svc.full_name}/{m.name}", m.client_streaming,
                            m.server_streaming))
    return out


METHODS = _methods()
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(server, admin):
    col = admin.create_collection("fz", dim=D)
    col.create_tenant("t")
    col.upsert(np.arange(20), np.random.default_rng(0).random((20, D)), tenant="t")
    ch = grpc.insecure_channel(server.address)
    md = (("authorization", f"Bearer {server.api_key}"),)
    yield ch, md, admin
    ch.close()


def _call(ch, md, method, streams, payloads: list[bytes]):
    cs, ss = streams
    try:
        if cs:
            stub = ch.stream_stream(method) if ss else ch.stream_unary(method)
            r = stub(iter(payloads), metadata=md, timeout=20)
        else:
            stub = ch.unary_stream(method) if ss else ch.unary_unary(method)
            r = stub(payloads[0], metadata=md, timeout=20)
        if ss:
            list(r)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code(), e.details()


def _assert_ok(res, method):
    code = res if isinstance(res, grpc.StatusCode) else res[0]
    assert code not in SERVER_FAULTS, f"{method}: {res}"
    assert code != grpc.StatusCode.UNAVAILABLE, f"server died on {method}"


@given(idx=st.integers(0, len(METHODS) - 1), blobs=st.lists(st.binary(max_size=200), min_size=1,
                                                             max_size=3))
@SETTINGS
def test_random_bytes(live, idx, blobs):
    ch, md, admin = live
    method, cs, ss = METHODS[idx]
    if method.endswith(("/DropCollection", "/DropTenant", "/RevokeApiKey")):
        return  # random bytes could name a real object; covered by the typed fuzz below
    _assert_ok(_call(ch, md, method, (cs, ss), blobs), method)


names = st.one_of(st.sampled_from(["fz", "t", "", "nope"]), st.text(max_size=12))
u64 = st.one_of(st.integers(0, 30), st.integers(0, 2**64 - 1))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def vectors(draw):
    dim = draw(st.one_of(st.just(D), st.integers(0, 9), st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["floats", "bytes"]))
    if mode == "floats":
        vals = draw(st.lists(floats, max_size=3 * D))
        data = np.array(vals, dtype="<f4").tobytes()
    else:
        data = draw(st.binary(max_size=64))
    return common_pb2.Vectors(data=data, dim=dim, dtype=draw(st.integers(0, 5)))


json_text = st.one_of(st.just(""), st.just("{}"), st.just('{"ef": 5}'), st.text(max_size=20),
                      st.just("[1,2]"), st.just('{"nprobe": -1}'))


@st.composite
def typed_request(draw):
    kind = draw(st.sampled_from(["upsert", "search", "get", "delete", "grant", "scroll",
                                 "create_col", "tenant", "key", "batch"]))
    col, ten = draw(names), draw(names)
    ids = draw(st.lists(u64, max_size=6))
    if kind == "upsert":
        return "/vecdb.v1.Points/Upsert", points_pb2.UpsertRequest(
            collection=col, tenant=ten, ids=ids, vectors=draw(vectors()),
            payloads=draw(st.lists(st.one_of(st.binary(max_size=10), json_text.map(str.encode)),
                                   max_size=3)))
    if kind in ("search", "batch"):
        req = points_pb2.SearchRequest(collection=col, tenant=ten, queries=draw(vectors()),
                                       k=draw(st.one_of(st.integers(0, 30),
                                                        st.integers(0, 2**32 - 1))),
                                       params_json=draw(json_text))
        if kind == "batch":
            return "/vecdb.v1.Points/SearchBatch", points_pb2.SearchBatchRequest(
                searches=[req, req])
        return "/vecdb.v1.Points/Search", req
    if kind == "get":
        return "/vecdb.v1.Points/Get", points_pb2.GetRequest(collection=col, tenant=ten, ids=ids)
    if kind == "delete":
        return "/vecdb.v1.Points/Delete", points_pb2.DeleteRequest(collection=col, tenant=ten,
                                                                   ids=ids)
    if kind == "grant":
        m = draw(st.sampled_from(["GrantAccess", "RevokeAccess"]))
        return f"/vecdb.v1.Points/{m}", points_pb2.AccessRequest(
            collection=col, tenant=ten, ids=ids, grantee=draw(names))
    if kind == "scroll":
        return "/vecdb.v1.Points/Scroll", points_pb2.ScrollRequest(
            collection=col, tenant=ten, page_size=draw(st.integers(0, 2**32 - 1)),
            with_vectors=draw(st.booleans()), with_payloads=draw(st.booleans()),
            has_start_after=draw(st.booleans()), start_after=draw(u64),
            limit=draw(st.integers(0, 2**64 - 1)))
    if kind == "create_col":
        return "/vecdb.v1.Collections/CreateCollection", collections_pb2.CreateCollectionRequest(
            name=draw(st.sampled_from(["fz", "", "x" * 200, "a b", "../x"])),
            dim=draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))),
            metric=draw(st.sampled_from(["", "l2", "hamming", "IP"])),
            index=draw(st.sampled_from(["", "flat", "nope", "__init__"])),
            params_json=draw(json_text))
    if kind == "tenant":
        m = draw(st.sampled_from(["CreateTenant", "TenantStats", "ListTenants"]))
        if m == "ListTenants":
            return "/vecdb.v1.Tenants/ListTenants", tenants_pb2.ListTenantsRequest(collection=col)
        return f"/vecdb.v1.Tenants/{m}", tenants_pb2.TenantRequest(
            collection=col, tenant=draw(st.sampled_from(["t", "", "\x00", "x" * 300])))
    return "/vecdb.v1.Admin/CreateApiKey", admin_pb2.CreateApiKeyRequest(
        role=draw(st.sampled_from(["", "admin", "read", "root"])),
        tenants=draw(st.lists(names, max_size=3)), description=draw(st.text(max_size=5)))


@given(req=typed_request())
@SETTINGS
def test_typed_garbage(live, req):
    ch, md, admin = live
    method, msg = req
    ss = method.endswith("/Scroll")
    res = _call(ch, md, method, (False, ss), [msg.SerializeToString()])
    _assert_ok(res, method)


def test_server_still_serving_after_fuzz(live):
    ch, md, admin = live
    assert admin.health() == "SERVING"
    col = admin.collection("fz")
    r = col.search(np.zeros((1, D)), k=3, tenant="t")
    assert r.ids.shape == (1, 3) and (r.ids >= 0).all()
