"""``ServerProcess``: a real ``vecdb serve`` child process on a free loopback port, for tests,
benchmarks and notebooks. Only 127.0.0.1 is ever bound.

    with ServerProcess(tmpdir, api_key="...") as srv:
        client = vecdb.Client(srv.address, api_key=srv.api_key)
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time

_LINE = re.compile(r"vecdb serving on [\d.]+:(\d+)")


class ServerProcess:
    """Start/stop/kill a ``python -m vecdb.cli serve`` child bound to 127.0.0.1."""

    def __init__(self, data: str, api_key: str | None = None, port: int = 0,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.data = str(data)
        self.api_key = api_key or "vdb-test-admin-" + secrets.token_hex(16)
        self.port = port
        self.extra_args = tuple(extra_args)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data + ".server.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, "VECDB_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [sys.executable, "-m", "vecdb.cli", "serve", "--data", self.data,
               "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline().decode()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            m = _LINE.search(line)
            if m:
                self.port = int(m.group(1))
                return self
        self.kill()
        with open(self.log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"vecdb serve did not start; log:\n{tail}")

    def _reap(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self._log.close()
        return rc

    def kill(self) -> int:
        """SIGKILL (a crash): no shutdown code runs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGKILL)
        return self._reap(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        if self.alive():
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
