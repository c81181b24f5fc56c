"""The ``vecdb`` command line (one entry point).

::

    vecdb serve --data DIR [--host 127.0.0.1] [--port 6334] [--config vecdb.toml] [--no-auth]
    vecdb health [--address HOST:PORT]                       # exit 0 iff SERVING (HEALTHCHECK)
    vecdb keys create --role read_write --tenants acme,beta  # prints the key once
    vecdb keys create --data DIR --role admin                # offline bootstrap (server stopped)
    vecdb keys list | vecdb keys revoke KEY_ID
    vecdb collections list | create NAME --dim D [--metric l2 --index flat --params JSON] | drop
    vecdb ingest FILE.npy|.fvecs|.parquet --collection C --tenant T [--start-id N --batch 5000]
    vecdb ingest online|bulk|import ...                      # Ray jobs, extra [ingest]
    vecdb import --data DIR --collection C --bulk OUT        # = vecdb ingest import ...
    vecdb search --collection C --tenant T --query FILE.npy|"0.1,0.2,..." [-k 10]
    vecdb bench grpc --smoke                                 # python -m bench.grpc --smoke

Client commands read the server address from ``--address`` or ``VECDB_ADDRESS`` and the key from
``--api-key`` or ``VECDB_API_KEY``. ``serve`` merges flags > ``VECDB_*`` env > the TOML file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np

from vecdb.errors import InvalidArgument, VecdbError

DEFAULT_ADDRESS = "127.0.0.1:6334"


def read_vectors(path: str, mmap: bool = True, column: str = "vector") -> np.ndarray:
    """A float32 matrix from ``.npy`` / ``.fvecs`` (memory-mapped, so files may be large) or
    ``.parquet`` (a fixed-size-list or list column ``column``; needs pyarrow)."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InvalidArgument("reading .parquet needs pyarrow (pip install pyarrow)"
                                  ) from None
        table = pq.read_table(path, columns=[column])
        col = table.column(column).combine_chunks()
        flat = np.asarray(col.flatten(), dtype=np.float32)
        n = len(col)
        if n and flat.size % n:
            raise InvalidArgument(f"{path}: column {column!r} rows have different lengths")
        return flat.reshape(n, flat.size // n if n else 0)
    if path.endswith(".npy"):
        X = np.load(path, mmap_mode="r" if mmap else None)
    elif path.endswith(".fvecs"):
        raw = np.memmap(path, dtype="<i4", mode="r") if mmap else np.fromfile(path, "<i4")
        if raw.size == 0:
            return np.zeros((0, 0), dtype=np.float32)
        d = int(raw[0])
        if d <= 0 or raw.size % (d + 1):
            raise InvalidArgument(f"{path}: not an .fvecs file (dim {d}, {raw.size} words)")
        X = raw.reshape(-1, d + 1)[:, 1:].view("<f4")
    else:
        raise InvalidArgument(f"{path}: expected a .npy, .fvecs or .parquet file")
    if X.ndim != 2:
        raise InvalidArgument(f"{path}: expected a 2-D array, got shape {X.shape}")
    return X


def _client(a):
    from vecdb.client import Client

    return Client(a.address, api_key=a.api_key, tls=a.tls or False, timeout=a.timeout)


def cmd_serve(a) -> int:
    from vecdb.server import ServerConfig, serve

    cfg = ServerConfig.load(
        a.config, data=a.data, host=a.host, port=a.port, metrics_port=a.metrics_port,
        metrics_host=a.metrics_host, workers=a.workers, max_message_mb=a.max_message_mb,
        no_auth=True if a.no_auth else None, tls_cert=a.tls_cert, tls_key=a.tls_key,
        log_level=a.log_level, api_key=os.environ.get("VECDB_API_KEY") or None,
        grace_s=a.grace)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(cfg)
    return 0


def cmd_health(a) -> int:
    from vecdb.client import Client

    try:
        with Client(a.address, tls=a.tls or False, retry_s=0) as c:
            status = c.health(timeout=a.timeout)
    except VecdbError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_keys(a) -> int:
    tenants = [t for t in (getattr(a, "tenants", None) or "").split(",") if t]
    if a.keys_cmd == "create" and getattr(a, "data", None):
        # offline bootstrap: write the key file directly; refuse while a server holds the data
        import fcntl

        from vecdb.server.auth import KeyStore

        os.makedirs(a.data, exist_ok=True)
        fd = os.open(os.path.join(a.data, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise VecdbError(f"{a.data} is in use by a running server: create keys "
                                 f"through it (without --data)") from None
            secret, info = KeyStore(a.data).create(a.role, tenants, a.description)
        finally:
            os.close(fd)
        print(secret)
        print(f"key_id={info['key_id']} role={info['role']} tenants={info['tenants']}",
              file=sys.stderr)
        return 0
    with _client(a) as c:
        if a.keys_cmd == "create":
            print(c.create_api_key(tenants=tenants, role=a.role, description=a.description))
        elif a.keys_cmd == "list":
            for k in c.list_api_keys():
                print(json.dumps(k))
        else:
            c.revoke_api_key(a.key_id)
    return 0


def cmd_collections(a) -> int:
    with _client(a) as c:
        if a.col_cmd == "list":
            for n in c.list_collections():
                print(n)
        elif a.col_cmd == "create":
            params = json.loads(a.params) if a.params else None
            col = c.create_collection(a.name, dim=a.dim, metric=a.metric, index=a.index,
                                      params=params)
            print(json.dumps(col.info()))
        elif a.col_cmd == "describe":
            print(json.dumps(c.collection(a.name).info()))
        else:
            c.drop_collection(a.name)
    return 0


def _batches(X: np.ndarray, start: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for lo in range(0, len(X), size):
        chunk = np.ascontiguousarray(X[lo: lo + size], dtype=np.float32)
        yield np.arange(start + lo, start + lo + len(chunk), dtype=np.uint64), chunk


def cmd_ingest(a) -> int:
    X = read_vectors(a.file, column=a.column)
    with _client(a) as c:
        col = c.collection(a.collection)
        if a.create_tenant and a.tenant not in col.list_tenants():
            col.create_tenant(a.tenant)
        n = col.ingest(_batches(X, a.start_id, a.batch), tenant=a.tenant,
                       progress=not a.quiet)
    print(f"ingested {n} vectors into {a.collection!r} as tenant {a.tenant!r} "
          f"(ids {a.start_id}..{a.start_id + n - 1})")
    return 0


def cmd_search(a) -> int:
    if os.path.exists(a.query):
        Q = np.asarray(read_vectors(a.query), dtype=np.float32)
    else:
        try:
            Q = np.array([[float(x) for x in a.query.split(",")]], dtype=np.float32)
        except ValueError:
            raise InvalidArgument("--query: a .npy/.fvecs file or comma-separated floats"
                                  ) from None
    with _client(a) as c:
        r = c.collection(a.collection).search(Q, k=a.k, tenant=a.tenant,
                                              params=json.loads(a.params) if a.params else None)
    for i in range(len(r.ids)):
        keep = r.ids[i] >= 0
        print(json.dumps({"query": i, "ids": r.ids[i][keep].tolist(),
                          "distances": [round(float(d), 6) for d in r.distances[i][keep]]}))
    return 0


def cmd_bench(a) -> int:
    """Run ``python -m bench.<name> [args]`` (the benchmarks live in a source checkout)."""
    import importlib

    try:
        mod = importlib.import_module(f"bench.{a.name}")
    except ImportError as e:
        raise InvalidArgument(f"benchmark {a.name!r} not found ({e}); run from a vecdb source "
                              f"checkout") from None
    sys.argv = [f"bench.{a.name}", *a.args]  # every bench main() parses sys.argv
    mod.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vecdb", description="vecdb: multi-tenant vector database")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def client_opts(p):
        p.add_argument("--address", default=os.environ.get("VECDB_ADDRESS", DEFAULT_ADDRESS))
        p.add_argument("--api-key", default=os.environ.get("VECDB_API_KEY"))
        p.add_argument("--tls", default=os.environ.get("VECDB_TLS_CA"),
                       help="PEM root certificate (enables TLS)")
        p.add_argument("--timeout", type=float, default=60.0)

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--config", help="TOML file (also VECDB_CONFIG)")
    s.add_argument("--data")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--metrics-host")
    s.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0 = off)")
    s.add_argument("--workers", type=int)
    s.add_argument("--max-message-mb", type=int)
    s.add_argument("--grace", type=float, help="seconds to finish in-flight requests on stop")
    s.add_argument("--no-auth", action="store_true", help="disable auth (development only)")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--log-level")
    s.set_defaults(fn=cmd_serve)

    h = sub.add_parser("health", help="exit 0 iff the server answers SERVING")
    h.add_argument("--address", default=os.environ.get("VECDB_ADDRESS", DEFAULT_ADDRESS))
    h.add_argument("--tls", default=os.environ.get("VECDB_TLS_CA"))
    h.add_argument("--timeout", type=float, default=3.0)
    h.set_defaults(fn=cmd_health)

    k = sub.add_parser("keys", help="API keys")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create")
    kc.add_argument("--role", default="read_write", choices=["admin", "read_write", "read"])
    kc.add_argument("--tenants", help="comma-separated tenant names")
    kc.add_argument("--description", default="")
    kc.add_argument("--data", help="offline: write into this data folder (server stopped)")
    client_opts(kc)
    client_opts(ks.add_parser("list"))
    kr = ks.add_parser("revoke")
    kr.add_argument("key_id")
    client_opts(kr)
    k.set_defaults(fn=cmd_keys)

    c = sub.add_parser("collections", help="list/create/describe/drop collections")
    cs = c.add_subparsers(dest="col_cmd", required=True)
    client_opts(cs.add_parser("list"))
    cc = cs.add_parser("create")
    cc.add_argument("name")
    cc.add_argument("--dim", type=int, required=True)
    cc.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    cc.add_argument("--index", default="flat")
    cc.add_argument("--params", help="index knobs as JSON")
    client_opts(cc)
    for name in ("describe", "drop"):
        p = cs.add_parser(name)
        p.add_argument("name")
        client_opts(p)
    c.set_defaults(fn=cmd_collections)

    i = sub.add_parser("ingest", help="stream a .npy/.fvecs/.parquet file into a collection")
    i.add_argument("file")
    i.add_argument("--collection", required=True)
    i.add_argument("--tenant", required=True)
    i.add_argument("--start-id", type=int, default=0, help="id of the first row")
    i.add_argument("--batch", type=int, default=5000)
    i.add_argument("--create-tenant", action="store_true")
    i.add_argument("--column", default="vector", help="vector column of a .parquet file")
    i.add_argument("--quiet", action="store_true")
    client_opts(i)
    i.set_defaults(fn=cmd_ingest)

    q = sub.add_parser("search", help="k-NN search; prints one JSON line per query")
    q.add_argument("--collection", required=True)
    q.add_argument("--tenant", required=True)
    q.add_argument("--query", required=True, help=".npy/.fvecs file or comma-separated floats")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--params", help="search knobs as JSON")
    client_opts(q)
    q.set_defaults(fn=cmd_search)

    b = sub.add_parser("bench", help="run a benchmark script from a source checkout")
    b.add_argument("name", help="e.g. grpc, kernels, multitenant")
    b.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, e.g. --smoke")
    b.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vecdb`` command; errors print one line and exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The Ray ingestion jobs have their own command line (vecdb.ingest.cli); single-file
    # ``vecdb ingest FILE`` stays here.
    if argv[:1] == ["ingest"] and argv[1:2] and argv[1] in ("online", "bulk", "import"):
        from vecdb.ingest.cli import main as ingest_main

        return ingest_main(argv[1:])
    if argv[:1] == ["import"]:
        from vecdb.ingest.cli import main as ingest_main

        return ingest_main(argv)
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (VecdbError, OSError, json.JSONDecodeError) as e:
        print(f"vecdb {a.cmd}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
