"""One exception hierarchy for vecdb, mapped 1:1 onto gRPC status codes by the server.

Every error a caller can cause is a ``VecdbError`` and, because bad input is a value problem, a
``ValueError`` too, so plain ``except ValueError`` keeps working for library users.
"""

from __future__ import annotations


class VecdbError(ValueError):
    """Base of all vecdb errors. ``grpc_code`` names the status the server returns."""

    grpc_code = "INTERNAL"


class InvalidArgument(VecdbError):
    """Malformed input: wrong dimension, NaN/inf, bad dtype, unknown parameter, ..."""

    grpc_code = "INVALID_ARGUMENT"


class DimensionMismatch(InvalidArgument):
    """A vector's dimension differs from the collection/index dimension."""


class NonFiniteValue(InvalidArgument):
    """A vector contains NaN or +/-inf."""


class NotFound(VecdbError):
    """Unknown collection, tenant, id or key."""

    grpc_code = "NOT_FOUND"


class AlreadyExists(VecdbError):
    """Creating something whose name or id is already taken."""

    grpc_code = "ALREADY_EXISTS"


class PermissionDenied(VecdbError):
    """The caller is authenticated but may not act on this tenant or vector."""

    grpc_code = "PERMISSION_DENIED"


class Unauthenticated(VecdbError):
    """Missing or invalid API key."""

    grpc_code = "UNAUTHENTICATED"


class ResourceExhausted(VecdbError):
    """Request too large or a limit (capacity, memory budget) reached."""

    grpc_code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(VecdbError):
    """The operation is valid but the object is in the wrong state (closed, locked, ...)."""

    grpc_code = "FAILED_PRECONDITION"


class BackendUnavailable(VecdbError):
    """A requested compute backend (e.g. cupy) is not installed or has no device."""

    grpc_code = "FAILED_PRECONDITION"


__all__ = [
    "VecdbError",
    "InvalidArgument",
    "DimensionMismatch",
    "NonFiniteValue",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "FailedPrecondition",
    "BackendUnavailable",
]
