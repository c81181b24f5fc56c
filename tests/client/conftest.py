"""A real ``vecdb serve`` process per test module (127.0.0.1, free port, bootstrap admin key)."""

from __future__ import annotations

import pytest

import vecdb
from vecdb.server.testing import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(str(tmp_path_factory.mktemp("srv") / "data")) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server):
    with vecdb.Client(server.address, api_key=server.api_key, retry_s=2) as c:
        yield c
