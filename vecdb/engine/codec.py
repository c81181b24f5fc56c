"""Byte layouts of the engine's keys and values in the column families, and of oplog records.

Keys are big-endian so RocksDB's bytewise order is numeric order (ordered scans of slots and of
oplog sequences). Values are little-endian numpy buffers. Everything is built from numpy views in
bulk: per-vector Python work is the bottleneck of ingestion, so one batch of n vectors costs a few
numpy calls plus n ``bytes`` slices, never n ``struct.pack`` calls.

===========  ====================  ===============================================================
cf           key                   value
===========  ====================  ===============================================================
vectors      slot  (u64 BE)        id (u64 LE) | owner tenant (i32 LE) | vector (f32 LE x dim)
acl          slot  (u64 BE)        tenants granted besides the owner (i32 LE, sorted)
payload      slot  (u64 BE)        JSON (utf-8)
oplog        seq   (u64 BE)        record (see ``encode_record``)
meta         ascii name            JSON or raw (schema, tenants, checkpoint)
===========  ====================  ===============================================================

The ``ids`` family is not written per vector: each ``vectors`` value already carries its id
(slot -> id), and id -> slot is an in-memory dict rebuilt from the checkpoint or from
``vectors``. A second key per vector cost ~20% of ingest throughput for no reader.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

_HDR = struct.Struct("<I")


def be_keys(values: np.ndarray) -> list[bytes]:
    """8-byte big-endian keys of non-negative integers, in bulk."""
    buf = np.ascontiguousarray(values, dtype=">u8").tobytes()
    return [buf[i : i + 8] for i in range(0, len(buf), 8)]


def be_key(value: int) -> bytes:
    return int(value).to_bytes(8, "big")


def key_int(key: bytes) -> int:
    return int.from_bytes(key, "big")


def key_ints(keys: list[bytes]) -> np.ndarray:
    """int64 values of big-endian keys, in bulk (the inverse of ``be_keys``)."""
    if all(len(k) == 8 for k in keys):
        return np.frombuffer(b"".join(keys), dtype=">u8").astype(np.int64)
    return np.array([key_int(k) for k in keys], dtype=np.int64)


def vector_dtype(dim: int) -> np.dtype:
    """Layout of one ``vectors`` value: id, owner, vector."""
    return np.dtype([("id", "<u8"), ("owner", "<i4"), ("vec", "<f4", (dim,))])


def pack_vectors(ids: np.ndarray, owners: np.ndarray, X: np.ndarray) -> list[bytes]:
    """``vectors`` values of n rows, sliced from one buffer."""
    dt = vector_dtype(X.shape[1])
    rec = np.empty(len(ids), dtype=dt)
    rec["id"] = ids
    rec["owner"] = owners
    rec["vec"] = X
    buf = rec.tobytes()
    w = dt.itemsize
    return [buf[i : i + w] for i in range(0, len(buf), w)]


def unpack_vectors(values: list[bytes], dim: int) -> np.ndarray:
    """Structured array (id, owner, vec) of ``vectors`` values."""
    return np.frombuffer(b"".join(values), dtype=vector_dtype(dim))


def le_u64_values(values: np.ndarray) -> list[bytes]:
    buf = np.ascontiguousarray(values, dtype="<u8").tobytes()
    return [buf[i : i + 8] for i in range(0, len(buf), 8)]


def encode_record(op: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One oplog record: u32 header length | JSON header | raw arrays back to back.

    The header carries ``op``, the scalar fields and each array's dtype and shape. No pickle: a
    record is data, readable by any version that knows the ops.
    """
    specs = []
    blobs = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        specs.append([name, a.dtype.str, list(a.shape)])
        blobs.append(a.tobytes())
    hdr = json.dumps({"op": op, "meta": meta, "arrays": specs}, separators=(",", ":")).encode()
    return b"".join([_HDR.pack(len(hdr)), hdr, *blobs])


def decode_record(buf: bytes) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    (n,) = _HDR.unpack_from(buf, 0)
    hdr = json.loads(buf[4 : 4 + n])
    off = 4 + n
    arrays = {}
    for name, dt, shape in hdr["arrays"]:
        dt = np.dtype(dt)
        count = int(np.prod(shape)) if shape else 1
        arrays[name] = np.frombuffer(buf, dtype=dt, count=count, offset=off).reshape(shape)
        off += count * dt.itemsize
    return hdr["op"], hdr["meta"], arrays
