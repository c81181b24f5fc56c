"""The servicers: thin translations of wire messages to engine calls and back.

No logic of their own beyond authorisation (which tenant a key may act as) and packing; the
engine validates everything else and raises ``vecdb.errors``, which the interceptor maps to status
codes. Every data RPC names its tenant, and the principal must be allowed to act as it.
"""

from __future__ import annotations

import json

import numpy as np

from vecdb._proto import wire
from vecdb._proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    collections_pb2,
    collections_pb2_grpc,
    common_pb2,
    points_pb2,
    points_pb2_grpc,
    tenants_pb2,
    tenants_pb2_grpc,
)
from vecdb.errors import InvalidArgument, ResourceExhausted

_STATUS = {"created": common_pb2.CREATED, "updated": common_pb2.UPDATED}
MAX_DIM = 65_536  # wire-level sanity limits: a request can never make the server allocate
MAX_K = 10_000  # an absurd amount (k = 2^32 - 1 would otherwise ask for a 32 GB result)
MAX_RESULTS = 10_000_000  # nq * k per search


def _ids(field) -> np.ndarray:
    return np.array(field, dtype=np.uint64)


class CollectionsService(collections_pb2_grpc.CollectionsServicer):
    def __init__(self, db) -> None:
        self.db = db

    def _info(self, col, admin: bool) -> collections_pb2.CollectionInfo:
        i = col.info()
        return collections_pb2.CollectionInfo(
            name=i["name"], dim=i["dim"], metric=i["metric"], index=i["index"],
            params_json=json.dumps(i["params"], sort_keys=True),
            count=i["count"] if admin else 0, tenants=i["tenants"] if admin else 0)

    def CreateCollection(self, req, ctx):
        ctx.principal.require_admin()
        if not 0 < req.dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be in [1, {MAX_DIM}], got {req.dim}")
        col = self.db.create_collection(req.name, dim=req.dim, metric=req.metric or "l2",
                                        index=req.index or "flat",
                                        params=wire.loads_params(req.params_json) or {})
        return self._info(col, True)

    def ListCollections(self, req, ctx):
        return collections_pb2.ListCollectionsResponse(names=self.db.list_collections())

    def DescribeCollection(self, req, ctx):
        return self._info(self.db.collection(req.name), ctx.principal.is_admin)

    def DropCollection(self, req, ctx):
        ctx.principal.require_admin()
        self.db.drop_collection(req.name)
        return collections_pb2.DropCollectionResponse()


def _tenant_info(s: dict) -> tenants_pb2.TenantInfo:
    return tenants_pb2.TenantInfo(name=s["name"], id=s["id"], owned=s["owned"],
                                  granted=s["granted"], visible=s["visible"])


class TenantsService(tenants_pb2_grpc.TenantsServicer):
    def __init__(self, db) -> None:
        self.db = db

    def CreateTenant(self, req, ctx):
        ctx.principal.require_write(req.tenant)
        col = self.db.collection(req.collection)
        col.create_tenant(req.tenant)
        return _tenant_info(col.tenant_stats(req.tenant))

    def ListTenants(self, req, ctx):
        names = self.db.collection(req.collection).list_tenants()
        p = ctx.principal
        if not p.is_admin:
            names = [n for n in names if n in p.tenants]
        return tenants_pb2.ListTenantsResponse(names=names)

    def TenantStats(self, req, ctx):
        ctx.principal.require_read(req.tenant)
        return _tenant_info(self.db.collection(req.collection).tenant_stats(req.tenant))

    def DropTenant(self, req, ctx):
        ctx.principal.require_admin()
        r = self.db.collection(req.collection).drop_tenant(req.tenant)
        return tenants_pb2.DropTenantResponse(deleted=r["deleted"], revoked=r["revoked"])


