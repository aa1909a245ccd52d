"""A real multi-process Ray cluster on this machine for the tests: a head and worker nodes started with
`ray start`, each with its own temp dir, ports and CPUs, and stopped by exactly the processes it started.

Every `ray start` runs in a new session, so the daemons it leaves behind (GCS, raylet, dashboard,
agents) share its process group: stopping a node signals that group and nothing else on the machine
(never `ray stop`, which stops every Ray on it). Killing a node SIGKILLs its raylet, as a lost
machine would look to the rest of the cluster. A token of the cluster's own authenticates every
client (RAY_AUTH_TOKEN), so the user's ~/.ray is neither read nor written.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
HEALTH_CHECK = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "500", "RAY_health_check_initial_delay_ms": "500"}
SERVICE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
WORKER_PORTS = 40  # worker processes a node may start (a port each)


def free_ports(n: int) -> list[int]:
    """n ports free right now (bound to 0 together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int) -> int:
    """The first of `size` consecutive ports that are free now."""
    for _ in range(200):
        first = 20000 + secrets.randbelow(30000)
        try:
            held = []
            for port in range(first, first + size):
                s = socket.socket()
                held.append(s)
                s.bind(("", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


@dataclass
class Node:
    """One `ray start` (head or worker): its temp dir and the process group of what it started."""

    name: str
    temp_dir: Path
    pgid: int
    log: Path

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.pgid:
                    found.append(p)
            except OSError:
                continue
        return found

    def raylet(self) -> psutil.Process:
        for p in self.processes():
            try:
                if p.name() == "raylet" or (p.cmdline() and p.cmdline()[0].endswith("/raylet")):
                    return p
            except psutil.Error:
                continue
        raise RuntimeError(f"{self.name}: no raylet running")

    def node_id(self) -> str:
        """The Ray node id of this node (from its raylet's command line)."""
        for arg in self.raylet().cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise RuntimeError(f"{self.name}: raylet without --node_id")

    def kill(self) -> None:
        """SIGKILL every process of this node (a machine lost, as the cluster sees it)."""
        for p in self.processes():
            try:
                p.kill()
            except psutil.Error:
                pass

    def stop(self) -> None:
        """SIGTERM this node's processes, SIGKILL what is left after 2 s (a test's node keeps nothing worth
        a longer wait; Ray's dashboard and agents take 10 s or more to end on their own)."""
        processes = self.processes()
        for p in processes:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(processes, timeout=2)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)


@dataclass
class LocalRayCluster:
    """A head started at construction; `add_node()` starts workers. `env` is what a client needs."""

    cpus: int = 1
    gpus: int = 0  # GPUs each node declares (Ray schedules them; no device need be there)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lmray_", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    node_env: dict[str, str] = field(default_factory=dict)  # added to every node's processes (e.g. fault injection)

    def __post_init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        try:
            self.head = self._start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                             f"--ray-client-server-port={self.client_port}"])
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        """The GCS address (what `ray start --address`, RAY_ADDRESS and --address take)."""
        return f"{host_ip()}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """The jobs API address (what `ray job submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (driver, job CLI): its token, not the user's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    def add_node(self, cpus: int | None = None, env: dict[str, str] | None = None) -> Node:
        """A worker node; `env`: added to its processes' environment."""
        return self._start(f"worker{len(self.nodes)}", [f"--address={self.address}"], cpus, env)

    def _start(self, name: str, args: list[str], cpus: int | None = None, env: dict[str, str] | None = None) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True)
        ports = free_ports(len(SERVICE_PORTS))
        first_worker_port = free_port_range(WORKER_PORTS)
        command = [RAY, "start", *args, f"--temp-dir={temp_dir}", f"--num-cpus={cpus or self.cpus}",
                   f"--num-gpus={self.gpus}", "--object-store-memory=100000000", "--disable-usage-stats",
                   f"--min-worker-port={first_worker_port}", f"--max-worker-port={first_worker_port + WORKER_PORTS - 1}",
                   *(f"--{flag}={port}" for flag, port in zip(SERVICE_PORTS, ports))]
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            started = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**self.env, **HEALTH_CHECK, **self.node_env, **(env or {})})
        node = Node(name, temp_dir, started.pid, log)
        self.nodes.append(node)
        if started.wait(timeout=120) != 0:
            raise RuntimeError(f"`ray start` for {name} failed:\n{log.read_text()[-3000:]}")
        return node

    def wait_for_nodes(self, alive: int, timeout: float = 60) -> None:
        """Until the cluster counts `alive` live nodes (`ray status`, from outside)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([RAY, "list", "nodes", f"--address={self.address}", "--filter", "state=ALIVE",
                                  "--format=json"], capture_output=True, text=True, env=self.env)
            if out.returncode == 0 and out.stdout.count('"node_id"') == alive:
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {alive} live nodes in {timeout} s")

    def stop(self) -> None:
        """Stop every node this cluster started (workers first), and remove its temp dirs."""
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def host_ip() -> str:
    """The address Ray gives this machine's nodes (it replaces loopback with the routable one)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else str(code)
