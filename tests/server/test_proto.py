"""Generated stubs are current, wire packing round-trips, and the key store keeps only hashes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vecdb import errors
from vecdb._proto import wire
from vecdb._proto.v1 import common_pb2
from vecdb.server.auth import KeyStore, Principal, key_from_metadata


def test_regenerating_stubs_changes_nothing():
    pytest.importorskip("grpc_tools")
    from vecdb._proto import generate

    assert generate.check() == []


def test_pack_unpack_roundtrip_and_checks():
    X = np.random.default_rng(0).random((5, 7), dtype=np.float32)
    v = wire.pack_vectors(X)
    assert v.dim == 7 and len(v.data) == 5 * 7 * 4
    np.testing.assert_array_equal(wire.unpack_vectors(v, n=5, dim=7), X)
    with pytest.raises(errors.DimensionMismatch):
        wire.unpack_vectors(v, dim=8)
    with pytest.raises(errors.InvalidArgument):
        wire.unpack_vectors(v, n=4)
    with pytest.raises(errors.InvalidArgument):
        wire.unpack_vectors(common_pb2.Vectors(data=b"\0" * 5, dim=2))
    with pytest.raises(errors.InvalidArgument):
        wire.unpack_vectors(common_pb2.Vectors(data=v.data, dim=7, dtype=99))
    with pytest.raises(errors.InvalidArgument):
        wire.loads_payload(b"[1, 2]")
    with pytest.raises(errors.InvalidArgument):
        wire.loads_payload(b"{not json")
    assert wire.loads_payload(wire.dumps_payload({"a": 1})) == {"a": 1}


def test_keystore_hashes_persists_and_revokes(tmp_path):
    ks = KeyStore(str(tmp_path))
    secret, info = ks.create("read", ["acme"], "reader")
    raw = (tmp_path / "auth" / "keys.json").read_text()
    assert secret not in raw and secret.split("_")[-1] not in raw
    assert oct(os.stat(tmp_path / "auth" / "keys.json").st_mode & 0o777) == "0o600"
    p = KeyStore(str(tmp_path)).authenticate(secret)  # reloaded from disk
    assert p == Principal(info["key_id"], "read", frozenset({"acme"}))
    assert p.may_read("acme") and not p.may_write("acme") and not p.may_read("beta")
    with pytest.raises(errors.Unauthenticated):
        ks.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(errors.Unauthenticated):
        ks.authenticate(None)
    ks.revoke(info["key_id"])
    with pytest.raises(errors.Unauthenticated):
        KeyStore(str(tmp_path)).authenticate(secret)
    with pytest.raises(errors.NotFound):
        ks.revoke(info["key_id"])
    assert json.loads((tmp_path / "auth" / "keys.json").read_text())["keys"] == []


def test_keystore_rejects_bad_roles(tmp_path):
    ks = KeyStore(str(tmp_path), bootstrap_key="x" * 20)
    assert ks.authenticate("x" * 20).is_admin
    for role, tenants in (("root", []), ("read", []), ("admin", ["a"]), ("read", "acme")):
        with pytest.raises(errors.InvalidArgument):
            ks.create(role, tenants)
    assert not (tmp_path / "auth" / "keys.json").exists()  # nothing written on bad input
    with pytest.raises(errors.InvalidArgument):
        KeyStore(str(tmp_path), bootstrap_key="short")


def test_key_from_metadata():
    assert key_from_metadata([("authorization", "Bearer abc")]) == "abc"
    assert key_from_metadata([("authorization", "bearer  abc ")]) == "abc"
    assert key_from_metadata([("x-api-key", "k")]) == "k"
    assert key_from_metadata([("authorization", "Basic abc")]) is None
    assert key_from_metadata(None) is None
