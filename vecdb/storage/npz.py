"""Writing and reading ``.npz`` archives without numpy's copy buffers.

``np.lib.format.write_array`` on a stream that is not a real file (a zip member) writes a
16 MiB ``bytes`` copy per block of the array; ``write_npy_into`` writes a plain C-contiguous
array from its own memory instead, with the same bytes as ``np.save``. Kept apart
from the index modules so that the engine's checkpoint can use it without loading any of them.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from typing import IO, Any

import numpy as np

from vecdb.errors import InvalidArgument

_WRITE_BLOCK = 1 << 20  # bytes per write of ``write_npy_into``: its only buffer is the zip's


def write_npy_into(e: IO[bytes], a: Any) -> None:
    """Write ``a`` as ``.npy`` into the open binary stream ``e`` (e.g. a zip member), byte for
    byte as ``np.save``. A plain C-contiguous array of a legacy, object-free dtype whose header
    fits the 1.0 format is written from its own memory in 1 MiB slices (no copy); anything
    else (subclasses such as masked arrays, other layouts, headers needing 2.0/3.0) goes
    through ``np.lib.format.write_array``."""
    fmt = np.lib.format
    a = np.asanyarray(a)
    if (type(a) in (np.ndarray, np.memmap) and a.flags.c_contiguous
            and not a.dtype.hasobject and getattr(type(a.dtype), "_legacy", True)):
        hdr = io.BytesIO()
        try:  # built before anything reaches ``e``: a header numpy cannot write as 1.0
            fmt.write_array_header_1_0(hdr, fmt.header_data_from_array_1_0(a))
        except ValueError:  # over 64 KiB (2.0) or not latin-1 (3.0, a UnicodeEncodeError)
            hdr = None
        if hdr is not None:
            e.write(hdr.getbuffer())
            raw = a.reshape(-1).view(np.uint8)
            for i in range(0, len(raw), _WRITE_BLOCK):
                e.write(memoryview(raw[i:i + _WRITE_BLOCK]))
            return
    fmt.write_array(e, a, allow_pickle=False)


def write_npz(f: IO[bytes], arrays: dict[str, Any], files: dict[str, str] | None = None) -> None:
    """``np.savez`` into the open binary file ``f`` (uncompressed, readable by ``np.load``),
    plus ``files``: name -> path of a file stored as a uint8 array, copied in blocks (never
    held in memory). Arrays are written from where they are (``write_npy_into``: no copy)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as e:
                write_npy_into(e, a)
        for name, p in (files or {}).items():
            with z.open(name + ".npy", "w", force_zip64=True) as e, open(p, "rb") as src:
                hdr = {"descr": "|u1", "fortran_order": False, "shape": (os.path.getsize(p),)}
                np.lib.format.write_array_header_2_0(e, hdr)
                shutil.copyfileobj(src, e, 4 << 20)


def npz_member_to_file(z: Any, name: str, path: str) -> str:
    """Copy the uint8 array ``name`` of the open ``np.load`` archive ``z`` (written by
    ``write_npz`` or ``np.savez``) to a raw file at ``path``, in blocks; returns ``path``."""
    with z.zip.open(name + ".npy") as e, open(path, "wb") as out:
        fmt = np.lib.format
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(
            fmt.read_magic(e))
        if read is None:
            raise InvalidArgument(f"{name}: unsupported .npy header version")
        shape, _, dtype = read(e)
        if dtype != np.uint8 or len(shape) != 1:
            raise InvalidArgument(f"{name}: expected a 1-D uint8 array, got {dtype} {shape}")
        shutil.copyfileobj(e, out, 4 << 20)
    return path
