"""Start the real `chatforge serve` in a subprocess on a free 127.0.0.1 port, wait until it answers, stop it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run: Path, *extra: str, stage: str = "base", log: Path | None = None):
    """Yields the base URL (http://127.0.0.1:PORT); the server's output goes to `log`."""
    port = free_port()
    log = log or run / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "chatforge.cli", "serve", "--run", str(run), "--stage", stage,
           "--port", str(port), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=cli_env(threads=1), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
