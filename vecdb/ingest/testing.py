"""A fault-injecting filesystem for testing ingestion against flaky storage without a network.

``faulty:///abs/path/x.npy`` reads the local file ``/abs/path/x.npy`` through fsspec (so the
shard goes down the same URI path as ``s3://``: pyarrow ``PyFileSystem``, ranged reads), and
misbehaves as a rule file next to it says (``inject``)::

    from vecdb.ingest import testing
    testing.register()                      # in this process; Ray workers: see ``register``
    testing.inject("/data/x.npy", after=4096, times=1)   # one ConnectionResetError
    run_online("faulty:///data/", ...)      # the read is retried; every row once
    testing.fired("/data/x.npy")            # -> 1

A rule fires on a read that reaches past byte ``after`` of the file (and starts before byte
``until``, when given: e.g. to spare a Parquet footer), at most ``times`` times in all (-1:
always), counted in a marker file next to the data, so the count holds across the Ray worker
processes. ``kind`` picks the fault: ``"reset"`` (ConnectionResetError), ``"timeout"``
(TimeoutError), ``"oserror"`` (a plain OSError, as pyarrow raises for a storage service's
error), ``"missing"`` (FileNotFoundError), ``"permission"`` (PermissionError) or ``"short"``
(the read returns only the bytes before ``after``, as if the object ended there: a truncation).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "faulty"
_ERRORS = {"reset": ConnectionResetError, "timeout": TimeoutError, "oserror": OSError,
           "missing": FileNotFoundError, "permission": PermissionError}


def _rule_path(path: str) -> str:
    return f"{path}.fault"


def _fired_path(path: str) -> str:
    return f"{path}.fault.fired"


def inject(path: str | os.PathLike, after: int, times: int = 1, kind: str = "reset",
           until: int | None = None) -> None:
    """Make reads of the local file ``path`` through ``faulty://`` fail (see the module doc);
    replaces an earlier rule and restarts its count."""
    if kind not in (*_ERRORS, "short"):
        raise ValueError(f"unknown fault kind {kind!r}")
    path = os.fspath(path)
    if os.path.exists(_fired_path(path)):
        os.unlink(_fired_path(path))
    with open(_rule_path(path), "w") as f:
        json.dump({"after": int(after), "times": int(times), "kind": kind,
                   "until": None if until is None else int(until)}, f)


def clear(path: str | os.PathLike) -> None:
    """Remove the rule of ``path`` (its count stays readable with ``fired``)."""
    if os.path.exists(_rule_path(os.fspath(path))):
        os.unlink(_rule_path(os.fspath(path)))


def fired(path: str | os.PathLike) -> int:
    """How many times the rule of ``path`` has fired (in every process)."""
    p = _fired_path(os.fspath(path))
    return os.path.getsize(p) if os.path.exists(p) else 0


def _fire(path: str) -> None:
    """Count one firing: one byte appended (O_APPEND: atomic across processes)."""
    fd = os.open(_fired_path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


class _FaultyFile(io.RawIOBase):
    """A local file opened for reading whose reads obey the file's rule (checked per read, so
    a rule injected while the file is open takes effect)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.f = open(path, "rb")
        self.size = os.fstat(self.f.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def _rule(self) -> dict[str, Any] | None:
        try:
            with open(_rule_path(self.path)) as f:
                rule = json.load(f)
        except FileNotFoundError:
            return None
        if rule["times"] >= 0 and fired(self.path) >= rule["times"]:
            return None
        return rule

    def read(self, n: int = -1) -> bytes:
        pos = self.f.tell()
        want = self.size - pos if n is None or n < 0 else n
        rule = self._rule()
        if rule is None or pos + want <= rule["after"] or \
                (rule["until"] is not None and pos >= rule["until"]):
            return self.f.read(n)
        _fire(self.path)
        if rule["kind"] == "short":
            return self.f.read(max(0, rule["after"] - pos))
        raise _ERRORS[rule["kind"]](f"injected {rule['kind']} reading {self.path} at byte "
                                    f"{max(pos, rule['after'])}")

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


class FaultyFileSystem(LocalFileSystem):
    """fsspec filesystem ``faulty://``: the local filesystem, with reads that fail as the
    rules written by ``inject`` say."""

    protocol = (PROTOCOL,)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any):
        path = self._strip_protocol(path)
        if "r" not in mode:
            return super()._open(path, mode, block_size, **kwargs)
        return _FaultyFile(path)


def register() -> None:
    """Register ``faulty://`` with fsspec in this process. Ray workers need it too: start Ray
    with ``runtime_env={"worker_process_setup_hook": "vecdb.ingest.testing.register"}``
    (``online.init_ray(runtime_env=...)``)."""
    import fsspec

    fsspec.register_implementation(PROTOCOL, FaultyFileSystem, clobber=True)


def uri(path: str | os.PathLike) -> str:
    """The ``faulty://`` URI of a local path."""
    return f"{PROTOCOL}://{os.path.abspath(os.fspath(path))}"
