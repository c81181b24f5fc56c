"""UpsertStream of 100k vectors, ``kill -9`` of the server in the middle, restart, resume: no
acknowledged vector is lost and the resumed stream ends with every vector stored exactly once."""

from __future__ import annotations

import threading
import time

import numpy as np

import vecdb
from vecdb.server.testing import ServerProcess

N, D, B = 100_000, 8, 1000


def test_upsert_stream_survives_kill9_and_resumes(tmp_path):
    data = str(tmp_path / "data")
    X = np.random.default_rng(3).random((N, D), dtype=np.float32)
    srv = ServerProcess(data).start()
    srv2 = None
    try:
        client = vecdb.Client(srv.address, api_key=srv.api_key, retry_s=90)
        col = client.create_collection("s", dim=D)
        col.create_tenant("t")
        acked: list[np.ndarray] = []
        lock = threading.Lock()
        out: dict = {}

        def on_ack(ids):
            with lock:
                acked.append(ids)

        killed = threading.Event()

        def batches():
            for lo in range(0, N, B):
                if lo == 40_000:  # hold the source until the kill: it lands mid-stream
                    killed.wait(60)
                yield np.arange(lo, lo + B), X[lo: lo + B]

        def run():
            try:
                out["n"] = col.ingest(batches(), tenant="t", window=4, on_ack=on_ack)
            except BaseException as e:  # reported by the main thread
                out["error"] = e

        th = threading.Thread(target=run)
        th.start()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with lock:
                n_acked = sum(len(a) for a in acked)
            if n_acked >= 30_000 or "n" in out or "error" in out:
                break
            time.sleep(0.002)
        assert 30_000 <= n_acked < N, f"kill should land mid-stream ({n_acked} acked)"
        srv.kill()  # SIGKILL: no shutdown, no checkpoint
        killed.set()
        with lock:
            snapshot = np.concatenate(acked)
        assert len(snapshot) >= 30_000

        srv2 = ServerProcess(data, api_key=srv.api_key, port=srv.port).start()
        with vecdb.Client(srv2.address, api_key=srv.api_key) as c2:
            got = c2.collection("s").get(snapshot, tenant="t")
            assert len(got) == len(snapshot), "acknowledged vectors lost by the crash"
            order = np.argsort(got.ids)
            np.testing.assert_array_equal(got.vectors[order],
                                          X[np.sort(snapshot).astype(np.int64)])

        th.join(180)
        assert not th.is_alive()
        assert "error" not in out, out.get("error")
        assert out["n"] == N  # every batch acknowledged exactly once across the two streams
        with vecdb.Client(srv2.address, api_key=srv.api_key) as c2:
            col2 = c2.collection("s")
            assert col2.count() == N
            ids = np.concatenate([p.ids for p in col2.scroll("t", page_size=20_000)])
            np.testing.assert_array_equal(ids, np.arange(N, dtype=np.uint64))
            res = col2.search(X[[5, 50_000, N - 1]], k=1, tenant="t")
            assert res.ids[:, 0].tolist() == [5, 50_000, N - 1]
        client.close()
    finally:
        srv.kill()
        if srv2 is not None:
            srv2.kill()
