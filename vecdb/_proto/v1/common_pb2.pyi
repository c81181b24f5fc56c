from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]

class ItemStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATUS_UNSPECIFIED: _ClassVar[ItemStatus]
    CREATED: _ClassVar[ItemStatus]
    UPDATED: _ClassVar[ItemStatus]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
ITEM_STATUS_UNSPECIFIED: ItemStatus
CREATED: ItemStatus
UPDATED: ItemStatus

class Vectors(_message.Message):
    __slots__ = ("data", "dim", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dim: int
    dtype: DType
    def __init__(self, data: _Optional[bytes] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...
