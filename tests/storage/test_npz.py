"""vecdb.storage.npz: ``.npy``/``.npz`` written from the arrays' own memory, byte for byte as
numpy writes them, and numpy's own writer for everything its fast path does not cover."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from vecdb.errors import InvalidArgument
from vecdb.storage import npz


def _np_save(a) -> bytes:
    ref = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Stored array in format 2.0/3.0"
        np.save(ref, a, allow_pickle=False)
    return ref.getvalue()


def _ours(a) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        npz.write_npy_into(out, a)
    return out.getvalue()


@pytest.fixture
def numpy_writes(monkeypatch):
    """The arrays ``np.lib.format.write_array`` is called with (the slow path)."""
    seen: list[np.ndarray] = []
    real = np.lib.format.write_array

    def spy(fp, array, *args, **kw):
        seen.append(array)
        return real(fp, array, *args, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", spy)
    return seen


def test_write_npz_members_match_np_save(monkeypatch, numpy_writes):
    """``write_npz`` writes C-contiguous arrays from their own memory in slices (here 1 KiB,
    so large arrays take many) and the rest through numpy: every member reads back equal, with
    its dtype and shape, and its bytes are those ``np.save`` writes."""
    monkeypatch.setattr(npz, "_WRITE_BLOCK", 1024)
    rng = np.random.default_rng(3)
    arrays = {"i8": np.arange(100_003, dtype=np.int64), "b": rng.random(5000) < 0.5,
              "f2": rng.standard_normal((700, 13)).astype(np.float32),
              "strided": np.arange(5000, dtype=np.int32)[::3],
              "fortran": np.asfortranarray(rng.standard_normal((40, 7))),
              "empty": np.zeros(0, np.uint8),
              "rec": np.zeros(999, dtype=[("slot", "<i8"), ("id", "<u8"), ("owner", "<i4")])}
    arrays["rec"]["slot"] = np.arange(999)
    f = io.BytesIO()
    npz.write_npz(f, arrays)
    # only the two layouts that are not C-contiguous went through numpy's writer
    assert sorted(id(a) for a in numpy_writes) == sorted(
        id(arrays[k]) for k in ("strided", "fortran"))
    f.seek(0)
    with np.load(f) as z, zipfile.ZipFile(f) as zf:
        assert sorted(z.files) == sorted(arrays)
        for k, a in arrays.items():
            got = z[k]
            assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a), k
            assert zf.read(k + ".npy") == _np_save(a), k


def test_write_npz_is_np_savez():
    """The whole archive equals ``np.savez``'s but for the members' zip timestamps (same
    names, order, sizes, offsets and data)."""
    arrays = {"__meta__": np.frombuffer(b'{"kind": "x"}', np.uint8),
              "a": np.arange(1000, dtype=np.float32).reshape(100, 10),
              "t": np.arange(10, dtype=np.int64)[::2]}
    ours, ref = io.BytesIO(), io.BytesIO()
    npz.write_npz(ours, arrays)
    np.savez(ref, **arrays)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(ref) as b:
        ia, ib = a.infolist(), b.infolist()
        assert [(i.filename, i.header_offset, i.file_size, i.CRC) for i in ia] == \
            [(i.filename, i.header_offset, i.file_size, i.CRC) for i in ib]
        assert len(ours.getvalue()) == len(ref.getvalue())


class _Sub(np.ndarray):
    """An ndarray subclass: written by numpy's writer, like np.save does."""


def _big_header_dtype() -> np.dtype:
    # 3000 fields with 20-character names: a header over 64 KiB (format 2.0)
    return np.dtype([(f"field_{i:014d}", "<i2") for i in range(3000)])


@pytest.mark.parametrize("case", ["0-d", "0-d-rec", "big-endian", "big-endian-2d",
                                  "header-2.0", "non-latin-1", "masked", "masked-nomask",
                                  "memmap", "subclass", "readonly", "negative-stride"])
