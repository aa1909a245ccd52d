"""An S3-compatible object store on this machine for tests: moto's server (a process of its own), behind
a proxy that adds a fixed latency to every request (as a real bucket in another building would), both
on 127.0.0.1 and stopped when the block ends."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REQUEST_LINE = re.compile(rb"^(GET|HEAD|PUT|POST|DELETE) \S+ HTTP/1\.[01]\r\n")


class LatencyProxy:
    """Forwards TCP to `target`, holding each chunk a client sends for `latency_s` before passing it on;
    `requests` counts the HTTP requests sent through it (a client writes each request's head in one piece)."""

    def __init__(self, target_port: int, latency_s: float) -> None:
        self.target_port, self.latency_s, self.port = target_port, latency_s, _free_port()
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                    *, from_client: bool) -> None:
        try:
            while data := await reader.read(65536):
                if from_client and REQUEST_LINE.match(data):
                    self.requests += 1
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pump(client_reader, server_writer, self.latency_s, from_client=True),
                             self._pump(server_reader, client_writer, 0.0, from_client=False))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class ObjectStore:
    direct: str  # endpoint URL without latency (for setting up)
    slow: str  # endpoint URL behind the latency proxy
    proxy: LatencyProxy

    def env(self, endpoint: str) -> dict[str, str]:
        """Environment variables that point boto and fsspec's s3fs at `endpoint`."""
        return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                "FSSPEC_S3": json.dumps({"endpoint_url": endpoint})}


@contextmanager
def local_s3(latency_s: float = 0.02) -> Iterator[ObjectStore]:
    """moto's S3 server and a latency proxy in front of it, on loopback, for the duration of the block."""
    port = _free_port()
    # its own process: the server's request handling never waits on the test's GIL (or the test on it)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, server)
        proxy = LatencyProxy(port, latency_s)
        proxy.start()
        try:
            yield ObjectStore(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy.port}", proxy)
        finally:
            proxy.stop()
    finally:
        server.terminate()
        server.wait(10)


def _wait_for_port(port: int, server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto's server exited with status {server.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"moto's server did not listen on port {port} within {timeout_s:g} s")
