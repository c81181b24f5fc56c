"""Server configuration: defaults < TOML file < environment (``VECDB_*``) < command-line flags.

TOML example (``vecdb serve --config vecdb.toml``)::

    data = "/data"
    host = "0.0.0.0"
    port = 6334
    metrics_port = 9100
    max_message_mb = 64
    workers = 16
    tls_cert = "/etc/vecdb/tls.crt"
    tls_key = "/etc/vecdb/tls.key"
    [db]               # options of the embedded database (vecdb.engine.Options)
    sync = false
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from vecdb.errors import InvalidArgument


@dataclasses.dataclass
class ServerConfig:
    """Everything ``vecdb serve`` needs. ``api_key`` is the bootstrap admin key."""

    data: str = "./vecdb-data"
    host: str = "127.0.0.1"
    port: int = 6334
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0 = no metrics endpoint
    workers: int = 16
    max_message_mb: int = 64
    grace_s: float = 30.0
    no_auth: bool = False
    api_key: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "INFO"
    db: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, file: str | None = None, env: dict[str, str] | None = None,
             **flags: Any) -> ServerConfig:
        """Merge a TOML ``file``, ``env`` (``VECDB_<FIELD>``) and ``flags`` (None = unset)."""
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        vals: dict[str, Any] = {}
        file = file or env.get("VECDB_CONFIG")
        if file:
            try:
                with open(file, "rb") as f:
                    doc = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise InvalidArgument(f"config file {file}: {e}") from None
            unknown = sorted(set(doc) - set(fields))
            if unknown:
                raise InvalidArgument(f"config file {file}: unknown keys {unknown}")
            vals.update(doc)
        for name, f in fields.items():
            v = env.get("VECDB_" + name.upper())
            if v is not None and name != "db":
                vals[name] = _parse(name, f.type, v)
        for name, v in flags.items():
            if name not in fields:
                raise InvalidArgument(f"unknown server option {name!r}")
            if v is not None:
                vals[name] = v
        cfg = cls(**vals)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not (0 <= int(self.port) < 65536) or not (0 <= int(self.metrics_port) < 65536):
            raise InvalidArgument("ports must be in [0, 65535]")
        if self.workers < 1 or self.max_message_mb < 1:
            raise InvalidArgument("workers and max_message_mb must be >= 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("TLS needs both tls_cert and tls_key")
        if not self.no_auth and not self.api_key and not _has_keys(self.data):
            raise InvalidArgument(
                "auth is on but there is no admin key: set VECDB_API_KEY, create one with "
                "`vecdb keys create --data DIR --role admin`, or pass --no-auth (development "
                "only)")


def _has_keys(data: str) -> bool:
    return os.path.exists(os.path.join(data, "auth", "keys.json"))


def _parse(name: str, typ: Any, v: str) -> Any:
    t = str(typ)
    try:
        if "bool" in t:
            if v.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(v)
            return v.lower() in ("1", "true", "yes", "on")
        if t.startswith("int"):
            return int(v)
        if t.startswith("float"):
            return float(v)
    except ValueError:
        raise InvalidArgument(f"VECDB_{name.upper()}: cannot parse {v!r} as {t}") from None
    return v