def test_write_npy_into_matches_np_save(case, tmp_path, numpy_writes):
    """Each case is written byte for byte as ``np.save`` writes it (and loads back equal);
    only plain C-contiguous ndarrays/memmaps with a 1.0 header take the fast path."""
    rng = np.random.default_rng(7)
    fast = True
    if case == "0-d":
        a = np.array(3.25, dtype=np.float64)
    elif case == "0-d-rec":
        a = np.zeros((), dtype=[("slot", "<i8"), ("owner", ">i4")])
    elif case == "big-endian":
        a = np.arange(10_000, dtype=">i4")
    elif case == "big-endian-2d":
        a = rng.standard_normal((50, 9)).astype(">f8")
    elif case == "header-2.0":
        a = np.zeros(3, dtype=_big_header_dtype())
        a["field_00000000002999"] = [1, 2, 3]
        fast = False
    elif case == "non-latin-1":
        a = np.zeros(4, dtype=[("\u0416\u4e2d", "<i4"), ("x", "<f4")])  # a 3.0 (utf-8) header
        a["\u0416\u4e2d"] = [1, 2, 3, 4]
        fast = False
    elif case == "masked":
        a = np.ma.masked_array(np.arange(12.0).reshape(3, 4), mask=np.arange(12) % 3 == 0)
        fast = False
    elif case == "masked-nomask":
        a = np.ma.masked_array(np.arange(6, dtype=np.int16))
        fast = False
    elif case == "memmap":
        np.arange(4096, dtype=np.uint32).tofile(tmp_path / "m")
        a = np.memmap(tmp_path / "m", dtype=np.uint32, mode="r", shape=(64, 64))
    elif case == "subclass":
        a = np.arange(6.0).reshape(2, 3).view(_Sub)
        fast = False
    elif case == "readonly":
        a = np.arange(300, dtype=np.int64)
        a.setflags(write=False)
    else:
        a = np.arange(300, dtype=np.int64)[::-1]
        fast = False
    got = _ours(a)
    assert (not numpy_writes) == fast  # before np.save (which calls write_array) below
    assert got == _np_save(a)
    back = np.load(io.BytesIO(got), allow_pickle=False, max_header_size=1 << 20)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, np.asarray(a))


def test_header_versions_as_numpy_writes_them():
    """A header over 64 KiB is written as 2.0 and a non-latin-1 field name as 3.0, as np.save
    does (the 1.0 attempt raises before anything is written)."""
    assert _ours(np.zeros(2, dtype=_big_header_dtype()))[6:8] == b"\x02\x00"
    assert _ours(np.zeros(2, dtype=[("\u00e9", "<i4")]))[6:8] == b"\x01\x00"  # latin-1: 1.0
    assert _ours(np.zeros(2, dtype=[("\u0416", "<i4")]))[6:8] == b"\x03\x00"


def test_object_and_user_dtypes_are_refused():
    """Arrays numpy would pickle (object, and non-legacy dtypes such as StringDType) are
    refused as numpy refuses them with ``allow_pickle=False``, never written as raw memory."""
    with pytest.raises(ValueError):
        npz.write_npy_into(io.BytesIO(), np.array([{"a": 1}, None], dtype=object))
    if hasattr(np.dtypes, "StringDType"):
        with pytest.raises(ValueError), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Custom dtypes are saved as ..."
            npz.write_npy_into(io.BytesIO(), np.array(["a", "bb"], dtype=np.dtypes.StringDType()))


def test_files_round_trip_through_npz_member_to_file(tmp_path):
    """A ``files`` member is stored as a 1-D uint8 array (readable by ``np.load``) and copied
    back out byte for byte; a member that is not one is refused."""
    src = tmp_path / "blob"
    data = np.random.default_rng(1).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    src.write_bytes(data)
    with open(tmp_path / "a.npz", "wb") as f:
        npz.write_npz(f, {"x": np.arange(5)}, {"blob": str(src)})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z["blob"].tobytes() == data
        out = npz.npz_member_to_file(z, "blob", str(tmp_path / "out"))
        assert open(out, "rb").read() == data
        with pytest.raises(InvalidArgument):
            npz.npz_member_to_file(z, "x", str(tmp_path / "out2"))
