"""The SDK retries UNAVAILABLE with back-off (server starting/restarting) and gives up with a
clear RemoteError after ``retry_s``."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import vecdb
from vecdb.client import RemoteError
from vecdb.server.testing import ServerProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unary_call_waits_for_a_starting_server(tmp_path):
    port = _free_port()
    srv = ServerProcess(str(tmp_path / "data"), port=port)

    def start_later():
        time.sleep(0.5)
        srv.start()

    th = threading.Thread(target=start_later)
    th.start()
    try:
        with vecdb.Client(f"127.0.0.1:{port}", api_key=srv.api_key, retry_s=60) as c:
            t0 = time.monotonic()
            assert c.list_collections() == []  # issued while nothing listens yet
            assert time.monotonic() - t0 >= 0.4
    finally:
        th.join()
        srv.terminate()


def test_gives_up_after_retry_s():
    with vecdb.Client(f"127.0.0.1:{_free_port()}", api_key="x" * 20, retry_s=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as ei:
            c.list_collections()
        assert ei.value.code == "UNAVAILABLE" and time.monotonic() - t0 < 10
