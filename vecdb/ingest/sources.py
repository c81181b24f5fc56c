"""Shard readers: ``.npy`` (memory-mapped), ``.fvecs/.bvecs/.ivecs`` and Parquet, streamed in
bounded batches with validation that names the file and the row.

A *source* is a file, a folder (its supported files, sorted) or a glob, or a list of those; each
may also be a URI of any filesystem pyarrow opens (``s3://bucket/prefix/``, ``gs://...``,
``hdfs://host:port/path``, ``file:///abs/path``; ``pyarrow.fs.FileSystem.from_uri``) or, when
fsspec is installed, any fsspec protocol pyarrow does not know (``memory://``, ...). Globs are
matched on the remote listing. Remote shards are read with ranged reads (no local copy); a shard
that cannot be opened (missing object, no credentials, no such bucket) is reported with its URI
and the reason, like any other bad shard. It is
planned once (``plan``): every shard's row count comes from its header or metadata (no data read),
which fixes each row's *global row number* = shard offset + row. Default ids and the bulk build's
slots are derived from that number, so a re-run of the same job produces the same ids (that is what
makes a restarted job idempotent).

Validation confines a problem to its shard (a bad shard or row never stops the others):

- wrong dimension (header or a record's own dim prefix) -> the shard is rejected (``ShardError``,
  raised when it is opened) and reported; the other shards go on;
- non-finite rows -> those rows are skipped and reported (``BatchError`` entries: file, row, why);
- a truncated file -> the complete rows before the cut are read, the cut is reported at its row
  (also when a remote object turns out shorter than its header promised part-way through, as
  its current size confirms: a data error, not retried);
- a read error that is not known to be permanent (``is_permanent``; a transient one,
  ``is_transient``: a connection error, a timeout, a storage service's throttling, 5xx or
  network error; or an unknown one: another library's network error, a bug) -> retried at the
  row where it stopped, with bounded attempts and back-off (``Retry``): every row once, no gaps.
  Only when the attempts run out is the shard given up: ``ShardReadError`` names the file and
  the first unread row, with ``retryable`` (a later run of the job may resume it there). A
  read that returns no bytes before the object's current end is such an error (not a cut).
  A permanent error while reading (a missing object, access denied, a corrupt Parquet page:
  ``is_permanent``) gives ``ShardReadError`` at the first unread row, not retried.

Parquet columns: ``vector`` (fixed-size list or list of float, or binary of dim x float32 LE),
optional ``id`` (integer), ``tenant`` (owner tenant name), ``acl`` (list of tenant names granted
besides the owner) and ``payload`` (JSON string or a struct). Column names are settable.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecdb.errors import DimensionMismatch, InvalidArgument, VecdbError

EXTENSIONS = (".npy", ".fvecs", ".bvecs", ".ivecs", ".parquet", ".pq")


class ShardError(InvalidArgument):
    """A whole shard is unreadable (wrong dim, bad header): reported, the job goes on."""


class ShardReadError(ShardError):
    """Reading a shard stopped at file row ``row`` (a permanent error such as a missing object,
    denied access or corrupt data, or a transient one whose retries ran out); the rows before
    ``row`` were delivered.
    ``retryable``: the error was transient (the storage may answer later), so a later run of the
    job may resume the shard at ``row``; a permanent one would fail the same way again."""

    def __init__(self, path: str, row: int, message: str, retryable: bool = False) -> None:
        super().__init__(f"{path}: row {row}: {message}")
        self.path, self.row, self.retryable = path, int(row), bool(retryable)


@dataclass(frozen=True)
class Retry:
    """How transient read errors (``is_transient``) are retried: at most ``attempts`` tries at
    one position (a batch that gets further starts the count again), sleeping a jittered
    ``backoff_s``, doubled after each failure up to ``max_backoff_s``, between them."""

    attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or \
                self.attempts < 1:
            raise InvalidArgument(f"Retry.attempts must be a positive int, got {self.attempts!r}")
        if not self.backoff_s >= 0 or not self.max_backoff_s >= 0:
            raise InvalidArgument("Retry back-off times must be >= 0")

    def sleep(self, failures: int) -> None:
        """Wait before the try that follows the ``failures``-th consecutive failure."""
        d = min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)
        time.sleep(d * (0.5 + random.random()))


DEFAULT_RETRY = Retry()

class StorageUnavailable(VecdbError):
    """Planning could not read a shard's header because the storage did not answer (transient
    errors outlasted the retries). The job must not start without it (every later shard's row
    offsets, hence default ids, depend on its row count): nothing was ingested, run it again."""

    grpc_code = "UNAVAILABLE"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"storage unreachable while planning {path}: {message}; nothing was "
                         f"ingested: run the same command again when the storage answers")
        self.path = path


# exception types that mean "try again later" whatever their message
_TRANSIENT_TYPES = (ConnectionError, TimeoutError, InterruptedError, BlockingIOError)
# OSError types that mean "this will fail again": the object or the access is wrong
_PERMANENT_OS_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError,
                       NotADirectoryError, FileExistsError)
# A plain OSError is transient only when its message says so: pyarrow's S3/GCS/Azure/HDFS
# filesystems raise plain OSError for every service error, the permanent ones (ACCESS_DENIED,
# NO_SUCH_BUCKET, bad credentials) and corrupt data ("Couldn't deserialize thrift") included.
# An S3 error names its code ("AWS Error <CODE>"): it is classified by that code alone. Other
# messages are matched (case-insensitively, quoted keys and paths left out) against
# TRANSIENT_MESSAGES and an HTTP 5xx/429 status. After Ray Data's retried_io_errors.
TRANSIENT_AWS_CODES = frozenset({
    "NETWORK_CONNECTION", "SLOW_DOWN", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "THROTTLING",
    "REQUEST_TIMEOUT", "REQUEST_LIMIT_EXCEEDED", "REQUEST_TIMEOUT_EXCEPTION",
})
TRANSIENT_MESSAGES = (
    "requesttimeout", "slowdown", "serviceunavailable", "service unavailable", "internalerror",
    "too many requests", "unavailable", "rate limit", "ratelimit", "timed out", "timeout",
    "connection reset", "connection refused", "connection aborted", "broken pipe",
    "temporary failure in name resolution", "try again", "curlcode: 28", "unable to connect",
    "connection was forcibly closed", "server disconnected",
)
_AWS_CODE = re.compile(r"AWS Error (\w+)")
_HTTP_STATUS = re.compile(r"(?:http|status|code|error)\D{0,12}\b(5\d\d|429)\b", re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _transient_text(text: str) -> bool:
    """Whether a plain OSError's message says the storage will answer later (see above)."""
    code = _AWS_CODE.search(text)
    if code is not None and code.group(1) != "UNKNOWN":  # S3: the code decides
        return code.group(1) in TRANSIENT_AWS_CODES
    text = _QUOTED.sub("''", text)  # a key or path is not a reason ("timeout.npy")
    if _HTTP_STATUS.search(text):
        return True
    low = text.lower()
    return any(m in low for m in TRANSIENT_MESSAGES)


