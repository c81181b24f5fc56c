"""``Database``: a data folder of collections, opened by one process at a time.

Layout::

    <path>/
      LOCK                         fcntl.flock'ed while open (a second writer -> FailedPrecondition)
      collections/
        <name>/
          store/                   RocksDB (column families: vectors ids acl payload postings
                                   oplog meta)
          ckpt-<seq>/              latest checkpoint: index.npz + state.npz (includes oplog <= seq)

A collection is created in a temporary folder and renamed into place (a crash leaves no half
collection); dropping renames it to a trash folder first, then deletes it. A background thread
checkpoints dirty collections (``Options.checkpoint_every_ops`` / ``checkpoint_every_s``).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from vecdb.engine.collection import Collection
from vecdb.engine.options import Options
from vecdb.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def check_collection_name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"collection name must match {_NAME.pattern} (letters, digits, "
                              f"_ . -; at most 128 characters), got {name!r}")
    return name


class Database:
    """An embedded vecdb database in folder ``path`` (created if missing).

    ``options``: see ``vecdb.engine.Options`` (sync, block_cache_bytes, direct_reads,
    checkpoint_every_ops, checkpoint_every_s, background_checkpoints, ...).
    """

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.options = Options.from_dict(options)
        self.path = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.join(self.path, "collections"), exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise FailedPrecondition(f"database {self.path} is open in another process") from None
        self._root = os.path.join(self.path, "collections")
        for d in os.listdir(self._root):  # leftovers of an interrupted create/drop
            if d.startswith(".tmp-") or d.startswith(".trash-"):
                shutil.rmtree(os.path.join(self._root, d), ignore_errors=True)
        self._cols: dict[str, Collection] = {}
        self._mutex = threading.RLock()
        self._closed = False
        self._stop = threading.Event()
        self._bg: threading.Thread | None = None
        if self.options.background_checkpoints:
            self._bg = threading.Thread(target=self._checkpointer, name="vecdb-checkpointer",
                                        daemon=True)
            self._bg.start()

    # -- collections ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"database {self.path} is closed")

    def _exists(self, name: str) -> bool:
        return os.path.isdir(os.path.join(self._root, name, "store"))

    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "flat",
                          params: dict[str, Any] | None = None) -> Collection:
        """Create a collection; its schema (dim, metric, index kind and params) is frozen."""
        return self._assemble(
            name, lambda tmp: Collection.create(tmp, name, dim, metric, index, params,
                                                self.options))

    def _assemble(self, name: str, build: Callable[[str], Any],
                  keep_open: bool = True) -> Collection | None:
        """Build collection ``name`` with ``build(tmp_folder)`` in a temporary folder and rename
        it into place: all or nothing (the engine removes ``.tmp-*`` leftovers at open). Returns
        the opened collection, or None with ``keep_open=False`` (nothing loaded)."""
        check_collection_name(name)
        with self._mutex:
            self._check_open()
            if self._exists(name):
                raise AlreadyExists(f"collection {name!r} already exists")
            tmp = os.path.join(self._root, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
            try:
                build(tmp)
                os.replace(tmp, os.path.join(self._root, name))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return self.collection(name) if keep_open else None

    def collection(self, name: str) -> Collection:
        """The open collection ``name`` (NotFound if it does not exist)."""
        check_collection_name(name)
        with self._mutex:
            self._check_open()
            col = self._cols.get(name)
            if col is not None and not col.closed:
                return col
            if not self._exists(name):
                raise NotFound(f"collection {name!r} not found")
            col = Collection(os.path.join(self._root, name), self.options, name)
            self._cols[name] = col
            return col

    def list_collections(self) -> list[str]:
        """Collection names, sorted."""
        self._check_open()
        return sorted(d for d in os.listdir(self._root)
                      if not d.startswith(".") and self._exists(d))

    def has_collection(self, name: str) -> bool:
        self._check_open()
        return isinstance(name, str) and bool(_NAME.match(name)) and self._exists(name)

    def drop_collection(self, name: str) -> None:
        """Close and delete collection ``name`` and its folder."""
        check_collection_name(name)
        with self._mutex:
            self._check_open()
            if not self._exists(name):
                raise NotFound(f"collection {name!r} not found")
            col = self._cols.pop(name, None)
            if col is not None:
                col.close(checkpoint=False)
            trash = os.path.join(self._root, f".trash-{name}-{uuid.uuid4().hex[:8]}")
            os.replace(os.path.join(self._root, name), trash)
            shutil.rmtree(trash, ignore_errors=True)

    def import_sst(self, name: str, *, dim: int, metric: str = "l2", index: str = "flat",
                   params: dict[str, Any] | None = None, tenants: Sequence[str] = (),
                   sst: dict[str, Sequence[str]], adopt: Callable | None = None,
                   expected_rows: int | None = None, keep_open: bool = True,
                   maps: Sequence[str] | None = None) -> Collection | None:
        """Create collection ``name`` from externally built SST files, all or nothing (the bulk
        ingestion's import; see ``Collection.import_sst`` for the file layout, ``adopt`` and
        ``maps``).

        Assembled in a temporary folder and renamed into place once it reopens from its
        checkpoint (and holds ``expected_rows`` vectors, if given); a failure or a crash leaves no
        collection. Works on an open database (other collections keep serving). Returns the
        opened collection; ``keep_open=False``: None, and the collection is not loaded a third
        time (a caller that only imports, e.g. ``import_bulk``, saves its load time and RAM)."""
        def build(tmp: str) -> None:
            n = Collection.import_sst(tmp, name, dim, metric, index, params, self.options,
                                      tenants, sst, adopt, maps)
            if expected_rows is not None and n != expected_rows:
                raise FailedPrecondition(f"import of {name!r}: {n} vectors, expected "
                                         f"{expected_rows}")

        return self._assemble(name, build, keep_open)

    # -- background checkpoints -----------------------------------------------------------
    def _checkpointer(self) -> None:
        period = min(1.0, max(0.05, self.options.checkpoint_every_s / 4))
        while not self._stop.wait(period):
            with self._mutex:
                cols = list(self._cols.values())
            for c in cols:
                if self._stop.is_set():
                    return
                try:
                    c._maybe_checkpoint()
                    c.last_checkpoint_error = None
                except Exception as e:  # retried next period; visible on the collection
                    if c.last_checkpoint_error is None:
                        warnings.warn(f"background checkpoint of {c.name!r} failed: {e!r}",
                                      RuntimeWarning, stacklevel=1)
                    c.last_checkpoint_error = repr(e)

    def checkpoint(self) -> None:
        """Checkpoint every open collection now."""
        with self._mutex:
            for c in self._cols.values():
                if not c.closed:
                    c.checkpoint()

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the checkpointer, close every collection (checkpointing dirty ones), unlock."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
        if self._bg is not None:
            self._bg.join()
        try:
            for c in self._cols.values():
                c.close()
        finally:
            self._cols.clear()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.path!r}, collections={len(self.list_collections())})"
