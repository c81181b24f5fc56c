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
(TimeoutError), ``"oserror"`` (a plain OSError with the text pyarrow's S3 filesystem gives a
network error: transient), ``"denied"`` (a plain OSError with S3's ACCESS_DENIED text:
permanent), ``"missing"`` (FileNotFoundError), ``"permission"`` (PermissionError), ``"short"``
(the object ends at byte ``after``: its reads stop there and its size says so, a truncation;
this rule ignores ``times``, a truncation does not heal, and its count is the reads it cut),
``"eof"`` (a read past ``after`` returns no bytes though the object is longer: a dropped
connection, transient) or ``"partial"`` (every read past ``after`` returns at most ``chunk``
bytes: legal, as a network file may; nothing is lost). ``message`` replaces the error's text
(``{path}`` in it: the file's path, quoted as storage services quote keys).

fsspec is needed (the ``[ingest]`` extra); it is imported when ``register`` is called.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from typing import Any

PROTOCOL = "faulty"
_AWS = "When reading information for key '{path}': AWS Error {code} during GetObject operation: "
_ERRORS: dict[str, tuple[type[OSError], str]] = {
    "reset": (ConnectionResetError, "injected reset"),
    "timeout": (TimeoutError, "injected timeout"),
    "oserror": (OSError, _AWS.replace("{code}", "NETWORK_CONNECTION") + "injected"),
    "denied": (OSError, _AWS.replace("{code}", "ACCESS_DENIED") + "injected"),
    "missing": (FileNotFoundError, "injected missing"),
    "permission": (PermissionError, "injected permission"),
}
_KINDS = (*_ERRORS, "short", "eof", "partial")


def _rule_path(path: str) -> str:
    return f"{path}.fault"


def _fired_path(path: str) -> str:
    return f"{path}.fault.fired"


def _lock_path(path: str) -> str:
    return f"{path}.fault.lock"


class _Locked:
    """An exclusive ``flock`` on the file's lock file: a rule's check and its firing are one
    step across processes (two readers cannot both fire a ``times=1`` rule)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(_lock_path(self.path), os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def inject(path: str | os.PathLike, after: int, times: int = 1, kind: str = "reset",
           until: int | None = None, chunk: int = 1000, message: str | None = None) -> None:
    """Make reads of the local file ``path`` through ``faulty://`` fail (see the module doc);
    replaces an earlier rule and restarts its count. ``chunk``: bytes per read of ``partial``;
    ``message``: the error's text instead of the kind's."""
    if kind not in _KINDS:
        raise ValueError(f"unknown fault kind {kind!r}")
    path = os.fspath(path)
    rule = {"after": int(after), "times": int(times), "kind": kind,
            "until": None if until is None else int(until), "chunk": int(chunk),
            "message": message}
    with _Locked(path):
        if os.path.exists(_fired_path(path)):
            os.unlink(_fired_path(path))
        tmp = f"{_rule_path(path)}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:  # a reader sees the old rule or the new one, never half
            json.dump(rule, f)
        os.replace(tmp, _rule_path(path))


def clear(path: str | os.PathLike) -> None:
    """Remove the rule of ``path`` (its count stays readable with ``fired``); under the rule's
    lock, so a read is never half under the rule."""
    path = os.fspath(path)
    with _Locked(path):
        if os.path.exists(_rule_path(path)):
            os.unlink(_rule_path(path))


def _load_rule(path: str) -> dict[str, Any] | None:
    """The rule of ``path`` (None if none)."""
    try:
        with open(_rule_path(path)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _visible_size(path: str, size: int) -> int:
    """The size a reader sees of the file ``path`` of ``size`` bytes: ``after`` under a
    ``short`` rule (the object ends there), else ``size``."""
    rule = _load_rule(path) if os.path.exists(_rule_path(path)) else None
    if rule is not None and rule["kind"] == "short":
        return min(size, int(rule["after"]))
    return size


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
        if whence == 2:  # from the end a reader sees (a "short" rule's cut)
            return self.f.seek(_visible_size(self.path, self.size) + offset, 0)
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def _rule(self) -> dict[str, Any] | None:
        rule = _load_rule(self.path)
        if rule is None or rule["kind"] == "short":  # a cut object stays cut
            return rule
        if rule["times"] >= 0 and fired(self.path) >= rule["times"]:
            return None
        return rule

    def read(self, n: int = -1) -> bytes:
        pos = self.f.tell()
        want = self.size - pos if n is None or n < 0 else n
        if not os.path.exists(_rule_path(self.path)):  # no rule: no lock
            return self.f.read(n)
        with _Locked(self.path):
            rule = self._rule()
            if rule is None or pos + want <= rule["after"] or \
                    (rule["until"] is not None and pos >= rule["until"]):
                return self.f.read(n)
            kind = rule["kind"]
            if kind == "partial" and want <= rule.get("chunk", 1000):
                return self.f.read(n)
            if kind == "short" and pos >= rule["after"]:  # at or past the "end": EOF, no fault
                return b""
            _fire(self.path)
        if kind == "short":
            return self.f.read(max(0, rule["after"] - pos))
        if kind == "eof":  # nothing, though the object goes on
            return b""
        if kind == "partial":  # at most chunk bytes, and at least one: progress, no loss
            return self.f.read(max(1, min(want, rule.get("chunk", 1000))))
        cls, text = _ERRORS[kind]
        text = (rule.get("message") or text).replace("{path}", self.path)
        raise cls(f"{text} (reading '{self.path}' at byte {max(pos, rule['after'])})")

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


_FS_CLASS: list[type] = []


def filesystem_class() -> type:
    """The fsspec filesystem class of ``faulty://``: the local filesystem, with reads that fail
    as the rules written by ``inject`` say (made on first use: fsspec is imported then)."""
    if not _FS_CLASS:
        from fsspec.implementations.local import LocalFileSystem

        class FaultyFileSystem(LocalFileSystem):
            protocol = (PROTOCOL,)

            def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
                out = super().info(path, **kwargs)
                if out.get("type") == "file":  # a "short" rule's object ends at its cut
                    out = {**out, "size": _visible_size(self._strip_protocol(path),
                                                        int(out["size"]))}
                return out

            def _open(self, path: str, mode: str = "rb", block_size: Any = None,
                      **kwargs: Any):
                path = self._strip_protocol(path)
                if "r" not in mode:
                    return super()._open(path, mode, block_size, **kwargs)
                return _FaultyFile(path)

        _FS_CLASS.append(FaultyFileSystem)
    return _FS_CLASS[0]


def register() -> None:
    """Register ``faulty://`` with fsspec in this process. Ray workers need it too: start Ray
    with ``runtime_env={"worker_process_setup_hook": "vecdb.ingest.testing.register"}``
    (``online.init_ray(runtime_env=...)``)."""
    import fsspec

    fsspec.register_implementation(PROTOCOL, filesystem_class(), clobber=True)


def uri(path: str | os.PathLike) -> str:
    """The ``faulty://`` URI of a local path."""
    return f"{PROTOCOL}://{os.path.abspath(os.fspath(path))}"
