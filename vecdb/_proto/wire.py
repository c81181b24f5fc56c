"""Wire helpers shared by the server and the client SDK: packed vectors and error codes.

Kept beside the generated stubs (and outside ``v1/``, which the generator rewrites) because both
sides need exactly the same packing rules and neither may import the other.
"""

from __future__ import annotations

import json

import numpy as np

from vecdb import errors
from vecdb._proto.v1 import common_pb2

_F32 = np.dtype("<f4")


def pack_vectors(X: np.ndarray) -> common_pb2.Vectors:
    """A 2-D array -> ``Vectors`` (row-major little-endian float32)."""
    X = np.ascontiguousarray(X, dtype=_F32)
    if X.ndim != 2:
        raise errors.InvalidArgument(f"vectors: expected a 2-D array, got shape {X.shape}")
    return common_pb2.Vectors(data=X.tobytes(), dim=X.shape[1], dtype=common_pb2.FLOAT32)


def unpack_vectors(v: common_pb2.Vectors, what: str = "vectors", n: int | None = None,
                   dim: int | None = None) -> np.ndarray:
    """``Vectors`` -> float32 array [n, dim] (a read-only view of the message bytes).

    Checks the dtype, that ``dim`` is positive (and equals ``dim`` when given: DimensionMismatch)
    and that the byte length is a whole number of rows (``n`` rows when given)."""
    if v.dtype not in (common_pb2.DTYPE_UNSPECIFIED, common_pb2.FLOAT32):
        raise errors.InvalidArgument(f"{what}: unsupported dtype {v.dtype}; send FLOAT32")
    if v.dim == 0:
        if not v.data and n in (None, 0):
            return np.zeros((0, dim or 0), dtype=np.float32)
        raise errors.InvalidArgument(f"{what}: dim must be > 0")
    if dim is not None and v.dim != dim:
        raise errors.DimensionMismatch(f"{what}: dimension {v.dim} does not match the "
                                       f"collection's {dim}")
    row = v.dim * 4
    if len(v.data) % row:
        raise errors.InvalidArgument(f"{what}: {len(v.data)} bytes is not a whole number of "
                                     f"{v.dim}-d float32 rows")
    rows = len(v.data) // row
    if n is not None and rows != n:
        raise errors.InvalidArgument(f"{what}: got {rows} vectors for {n} ids")
    return np.frombuffer(v.data, dtype=_F32).reshape(rows, v.dim)


def dumps_payload(p) -> bytes:
    """A payload dict (or None) -> JSON bytes (b"" = none)."""
    if p is None:
        return b""
    if not isinstance(p, dict):
        raise errors.InvalidArgument(f"payload: expected a dict or None, got {type(p).__name__}")
    try:
        return json.dumps(p, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise errors.InvalidArgument(f"payload: not JSON-serialisable ({e})") from None


def loads_payload(b: bytes, what: str = "payload"):
    """JSON bytes -> dict (b"" -> None); InvalidArgument for anything but a JSON object."""
    if not b:
        return None
    try:
        p = json.loads(b)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.InvalidArgument(f"{what}: not valid JSON ({e})") from None
    if not isinstance(p, dict):
        raise errors.InvalidArgument(f"{what}: expected a JSON object, got {type(p).__name__}")
    return p


def loads_params(s: str, what: str = "params_json") -> dict | None:
    """Index knobs as a JSON object string ("" -> None)."""
    if not s:
        return None
    try:
        p = json.loads(s)
    except ValueError as e:
        raise errors.InvalidArgument(f"{what}: not valid JSON ({e})") from None
    if not isinstance(p, dict):
        raise errors.InvalidArgument(f"{what}: expected a JSON object")
    return p


# -- status codes <-> vecdb.errors ---------------------------------------------------------
# The most specific class per code, for the client to raise (DimensionMismatch and
# NonFiniteValue travel as INVALID_ARGUMENT and come back as InvalidArgument).
CODE_TO_ERROR: dict[str, type[errors.VecdbError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "ALREADY_EXISTS": errors.AlreadyExists,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "OUT_OF_RANGE": errors.InvalidArgument,
}
