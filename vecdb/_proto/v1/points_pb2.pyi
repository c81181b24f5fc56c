from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "tenant", "ids", "vectors", "payloads", "batch_seq")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: _common_pb2.Vectors
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    batch_seq: int
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[_common_pb2.Vectors, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ..., batch_seq: _Optional[int] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("ids", "status", "seq")
    IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    status: _containers.RepeatedScalarFieldContainer[_common_pb2.ItemStatus]
    seq: int
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., status: _Optional[_Iterable[_Union[_common_pb2.ItemStatus, str]]] = ..., seq: _Optional[int] = ...) -> None: ...

class UpsertAck(_message.Message):
    __slots__ = ("batch_seq", "created", "updated", "total", "seq")
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    batch_seq: int
    created: int
    updated: int
    total: int
    seq: int
    def __init__(self, batch_seq: _Optional[int] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ..., total: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "tenant", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "tenant", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "payloads")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: _common_pb2.Vectors
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[_common_pb2.Vectors, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "tenant", "queries", "k", "params_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    queries: _common_pb2.Vectors
    k: int
    params_json: str
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., queries: _Optional[_Union[_common_pb2.Vectors, _Mapping]] = ..., k: _Optional[int] = ..., params_json: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("nq", "k", "ids", "distances")
    NQ_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    nq: int
    k: int
    ids: bytes
    distances: bytes
    def __init__(self, nq: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[bytes] = ..., distances: _Optional[bytes] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("searches",)
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, searches: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class AccessRequest(_message.Message):
    __slots__ = ("collection", "tenant", "ids", "grantee")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    grantee: str
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., grantee: _Optional[str] = ...) -> None: ...

class AccessResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: int
    def __init__(self, changed: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "tenant", "page_size", "with_vectors", "with_payloads", "has_start_after", "start_after", "limit")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    HAS_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    page_size: int
    with_vectors: bool
    with_payloads: bool
    has_start_after: bool
    start_after: int
    limit: int
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ..., page_size: _Optional[int] = ..., with_vectors: _Optional[bool] = ..., with_payloads: _Optional[bool] = ..., has_start_after: _Optional[bool] = ..., start_after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ScrollPage(_message.Message):
    __slots__ = ("ids", "vectors", "payloads")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: _common_pb2.Vectors
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[_common_pb2.Vectors, _Mapping]] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...