def is_transient(e: BaseException) -> bool:
    """Whether a read error is known to be temporary: a connection error, a timeout, an
    interrupted call, or a plain ``OSError`` whose text says so (an S3 error code in
    ``TRANSIENT_AWS_CODES``, HTTP 5xx/429, or one of ``TRANSIENT_MESSAGES``: throttling,
    unavailable, network). ``is_permanent`` tells the errors that will fail again."""
    if isinstance(e, _TRANSIENT_TYPES):
        return True
    if type(e) is not OSError:  # FileNotFoundError, PermissionError, ... and non-OS errors
        return False
    return _transient_text(str(e))


def is_permanent(e: BaseException) -> bool:
    """Whether a read error is known to fail the same way again (not worth a retry, nor a rerun
    of the job): a ``ShardError`` or another ``InvalidArgument`` (no such source); a data error
    (``ValueError``, pyarrow's ``ArrowInvalid`` among them, and pyarrow's other non-I/O
    ``ArrowException``s: not implemented, wrong type); a missing object or denied access
    (``FileNotFoundError``, ``PermissionError``, ...); or a plain ``OSError`` whose text is not
    transient (S3's ACCESS_DENIED, NO_SUCH_BUCKET, bad credentials, pyarrow's "Couldn't
    deserialize thrift"). Everything else is retried and, when the attempts run out, given up
    as retryable: a transient error, another library's network error (aiohttp, botocore,
    gcsfs: often not an OSError, or an OSError subclass), a ``MemoryError`` (given up at once,
    not retried in the task: the memory may be there for a rerun; re-raising it would abort
    the whole Ray Data round), or a bug of ours (a rerun after the fix reads the shard;
    ``give_up_runs`` bounds the reruns)."""
    if isinstance(e, InvalidArgument | ValueError):  # ShardError, a bad source, bad data
        return True
    if isinstance(e, OSError):
        if isinstance(e, _TRANSIENT_TYPES):
            return False
        if isinstance(e, _PERMANENT_OS_TYPES):
            return True
        return type(e) is OSError and not _transient_text(str(e))
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency of every reader
        return False
    return isinstance(e, pa.ArrowException) and not isinstance(e, MemoryError)


class _Tries:
    """One retry loop's count of failures in a row at one position (``progress`` resets it):
    the rule shared by planning's ``_with_retry`` and ``read_batches``."""

    def __init__(self, retry: Retry) -> None:
        self.retry = retry
        self.failures = 0

    def progress(self) -> None:
        """The read got further: the next failure is the first at a new position."""
        self.failures = 0

    def failed(self, e: BaseException) -> str:
        """Count failure ``e``: ``"permanent"`` (``is_permanent``: do not retry), ``"give_up"``
        (the attempts ran out, or a MemoryError: retryable by a later run) or ``"retry"`` (after
        the back-off sleep)."""
        self.failures += 1
        if is_permanent(e):
            return "permanent"
        if isinstance(e, MemoryError) or self.failures >= self.retry.attempts:
            return "give_up"
        self.retry.sleep(self.failures)
        return "retry"


