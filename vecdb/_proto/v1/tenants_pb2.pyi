from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TenantRequest(_message.Message):
    __slots__ = ("collection", "tenant")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    tenant: str
    def __init__(self, collection: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class TenantInfo(_message.Message):
    __slots__ = ("name", "id", "owned", "granted", "visible")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OWNED_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: int
    owned: int
    granted: int
    visible: int
    def __init__(self, name: _Optional[str] = ..., id: _Optional[int] = ..., owned: _Optional[int] = ..., granted: _Optional[int] = ..., visible: _Optional[int] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class DropTenantResponse(_message.Message):
    __slots__ = ("deleted", "revoked")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    revoked: int
    def __init__(self, deleted: _Optional[int] = ..., revoked: _Optional[int] = ...) -> None: ...
