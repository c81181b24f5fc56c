"""The ``vecdb`` CLI against a live server, the offline key bootstrap, and config merging."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vecdb
from vecdb import errors
from vecdb.cli import main, read_vectors
from vecdb.server import ServerConfig
from vecdb.server.testing import ServerProcess


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_commands(server, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VECDB_ADDRESS", server.address)
    monkeypatch.setenv("VECDB_API_KEY", server.api_key)
    rc, out, _ = _run(capsys, "health", "--address", server.address)
    assert rc == 0 and out.strip() == "SERVING"
    rc, out, _ = _run(capsys, "collections", "create", "cli", "--dim", "4", "--address",
                      server.address, "--api-key", server.api_key)
    assert rc == 0 and json.loads(out)["dim"] == 4
    rc, out, _ = _run(capsys, "collections", "list", "--address", server.address,
                      "--api-key", server.api_key)
    assert "cli" in out.split()
    X = np.random.default_rng(1).random((1200, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", X)
    rc, out, _ = _run(capsys, "ingest", str(tmp_path / "x.npy"), "--collection", "cli",
                      "--tenant", "t", "--create-tenant", "--batch", "500", "--quiet",
                      "--address", server.address, "--api-key", server.api_key)
    assert rc == 0 and "ingested 1200" in out
    fv = np.hstack([np.full((10, 1), 4, dtype="<i4").view("<f4"), X[:10]])
    fv.astype("<f4").tofile(tmp_path / "q.fvecs")
    np.testing.assert_array_equal(read_vectors(str(tmp_path / "q.fvecs")), X[:10])
    rc, out, _ = _run(capsys, "ingest", str(tmp_path / "q.fvecs"), "--collection", "cli",
                      "--tenant", "t", "--start-id", "5000", "--quiet", "--address",
                      server.address, "--api-key", server.api_key)
    assert rc == 0 and "ids 5000..5009" in out
    rc, out, _ = _run(capsys, "search", "--collection", "cli", "--tenant", "t", "--query",
                      ",".join(str(v) for v in X[7]), "-k", "2", "--address", server.address,
                      "--api-key", server.api_key)
    hits = json.loads(out)
    assert rc == 0 and sorted(hits["ids"]) == [7, 5007] and hits["distances"][0] == 0
    rc, out, _ = _run(capsys, "keys", "create", "--tenants", "t", "--role", "read",
                      "--address", server.address, "--api-key", server.api_key)
    key = out.strip()
    assert rc == 0 and key.startswith("vdb_")
    with vecdb.Client(server.address, api_key=key) as c:
        assert c.whoami()["tenants"] == ["t"]
    rc, out, _ = _run(capsys, "keys", "list", "--address", server.address, "--api-key",
                      server.api_key)
    kid = [json.loads(line) for line in out.splitlines()][-1]["key_id"]
    assert key.startswith(f"vdb_{kid}_")
    assert _run(capsys, "keys", "revoke", kid, "--address", server.address, "--api-key",
                server.api_key)[0] == 0
    rc, _, err = _run(capsys, "search", "--collection", "cli", "--tenant", "t", "--query",
                      "1,2", "--address", server.address, "--api-key", key)
    assert rc == 1 and "invalid or revoked" in err
    rc, _, err = _run(capsys, "collections", "drop", "nope", "--address", server.address,
                      "--api-key", server.api_key)
    assert rc == 1 and "not found" in err
    assert _run(capsys, "collections", "drop", "cli", "--address", server.address,
                "--api-key", server.api_key)[0] == 0


def test_offline_bootstrap_key_then_serve(tmp_path, capsys):
    data = str(tmp_path / "data")
    rc, out, _ = _run(capsys, "keys", "create", "--data", data, "--role", "admin")
    key = out.strip()
    assert rc == 0 and key.startswith("vdb_")
    with ServerProcess(data, env={"VECDB_API_KEY": ""}) as srv:  # no env key: the file's key
        with vecdb.Client(srv.address, api_key=key) as c:
            assert c.whoami()["role"] == "admin"
        # the data folder is locked by the server: offline creation refuses
        rc, _, err = _run(capsys, "keys", "create", "--data", data, "--role", "admin")
        assert rc == 1 and "in use" in err
    rc, _, err = _run(capsys, "health", "--address", srv.address, "--timeout", "0.5")
    assert rc == 1


def test_config_precedence(tmp_path):
    f = tmp_path / "vecdb.toml"
    f.write_text('data = "/from/file"\nport = 1111\nworkers = 3\n[db]\nsync = true\n')
    cfg = ServerConfig.load(str(f), env={"VECDB_PORT": "2222", "VECDB_NO_AUTH": "true"},
                            port=None, host="127.0.0.1")
    assert (cfg.data, cfg.port, cfg.workers, cfg.no_auth, cfg.db) == (
        "/from/file", 2222, 3, True, {"sync": True})
    cfg = ServerConfig.load(str(f), env={"VECDB_PORT": "2222", "VECDB_NO_AUTH": "1"},
                            port=3333)
    assert cfg.port == 3333
    f.write_text("bogus = 1\n")
    with pytest.raises(errors.InvalidArgument, match="unknown keys"):
        ServerConfig.load(str(f), env={})
    with pytest.raises(errors.InvalidArgument):
        ServerConfig.load(None, env={"VECDB_PORT": "x", "VECDB_NO_AUTH": "1"})


def test_read_parquet_and_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X = np.random.default_rng(2).random((5, 3), dtype=np.float32)
    pq.write_table(pa.table({"vector": pa.array(list(X), type=pa.list_(pa.float32(), 3))}),
                   tmp_path / "v.parquet")
    np.testing.assert_array_equal(read_vectors(str(tmp_path / "v.parquet")), X)
    with pytest.raises(errors.InvalidArgument):
        read_vectors(str(tmp_path / "v.csv"))
    (tmp_path / "bad.fvecs").write_bytes(np.array([3, 1, 2], dtype="<i4").tobytes())
    with pytest.raises(errors.InvalidArgument):
        read_vectors(str(tmp_path / "bad.fvecs"))