class _ShortRead(Exception):
    """A ranged read got fewer bytes than the file's header promised: ``records`` are the
    complete records it did get."""

    def __init__(self, records: np.ndarray) -> None:
        super().__init__("short read")
        self.records = records


@dataclass(frozen=True)
class Columns:
    """Parquet column names (``None`` = not present in the data)."""

    vector: str = "vector"
    id: str | None = "id"
    tenant: str | None = "tenant"
    acl: str | None = "acl"
    payload: str | None = "payload"


DEFAULT_COLUMNS = Columns()


@dataclass(frozen=True)
class Shard:
    """One input file with its planned row range in the job (``offset`` = global row number of
    its first row) and its size in bytes at planning (``size``; a remote shard's reads use it
    instead of asking the store again)."""

    path: str
    kind: str
    rows: int
    offset: int
    dim: int | None
    size: int | None = None


@dataclass
class Batch:
    """A validated batch of one shard: rows ``[start, end)`` of the file, of which ``rows``
    (file row numbers) were good. ``errors`` lists the bad rows (dicts: file, row, error)."""

    shard: str
    start: int
    end: int
    rows: np.ndarray
    vectors: np.ndarray
    ids: np.ndarray | None = None
    tenants: list[str] | None = None
    acl: list[list[str]] | None = None
    payloads: list[Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise InvalidArgument(f"{path}: unsupported file type {ext!r} (expected one of "
                              f"{', '.join(EXTENSIONS)})")
    return "parquet" if ext in (".parquet", ".pq") else ext[1:]


# -- filesystems: local paths, and URIs through pyarrow.fs (or fsspec) --------------------------
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_FS_CACHE: dict[str, tuple[Any, str]] = {}  # folder URI -> (pyarrow filesystem, its path there)
_FS_LOCK = threading.Lock()


def is_uri(path: str) -> bool:
    """``scheme://...`` (two or more letters: a Windows drive letter is not a scheme)."""
    return bool(_URI.match(path))


def _resolve(uri: str) -> tuple[Any, str]:
    """(``pyarrow.fs.FileSystem``, path inside it) of ``uri``: pyarrow's own filesystems first
    (``FileSystem.from_uri``: file, s3, gs, hdfs, ...), else fsspec's for that protocol wrapped
    in ``pyarrow.fs.PyFileSystem``. Errors name the URI: ``InvalidArgument`` for a scheme
    nothing here can open, ``OSError`` for a filesystem that cannot be reached (no such bucket,
    no credentials, no network, no libhdfs)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        pa_err = str(e)
    except OSError as e:
        raise OSError(f"{uri}: cannot open the filesystem ({e})") from None
    try:
        import fsspec
    except ImportError:
        raise InvalidArgument(f"{uri}: pyarrow cannot open this URI ({pa_err}) and fsspec is not "
                              f"installed") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ValueError as e:  # fsspec's "Protocol not known"
        raise InvalidArgument(f"{uri}: neither pyarrow ({pa_err}) nor fsspec ({e}) can open "
                              f"it") from None
    except ImportError as e:  # a known protocol whose package is missing (e.g. s3fs)
        raise InvalidArgument(f"{uri}: fsspec needs a package for it: {e}") from None
    except OSError as e:
        raise OSError(f"{uri}: cannot open the filesystem ({e})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _fs_path(uri: str) -> tuple[Any, str]:
    """``_resolve`` with the filesystem cached per folder (a worker reading many shards of one
    bucket prefix sets up its client once)."""
    folder, _, name = uri.rpartition("/")
    with _FS_LOCK:
        hit = _FS_CACHE.get(folder)
    if hit is None:
        fs, path = _resolve(uri)
        base = path[: len(path) - len(name)].rstrip("/") if path.endswith(name) else None
        if base is None:  # a path not ending in the URI's last segment: do not cache
            return fs, path
        with _FS_LOCK:
            _FS_CACHE[folder] = hit = (fs, base)
    return hit[0], f"{hit[1]}/{name}"


def file_size(path: str) -> int:
    """Bytes of a local file or of the object at a URI (``OSError`` if it is missing)."""
    if not is_uri(path):
        return os.path.getsize(path)
    import pyarrow.fs as pafs

    fs, p = _fs_path(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or object")
    if info.type != pafs.FileType.File:
        raise OSError(f"{path}: not a file")
    return int(info.size)


def open_input(path: str):
    """A seekable binary file of a local path or a URI (pyarrow ``RandomAccessFile``)."""
    if not is_uri(path):
        return open(path, "rb")
    fs, p = _fs_path(path)
    return fs.open_input_file(p)


class _RemoteRows:
    """Rows ``[i:j]`` of a fixed-record file behind a URI, read with one ranged read per slice
    (the remote stand-in for ``np.memmap``)."""

    def __init__(self, path: str, dtype: np.dtype, offset: int, n: int) -> None:
        self.f = open_input(path)
        self.dtype, self.offset, self.n = np.dtype(dtype), int(offset), int(n)

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(self.n)
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        size = self.dtype.itemsize
        raw = _read_fully(self.f, (b - a) * size, self.offset + a * size)
        if len(raw) != (b - a) * size:  # the object ends early: a data error, not transient
            raise _ShortRead(np.frombuffer(raw[: len(raw) // size * size], dtype=self.dtype))
        return np.frombuffer(raw, dtype=self.dtype)


def _read_fully(f: Any, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset`` of ``f``, with as many ``read_at`` calls as it takes (a file
    system may legally return fewer bytes per call, e.g. an fsspec file's one ``read``). Fewer
    than ``n`` only when the object's current size (``f.size()``) confirms that it ends there
    (a truncation); a read that returns no bytes before that end raises ``ConnectionError``
    (transient: retried like a dropped connection)."""
    raw = f.read_at(n, offset)
    if len(raw) >= n:
        return raw[:n] if len(raw) > n else raw
    parts, got = [raw], len(raw)
    while got < n:
        more = f.read_at(n - got, offset + got)
        if not more:
            size = f.size()
            if offset + got < size:
                raise ConnectionError(f"short read at byte {offset + got} of {size}: no bytes "
                                      f"returned before the object's end")
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)[:n]