class PointsService(points_pb2_grpc.PointsServicer):
    def __init__(self, db) -> None:
        self.db = db

    # -- writes ---------------------------------------------------------------------------
    def _upsert(self, req, ctx):
        ctx.principal.require_write(req.tenant)
        col = self.db.collection(req.collection)
        ids = _ids(req.ids)
        X = wire.unpack_vectors(req.vectors, "vectors", n=len(ids), dim=col.dim)
        payloads = None
        if len(req.payloads):
            if len(req.payloads) != len(ids):
                raise InvalidArgument(f"got {len(req.payloads)} payloads for {len(ids)} ids")
            payloads = [wire.loads_payload(b, f"payloads[{i}]")
                        for i, b in enumerate(req.payloads)]
        return col.upsert(ids, X, tenant=req.tenant, payloads=payloads)

    def Upsert(self, req, ctx):
        r = self._upsert(req, ctx)
        return points_pb2.UpsertResponse(ids=r.ids.tolist(),
                                         status=[_STATUS[s] for s in r.status], seq=r.seq)

    def UpsertStream(self, req_iter, ctx):
        total = 0
        for req in req_iter:
            try:
                r = self._upsert(req, ctx)
            except Exception as e:
                if hasattr(e, "grpc_code"):
                    e.args = (f"batch {req.batch_seq}: {e}",)
                raise
            total += len(r)
            yield points_pb2.UpsertAck(batch_seq=req.batch_seq, created=r.created,
                                       updated=r.updated, total=total, seq=r.seq)

    def Delete(self, req, ctx):
        ctx.principal.require_write(req.tenant)
        n = self.db.collection(req.collection).delete(_ids(req.ids), tenant=req.tenant)
        return points_pb2.DeleteResponse(deleted=n)

    def _access(self, req, ctx, grant: bool):
        p = ctx.principal
        if req.tenant:
            p.require_write(req.tenant)
            owner = req.tenant
        else:
            p.require_admin()  # "" = an admin acting for any owner
            owner = None
        if not req.grantee:
            raise InvalidArgument("grantee is required")
        col = self.db.collection(req.collection)
        fn = col.grant if grant else col.revoke
        return points_pb2.AccessResponse(changed=fn(_ids(req.ids), tenant=req.grantee,
                                                    owner=owner))

    def GrantAccess(self, req, ctx):
        return self._access(req, ctx, True)

    def RevokeAccess(self, req, ctx):
        return self._access(req, ctx, False)

    # -- reads ----------------------------------------------------------------------------
    def Get(self, req, ctx):
        ctx.principal.require_read(req.tenant)
        r = self.db.collection(req.collection).get(_ids(req.ids), tenant=req.tenant)
        return points_pb2.GetResponse(ids=r.ids.tolist(), vectors=wire.pack_vectors(r.vectors),
                                      payloads=[wire.dumps_payload(p) for p in r.payloads])

    def _search(self, req, ctx):
        ctx.principal.require_read(req.tenant)
        col = self.db.collection(req.collection)
        Q = wire.unpack_vectors(req.queries, "queries", dim=col.dim)
        if len(Q) == 0:
            raise InvalidArgument("queries: at least one query is required")
        if req.k > MAX_K:
            raise InvalidArgument(f"k must be at most {MAX_K}, got {req.k}")
        if len(Q) * req.k > MAX_RESULTS:
            raise ResourceExhausted(f"{len(Q)} queries x k={req.k} exceeds {MAX_RESULTS} "
                                    f"results per request; split the batch")
        r = col.search(Q, k=req.k, tenant=req.tenant, params=wire.loads_params(req.params_json))
        nq, k = r.ids.shape
        return points_pb2.SearchResponse(
            nq=nq, k=k, ids=np.ascontiguousarray(r.ids, dtype="<i8").tobytes(),
            distances=np.ascontiguousarray(r.distances, dtype="<f4").tobytes())

    def Search(self, req, ctx):
        return self._search(req, ctx)

    def SearchBatch(self, req, ctx):
        return points_pb2.SearchBatchResponse(results=[self._search(s, ctx)
                                                       for s in req.searches])

    def Scroll(self, req, ctx):
        ctx.principal.require_read(req.tenant)
        col = self.db.collection(req.collection)
        # ids are < 2**63, so capping the cursor there keeps it in range and returns nothing
        start = min(req.start_after + 1, 1 << 63) if req.has_start_after else 0
        ids = col.ids(req.tenant, start=start, limit=req.limit or None)
        page = req.page_size or 1000
        if page > 100_000:
            raise InvalidArgument("page_size must be at most 100000")
        for lo in range(0, len(ids), page):
            chunk = ids[lo: lo + page]
            msg = points_pb2.ScrollPage()
            if req.with_vectors or req.with_payloads:
                r = col.get(chunk, tenant=req.tenant)  # drops ids deleted meanwhile
                msg.ids.extend(r.ids.tolist())
                if req.with_vectors:
                    msg.vectors.CopyFrom(wire.pack_vectors(r.vectors))
                if req.with_payloads:
                    msg.payloads.extend(wire.dumps_payload(p) for p in r.payloads)
            else:
                msg.ids.extend(chunk.tolist())
            yield msg


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, db, keys) -> None:
        self.db = db
        self.keys = keys

    @staticmethod
    def _info(i: dict) -> admin_pb2.ApiKeyInfo:
        return admin_pb2.ApiKeyInfo(key_id=i["key_id"], role=i["role"], tenants=i["tenants"],
                                    description=i["description"], created_at=i["created_at"])

    def _keys(self):
        if self.keys is None:
            raise InvalidArgument("authentication is disabled on this server: no API keys")
        return self.keys

    def CreateApiKey(self, req, ctx):
        ctx.principal.require_admin()
        secret, info = self._keys().create(req.role, list(req.tenants), req.description)
        return admin_pb2.CreateApiKeyResponse(key=secret, info=self._info(info))

    def ListApiKeys(self, req, ctx):
        ctx.principal.require_admin()
        return admin_pb2.ListApiKeysResponse(keys=[self._info(i) for i in self._keys().list()])

    def RevokeApiKey(self, req, ctx):
        ctx.principal.require_admin()
        self._keys().revoke(req.key_id)
        return admin_pb2.RevokeApiKeyResponse()

    def Checkpoint(self, req, ctx):
        ctx.principal.require_admin()
        if req.collection:
            self.db.collection(req.collection).checkpoint()
        else:
            for name in self.db.list_collections():
                self.db.collection(name).checkpoint()
        return admin_pb2.CheckpointResponse()

    def WhoAmI(self, req, ctx):
        p = ctx.principal
        return admin_pb2.ApiKeyInfo(key_id=p.key_id, role=p.role, tenants=sorted(p.tenants))


__all__ = ["CollectionsService", "TenantsService", "PointsService", "AdminService"]
