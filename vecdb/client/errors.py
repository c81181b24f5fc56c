"""gRPC status -> the same ``vecdb.errors`` classes the embedded API raises.

Codes with no ``vecdb.errors`` twin (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, CANCELLED...) become
``RemoteError`` with the status code in ``.code``.
"""

from __future__ import annotations

import grpc

from vecdb._proto.wire import CODE_TO_ERROR
from vecdb.errors import VecdbError


class RemoteError(VecdbError):
    """A server or transport failure that is not the caller's input (see ``.code``)."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code
        self.grpc_code = code


def from_rpc_error(e: grpc.RpcError) -> VecdbError:
    """The ``vecdb.errors`` exception for a failed call."""
    code = e.code() if hasattr(e, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (e.details() if hasattr(e, "details") else None) or name
    cls = CODE_TO_ERROR.get(name)
    if cls is not None:
        return cls(details)
    return RemoteError(f"{name}: {details}", name)