def _records(path: str, dtype: np.dtype, offset: int, n: int):
    """Memory map of ``n`` records of ``dtype`` at ``offset`` (local) or ``_RemoteRows``."""
    if is_uri(path):
        return _RemoteRows(path, dtype, offset, n)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n,))


def _take(mm: Any, a: int, b: int) -> tuple[Any, int | None]:
    """Records ``[a, b)`` of ``mm`` and, when the file ended before ``b`` (a remote object
    shorter than its header promised), the row where it ended (else None)."""
    try:
        return mm[a:b], None
    except _ShortRead as e:
        return e.records, a + len(e.records)


def _size(path: str, size: int | None) -> int:
    """``size`` (known from planning) for a URI, else the file's size now (a local file is
    memory-mapped: its current size is what can be mapped)."""
    return size if size is not None and is_uri(path) else file_size(path)


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _discover_uri(s: str) -> list[str]:
    """Files of a URI source: one object, a folder (prefix) listing, or a glob matched on the
    listing of the folder before its first wildcard (``**`` and patterns with ``/`` list
    recursively)."""
    import pyarrow.fs as pafs

    if _has_glob(s):
        cut = min(s.index(c) for c in "*?[" if c in s)
        base = s[:cut].rpartition("/")[0]
        pattern = s[len(base) + 1:]
    else:
        base, pattern = s.rstrip("/"), None
    fs, root = _resolve(base)
    root = root.rstrip("/")
    try:
        info = fs.get_file_info(root) if pattern is None else None
        if info is not None and info.type == pafs.FileType.File:
            return [s]
        if info is not None and info.type == pafs.FileType.NotFound:
            raise InvalidArgument(f"source {s!r}: no such file, folder or object prefix")
        recursive = pattern is not None and ("/" in pattern or "**" in pattern)
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=recursive,
                                                     allow_not_found=pattern is not None))
    except OSError as e:
        if not is_permanent(e):  # the storage did not answer: the caller may retry
            raise
        raise InvalidArgument(f"source {s!r}: cannot list it ({e})") from None
    out = []
    for f in listing:
        if f.type != pafs.FileType.File or os.path.splitext(f.path)[1].lower() not in EXTENSIONS:
            continue
        rel = f.path[len(root):].lstrip("/")
        if pattern is None or fnmatch.fnmatchcase(rel, pattern):
            out.append(f"{base}/{rel}")
    if not out:
        raise InvalidArgument(f"source {s!r}: no matching .npy/.fvecs/.bvecs/.ivecs/.parquet "
                              f"files")
    return sorted(out)


