"""API-key authentication and authorisation.

Model::

    key  = "vdb_<key_id>_<secret>"          shown once at creation, never stored
    file = <data>/auth/keys.json            {key_id: salt, HMAC-SHA256(salt, key), role, tenants}

- Roles: ``admin`` (everything), ``read_write`` and ``read`` (bound to a set of tenant names: the
  key may act only as those tenants, in any collection).
- Keys are 256-bit random secrets, so a salted HMAC-SHA256 is enough (no password stretching:
  there is nothing to brute-force, and checking a key costs ~2 us on every call).
- The bootstrap admin key comes from ``VECDB_API_KEY``; it is hashed in memory, never written.
- The key file is rewritten atomically (temp file + fsync + rename + fsync of the folder), so a
  crash leaves the old or the new file, never half of one.
- Keys travel as ``authorization: Bearer <key>`` or ``x-api-key: <key>`` metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable

from vecdb.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

ROLES = ("admin", "read_write", "read")
KEY_PREFIX = "vdb_"
BOOTSTRAP_ID = "bootstrap"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: a key id, a role and (for tenant keys) the tenants it may act as."""

    key_id: str
    role: str
    tenants: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_read(self, tenant: str) -> bool:
        return self.is_admin or tenant in self.tenants

    def may_write(self, tenant: str) -> bool:
        return self.is_admin or (self.role == "read_write" and tenant in self.tenants)

    def require_read(self, tenant: str) -> None:
        if not isinstance(tenant, str) or not tenant:
            raise InvalidArgument("tenant is required")
        if not self.may_read(tenant):
            raise PermissionDenied(f"this API key may not act as tenant {tenant!r}")

    def require_write(self, tenant: str) -> None:
        self.require_read(tenant)
        if not self.may_write(tenant):
            raise PermissionDenied(f"this API key is read-only for tenant {tenant!r}")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this operation needs an admin API key")


ANONYMOUS_ADMIN = Principal("auth-disabled", "admin")


def _digest(salt: bytes, key: str) -> str:
    return hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_role(role: str, tenants: Iterable[str]) -> tuple[str, list[str]]:
    """Validate a role and its tenant list (tenant keys need >= 1 tenant, admin keys none)."""
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {list(ROLES)}, got {role!r}")
    if isinstance(tenants, str):
        raise InvalidArgument("tenants must be a list of tenant names, not a string")
    tenants = sorted(set(tenants))
    for t in tenants:
        if not isinstance(t, str) or not t or len(t) > 128 or not t.isprintable():
            raise InvalidArgument(f"bad tenant name {t!r}")
    if role == "admin" and tenants:
        raise InvalidArgument("an admin key is not bound to tenants; pass no tenants")
    if role != "admin" and not tenants:
        raise InvalidArgument(f"a {role} key must be bound to at least one tenant")
    return role, tenants


class KeyStore:
    """Hashed API keys in ``<data>/auth/keys.json`` plus the optional in-memory bootstrap key."""

    def __init__(self, data_dir: str, bootstrap_key: str | None = None) -> None:
        self.dir = os.path.join(os.path.abspath(data_dir), "auth")
        self.path = os.path.join(self.dir, "keys.json")
        self._lock = threading.Lock()
        self._keys: dict[str, dict] = {}
        self.version = 0  # bumped on every change (the interceptor's principal cache keys on it)
        self._bootstrap: tuple[bytes, str] | None = None
        if bootstrap_key:
            if len(bootstrap_key) < 16:
                raise InvalidArgument("VECDB_API_KEY must be at least 16 characters")
            salt = secrets.token_bytes(16)
            self._bootstrap = (salt, _digest(salt, bootstrap_key))
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            self._keys = {k["key_id"]: k for k in doc.get("keys", [])}

    def __len__(self) -> int:
        return len(self._keys) + (self._bootstrap is not None)

    def _save(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        doc = {"version": 1, "keys": sorted(self._keys.values(), key=lambda k: k["key_id"])}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)

    def create(self, role: str, tenants: Iterable[str] = (), description: str = "") -> tuple[
            str, dict]:
        """Create a key; returns ``(secret, info)``. The secret is not kept anywhere."""
        role, tenants = check_role(role, tenants)
        if not isinstance(description, str) or len(description) > 1024:
            raise InvalidArgument("description must be a string of at most 1024 characters")
        with self._lock:
            key_id = secrets.token_hex(6)
            while key_id in self._keys:
                key_id = secrets.token_hex(6)
            secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            salt = secrets.token_bytes(16)
            rec = {"key_id": key_id, "salt": salt.hex(), "hash": _digest(salt, secret),
                   "role": role, "tenants": tenants, "description": description,
                   "created_at": time.time()}
            self._keys[key_id] = rec
            try:
                self._save()
            except BaseException:
                del self._keys[key_id]
                raise
            self.version += 1
        return secret, self.info(rec)

    @staticmethod
    def info(rec: dict) -> dict:
        """The public part of a key record (no salt, no hash)."""
        return {k: rec[k] for k in ("key_id", "role", "tenants", "description", "created_at")}

    def list(self) -> list[dict]:
        with self._lock:
            return [self.info(r) for r in sorted(self._keys.values(), key=lambda r: r["key_id"])]

    def revoke(self, key_id: str) -> None:
        with self._lock:
            rec = self._keys.pop(key_id, None)
            if rec is None:
                raise NotFound(f"API key {key_id!r} not found")
            try:
                self._save()
            except BaseException:
                self._keys[key_id] = rec
                raise
            self.version += 1

    def authenticate(self, key: str | None) -> Principal:
        """The principal of ``key``; Unauthenticated if missing, malformed, unknown or revoked."""
        if not key:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' or "
                                  "'x-api-key: <key>' metadata")
        if self._bootstrap is not None:
            salt, h = self._bootstrap
            if hmac.compare_digest(_digest(salt, key), h):
                return Principal(BOOTSTRAP_ID, "admin")
        if key.startswith(KEY_PREFIX):
            key_id = key[len(KEY_PREFIX):].split("_", 1)[0]
            rec = self._keys.get(key_id)
            if rec is not None and hmac.compare_digest(
                    _digest(bytes.fromhex(rec["salt"]), key), rec["hash"]):
                return Principal(key_id, rec["role"], frozenset(rec["tenants"]))
        raise Unauthenticated("invalid or revoked API key")


def key_from_metadata(metadata) -> str | None:
    """The API key in gRPC invocation metadata (``authorization: Bearer`` or ``x-api-key``)."""
    for item in metadata or ():
        k, v = item[0], item[1]
        if isinstance(v, bytes):
            continue
        if k == "x-api-key":
            return v.strip()
        if k == "authorization":
            scheme, _, token = v.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None