def discover(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files of ``source``: a file, a folder (its supported files, sorted) or a glob, each a
    local path or a URI (see the module doc); or a list. Local paths come back absolute, URIs
    as given (folder and glob matches as ``<folder URI>/<relative path>``).
    Raises ``InvalidArgument`` when nothing matches or a URI cannot be listed."""
    if isinstance(source, str | os.PathLike):
        source = [source]
    out: list[str] = []
    for s in source:
        s = os.fspath(s)
        if is_uri(s):
            out += _discover_uri(s)
        elif os.path.isdir(s):
            out += sorted(os.path.join(s, f) for f in os.listdir(s)
                          if os.path.splitext(f)[1].lower() in EXTENSIONS)
        elif os.path.isfile(s):
            out.append(s)
        else:
            hits = sorted(p for p in glob.glob(s)
                          if os.path.isfile(p) and os.path.splitext(p)[1].lower() in EXTENSIONS)
            if not hits:
                raise InvalidArgument(f"source {s!r}: no such file, folder or matching glob")
            out += hits
    if not out:
        raise InvalidArgument(f"source {source!r}: no .npy/.fvecs/.bvecs/.ivecs/.parquet files")
    return [p if is_uri(p) else os.path.abspath(p) for p in dict.fromkeys(out)]


# -- per-format headers -------------------------------------------------------------------------
def _npy_header(path: str, size: int | None = None) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """(shape, dtype, data offset, complete rows actually present); ``size``: see ``_size``."""
    with open_input(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
        except ValueError as e:  # an OSError is a read error (retried if transient)
            raise ShardError(f"{path}: not a valid .npy file ({e})") from None
        off = f.tell()
    if fortran or len(shape) != 2:
        raise ShardError(f"{path}: expected a 2-D C-order array, got shape {shape}"
                         f"{' (Fortran order)' if fortran else ''}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ShardError(f"{path}: expected a numeric array, got dtype {dtype}")
    rowbytes = max(1, shape[1] * dtype.itemsize)
    present = min(shape[0], (_size(path, size) - off) // rowbytes)
    return shape, dtype, off, present


_VECS = {"fvecs": np.dtype("<f4"), "bvecs": np.dtype("u1"), "ivecs": np.dtype("<i4")}


def _vecs_header(path: str, kind: str, size: int | None = None) -> tuple[int, int, int, int]:
    """(dim, complete records, record bytes, file bytes) of an .fvecs/.bvecs/.ivecs file;
    ``size``: see ``_size``."""
    size = _size(path, size)
    if size < 4:
        raise ShardError(f"{path}: empty or truncated (no dimension header)")
    with open_input(path) as f:
        dim = int(np.frombuffer(f.read(4), dtype="<i4")[0])
    if dim <= 0 or dim > 1 << 20:
        raise ShardError(f"{path}: row 0: bad dimension header {dim}")
    rec = 4 + dim * _VECS[kind].itemsize
    return dim, size // rec, rec, size


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(open_input(path) if is_uri(path) else path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        if not is_permanent(e):  # perhaps the network: the caller may retry (is_permanent)
            raise
        raise ShardError(f"{path}: not a readable Parquet file ({e})") from None


def _shard_info(path: str, columns: Columns
                ) -> tuple[str, int, int | None, list[dict], int | None]:
    """``shard_info`` and the file's size in bytes (asked once; None for Parquet)."""
    kind = _kind(path)
    problems: list[dict] = []
    if kind == "npy":
        size = file_size(path)
        shape, _, _, present = _npy_header(path, size)
        if present < shape[0]:
            problems.append({"file": path, "row": int(present),
                             "error": f"truncated: header says {shape[0]} rows, file holds "
                                      f"{present} complete rows"})
        return kind, int(shape[0]), int(shape[1]), problems, size
    if kind in _VECS:
        dim, n, rec, size = _vecs_header(path, kind)
        if size % rec:
            problems.append({"file": path, "row": int(n),
                             "error": f"truncated: {size % rec} trailing bytes "
                                      f"after {n} complete records"})
        return kind, int(n), dim, problems, size
    pf = _parquet_file(path)
    if columns.vector not in pf.schema_arrow.names:
        raise ShardError(f"{path}: no vector column {columns.vector!r} "
                         f"(columns: {', '.join(pf.schema_arrow.names)})")
    t = pf.schema_arrow.field(columns.vector).type
    dim = int(t.list_size) if hasattr(t, "list_size") else None  # fixed-size list: in the schema
    return kind, int(pf.metadata.num_rows), dim, problems, None


def shard_info(path: str, columns: Columns = Columns()) -> tuple[str, int, int | None, list[dict]]:
    """(kind, planned rows, dim if known from the header, header-level problems) of ``path``.
    Planned rows count what the header promises; a truncation is a reported problem."""
    return _shard_info(path, columns)[:4]


class _GaveUp(OSError):
    """``_with_retry``'s retryable error whose attempts ran out (``cause``: the last one)."""

    def __init__(self, cause: BaseException, tries: int) -> None:
        why = str(cause) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{why} (after {tries} attempts)")
        self.cause = cause


def _with_retry(fn: Any, retry: Retry) -> Any:
    """``fn()``, tried again after an error that is not permanent (``is_permanent``; the same
    rule as ``read_batches``): a permanent error is raised as it is, another one whose attempts
    ran out (or a MemoryError) as ``_GaveUp``."""
    tries = _Tries(retry)
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified by _Tries
            verdict = tries.failed(e)
            if verdict == "permanent":
                raise
            if verdict == "give_up":
                raise _GaveUp(e, tries.failures) from e


def plan(files: Sequence[str], columns: Columns = Columns(), retry: Retry = DEFAULT_RETRY,
         transient: str = "reject") -> tuple[list[Shard], list[dict[str, Any]]]:
    """Shards with their global row offsets, and the shards rejected at planning (reported).
    A transient error reading a header is retried (``retry``); when the attempts run out, the
    shard is rejected (``transient="reject"``) or ``StorageUnavailable`` is raised
    (``transient="raise"``: a resumable job must not plan without it, since its row count
    shifts the offsets, hence the default ids, of every later shard)."""
    if transient not in ("reject", "raise"):
        raise InvalidArgument(f"transient must be 'reject' or 'raise', got {transient!r}")
    shards: list[Shard] = []
    rejected: list[dict[str, Any]] = []
    off = 0
    for p in files:
        try:
            kind, rows, dim, _, size = _with_retry(lambda p=p: _shard_info(p, columns), retry)
        except _GaveUp as e:
            if transient == "raise":
                raise StorageUnavailable(p, str(e)) from None
            rejected.append({"file": p, "row": 0, "error": str(e)})
            continue
        except Exception as e:  # noqa: BLE001 - _with_retry raises only permanent errors here
            rejected.append({"file": p, "row": 0, "error": str(e) or type(e).__name__})
            continue
        shards.append(Shard(p, kind, rows, off, dim, size))
        off += rows
    return shards, rejected


# -- reading ------------------------------------------------------------------------------------
def _finite_rows(path: str, first_row: int, X: np.ndarray, errors: list[dict]) -> np.ndarray:
    """Mask of finite rows; non-finite ones are reported with their file row."""
    ok = np.isfinite(X).all(axis=1)
    for i in np.flatnonzero(~ok)[:1000].tolist():
        errors.append({"file": path, "row": first_row + i, "error": "non-finite value (NaN/inf)"})
    return ok


def _check_dim(shard: Shard, dim: int | None, got: int) -> None:
    if dim is not None and got != dim:
        raise ShardError(f"{shard.path}: row 0: dimension {got}, expected {dim}")


def read_batches(shard: Shard, dim: int | None, batch_rows: int = 10_000, start: int = 0,
                 columns: Columns = Columns(), end: int | None = None,
                 retry: Retry = DEFAULT_RETRY) -> Iterator[Batch]:
    """Stream rows ``[start, end)`` (default: to the shard's end) of ``shard`` in batches of at
    most ``batch_rows``. Problems at the shard's end (a truncation) are reported by the batch
    that reaches it, so disjoint ranges of one shard report each problem once.

    A read error that is not permanent (``is_permanent``: a transient one, or an unknown one)
    re-opens the shard and goes on from the first row not yet delivered (the end of the last
    batch yielded: no row twice, none skipped), at most ``retry.attempts`` tries per position (a
    batch that gets further starts the count again; a MemoryError is not retried here).
    Permanent errors (a missing object, denied access, a corrupt Parquet page's
    ``ArrowInvalid``, ...), and the others whose attempts ran out (``retryable``: a later run
    may resume there), raise ``ShardReadError`` with that row. An error after the range's last
    row was delivered ends the range without one.

    Memory: one batch (npy/fvecs are memory-mapped; Parquet is read record batch by record batch).
    Raises ``ShardError`` at the first batch if the whole shard is unusable (wrong dim).
    """
    if batch_rows < 1:
        raise InvalidArgument("batch_rows must be >= 1")
    end = shard.rows if end is None else min(int(end), shard.rows)
    pos, tries = start, _Tries(retry)
    while True:
        try:
            for b in _read_from(shard, dim, batch_rows, pos, columns, end):
                yield b
                if b.end > pos:  # progress: the next failure is the first at a new position
                    pos = b.end
                    tries.progress()
            return
        except ShardError:  # already says what and where (wrong dim, bad header, ...)
            raise
        except Exception as e:  # noqa: BLE001 - classified by _Tries (see is_permanent)
            if pos >= end:  # every row delivered (the error came after the last one)
                return
            why = f"{type(e).__name__}: {e}"
            verdict = tries.failed(e)
            if verdict == "permanent":
                raise ShardReadError(shard.path, pos, why) from None
            if verdict == "give_up":
                raise ShardReadError(shard.path, pos, f"read failed after {tries.failures} "
                                                      f"attempts ({why})",
                                     retryable=True) from None


def _read_from(shard: Shard, dim: int | None, batch_rows: int, start: int, columns: Columns,
               end: int) -> Iterator[Batch]:
    """One attempt of ``read_batches``: open the shard and read ``[start, end)``."""
    if shard.kind == "npy":
        yield from _read_npy(shard, dim, batch_rows, start, end)
    elif shard.kind in _VECS:
        yield from _read_vecs(shard, dim, batch_rows, start, end)
    else:
        yield from _read_parquet(shard, dim, batch_rows, start, columns, end)


def _cut_error(path: str, row: int, promised: int) -> dict[str, Any]:
    """The error of a file that ended at ``row`` part-way through a read (a data error: the
    rows before it are kept, the shard is not read further, and it is not retried)."""
    return {"file": path, "row": int(row),
            "error": f"truncated: the file ends at row {row} though it promised {promised} rows "
                     f"(rows {row}..{promised - 1} missing)"}


def _read_npy(shard: Shard, dim, batch_rows: int, start: int, end: int) -> Iterator[Batch]:
    shape, dtype, off, present = _npy_header(shard.path, shard.size)
    _check_dim(shard, dim, shape[1])
    row = np.dtype((dtype, (shape[1],)))
    mm = _records(shard.path, row, off, present) if present else np.zeros((0, shape[1]), dtype)
    for s in range(start, end, batch_rows):
        e = min(s + batch_rows, end)
        errors: list[dict] = []
        hi = min(e, present)
        chunk, cut = _take(mm, s, hi) if hi > s else (np.zeros((0, shape[1]), dtype), None)
        X = np.asarray(chunk, dtype=np.float32).reshape(-1, shape[1])
        if cut is not None:
            hi = cut
            errors.append(_cut_error(shard.path, cut, shape[0]))
        elif hi < e and s <= present < e:
            errors.append({"file": shard.path, "row": int(present),
                           "error": f"truncated: rows {present}..{shard.rows - 1} missing"})
        ok = _finite_rows(shard.path, s, X, errors)
        rows = np.arange(s, hi, dtype=np.int64)[ok]
        yield Batch(shard.path, s, e, rows, np.ascontiguousarray(X[ok]), errors=errors)
        if cut is not None:
            return
    del mm


def _read_vecs(shard: Shard, dim, batch_rows: int, start: int, end: int) -> Iterator[Batch]:
    d, n, rec, size = _vecs_header(shard.path, shard.kind, shard.size)
    _check_dim(shard, dim, d)
    vt = _VECS[shard.kind]
    rt = np.dtype([("dim", "<i4"), ("v", vt, (d,))])
    mm = _records(shard.path, rt, 0, n) if n else None
    # a partial last record, or a local file that lost records since it was planned
    truncated = size % rec != 0 or n < shard.rows
    why = "truncated: incomplete last record" if size % rec else \
        f"truncated: the file holds {n} records, {shard.rows} when the job was planned"
    # the cut at record n is reported by the range that reads past it (s <= n < its end), or
    # by the shard's last range when the planned rows end there (an incomplete last record)
    report_cut = truncated and (end > n or end >= shard.rows)
    end = min(end, n)
    if start >= end:
        if report_cut and start == n:
            yield Batch(shard.path, n, n, np.zeros(0, dtype=np.int64),
                        np.zeros((0, d), dtype=np.float32),
                        errors=[{"file": shard.path, "row": int(n), "error": why}])
        return
    for s in range(start, end, batch_rows):
        e = min(s + batch_rows, end)
        errors: list[dict] = []
        chunk, cut = _take(mm, s, e)
        k = len(chunk)
        good_dim = np.asarray(chunk["dim"] == d)
        for i in np.flatnonzero(~good_dim)[:1000].tolist():
            errors.append({"file": shard.path, "row": s + i,
                           "error": f"record dimension {int(chunk['dim'][i])}, expected {d}"})
        X = np.asarray(chunk["v"], dtype=np.float32).reshape(k, d)
        if cut is not None:
            errors.append(_cut_error(shard.path, cut, shard.rows))
        elif report_cut and e == n:
            errors.append({"file": shard.path, "row": int(n), "error": why})
        ok = _finite_rows(shard.path, s, X, errors) & good_dim
        rows = np.arange(s, s + k, dtype=np.int64)[ok]
        yield Batch(shard.path, s, e, rows, np.ascontiguousarray(X[ok]), errors=errors)
        if cut is not None:
            return


def _vector_column(col, path: str, first_row: int, dim, errors: list[dict]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, d] with zeros in bad rows, good mask) of an Arrow vector column."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    t = col.type
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        if dim is not None and d != dim:
            raise ShardError(f"{path}: row {first_row}: vector dimension {d}, expected {dim}")
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        X = flat.reshape(n, d) if n else np.zeros((0, d), dtype=np.float32)
        ok = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lens = col.value_lengths().to_numpy(zero_copy_only=False)
        lens = np.where(np.isnan(lens.astype(float)), -1, lens).astype(np.int64)
        d = dim if dim is not None else int(lens[lens >= 0][0]) if (lens >= 0).any() else 0
        ok = lens == d
        X = np.zeros((n, d), dtype=np.float32)
        if ok.any():
            vals = col.filter(pa.array(ok)).flatten().to_numpy(zero_copy_only=False)
            X[ok] = vals.astype(np.float32).reshape(-1, d)
        for i in np.flatnonzero(~ok)[:1000].tolist():
            errors.append({"file": path, "row": first_row + i,
                           "error": f"vector length {int(lens[i])}, expected {d}"})
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        vals = col.to_pylist()
        d = dim if dim is not None else next((len(v) // 4 for v in vals if v), 0)
        X = np.zeros((n, d), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        for i, v in enumerate(vals):
            if v is not None and len(v) == 4 * d:
                X[i] = np.frombuffer(v, dtype="<f4")
                ok[i] = True
            elif len(errors) < 1000:
                errors.append({"file": path, "row": first_row + i,
                               "error": f"vector of {0 if v is None else len(v)} bytes, expected "
                                        f"{4 * d} (dim {d} x float32)"})
    else:
        raise ShardError(f"{path}: vector column has type {t}; expected a fixed-size list, a "
                         f"list of floats or binary")
    ok &= _finite_rows(path, first_row, np.where(ok[:, None], X, 0), errors)
    return X, ok


def _read_parquet(shard: Shard, dim, batch_rows: int, start: int, cols: Columns,
                  end: int | None = None) -> Iterator[Batch]:
    try:
        pf = _parquet_file(shard.path)
    except ShardError as e:  # it opened at planning: the first unread row is where it stops
        why = str(e).removeprefix(f"{shard.path}: ")
        raise ShardReadError(shard.path, start, why) from None
    names = pf.schema_arrow.names
    want = [c for c in (cols.vector, cols.id, cols.tenant, cols.acl, cols.payload)
            if c is not None and c in names]
    # skip whole row groups before ``start`` using the metadata
    rg0, base = 0, 0
    while rg0 < pf.num_row_groups and base + pf.metadata.row_group(rg0).num_rows <= start:
        base += pf.metadata.row_group(rg0).num_rows
        rg0 += 1
    end = pf.metadata.num_rows if end is None else end
    pos = base
    rg1, top = rg0, base  # ... and the row groups at or after ``end``
    while rg1 < pf.num_row_groups and top < end:
        top += pf.metadata.row_group(rg1).num_rows
        rg1 += 1
    groups = list(range(rg0, rg1))
    if not groups or start >= end:
        return
    for rb in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=want):
        s, e = pos, pos + rb.num_rows
        pos = e
        if e <= start:
            continue
        if s >= end:
            break
        if e > end:
            rb = rb.slice(0, end - s)
            e = end
        if s < start:
            rb = rb.slice(start - s)
            s = start
        errors: list[dict] = []
        X, ok = _vector_column(rb.column(cols.vector), shard.path, s, dim, errors)
        ids = tenants = acl = payloads = None
        if cols.id in want:
            a = rb.column(cols.id)
            null = np.asarray(a.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            iv = np.asarray(a.fill_null(0).to_numpy(zero_copy_only=False))
            bad = null | (iv < 0)
            for i in np.flatnonzero(bad & ok)[:1000].tolist():
                errors.append({"file": shard.path, "row": s + i, "error": "missing or negative id"})
            ok &= ~bad
            ids = iv.astype(np.uint64)
        if cols.tenant in want:
            tenants = rb.column(cols.tenant).to_pylist()
            for i, t in enumerate(tenants):
                if ok[i] and (not isinstance(t, str) or not t):
                    ok[i] = False
                    errors.append({"file": shard.path, "row": s + i, "error": "missing tenant"})
        if cols.acl in want:
            acl = [list(x) if x else [] for x in rb.column(cols.acl).to_pylist()]
        if cols.payload in want:
            payloads = []
            for i, p in enumerate(rb.column(cols.payload).to_pylist()):
                if isinstance(p, str):
                    try:
                        p = json.loads(p)
                    except ValueError:
                        if ok[i]:
                            errors.append({"file": shard.path, "row": s + i,
                                           "error": "payload is not valid JSON"})
                        ok[i] = False
                        p = None
                payloads.append(p if isinstance(p, dict) else None)
        sel = np.flatnonzero(ok).tolist()

        def pick(xs: list, sel: list[int] = sel) -> list:
            return [xs[i] for i in sel]
        yield Batch(shard.path, s, e, np.arange(s, e, dtype=np.int64)[ok],
                    np.ascontiguousarray(X[ok]), ids=None if ids is None else ids[ok],
                    tenants=None if tenants is None else pick(tenants),
                    acl=None if acl is None else pick(acl),
                    payloads=None if payloads is None else pick(payloads), errors=errors)


def check_dim(dim: int | None, shards: Sequence[Shard]) -> int:
    """The job's dimension: ``dim`` or the first shard's header dim (DimensionMismatch if none)."""
    if dim is not None:
        return int(dim)
    for s in shards:
        if s.dim is not None:
            return s.dim
    raise DimensionMismatch("cannot infer the dimension from the shards; pass dim=")
