"""A real multi-node Ray cluster on 127.0.0.1 for tests: ``ray start`` head and worker nodes as subprocesses.

Every Ray endpoint stays on the loopback interface: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray resolve this
machine's address to 127.0.0.1, and worker nodes (which Ray refuses to start in that mode) are started through
``python tests/ray_cluster.py start ...``, which lifts only that refusal and keeps the loopback address as given.
Nodes run in a private temp dir on private ports with their own auth token (the driver sets ``auth_env`` too);
:meth:`LocalRayCluster.stop` ends exactly the processes started from that dir (``ray stop`` would end every Ray
process of this user on the machine).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 60
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_auth_env() -> dict[str, str]:
    """Token authentication with a fresh token; a driver must have it in its environment before importing ray."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


class LocalRayCluster:
    """A head node and worker nodes, each ``ray start`` with ``--num-cpus`` CPUs, all on 127.0.0.1."""

    def __init__(self, auth_env: dict[str, str] | None = None) -> None:
        # short: Ray's unix socket paths live under it and must stay below 108 characters
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        #: its own token (Ray's token authentication), so neither ~/.ray/auth_token nor another cluster matters
        self.auth_env = auth_env or new_auth_env()
        self.env = {**os.environ, **LOOPBACK_ENV, **self.auth_env}

    def _ray_start(self, *args: str) -> None:
        command = [
            sys.executable,
            __file__,
            "start",
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            "--object-store-memory",
            str(100 * 1024 * 1024),
            "--dashboard-agent-listen-port",
            str(free_port()),
            *args,
        ]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}): {(done.stderr or done.stdout)[-600:]}")

    def start_head(self, num_cpus: int = 1) -> None:
        # a killed node is declared dead after ~3 s instead of Ray's default ~15-30 s
        health = (
            '{"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}'
        )
        self._ray_start(
            "--head",
            "--port",
            str(self.port),
            "--num-cpus",
            str(num_cpus),
            "--temp-dir",
            str(self.temp_dir),
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(free_port()),
            "--system-config",
            health,
        )

    def add_worker(self, num_cpus: int = 1, resources: str | None = None) -> None:
        extra = ["--resources", resources] if resources else []
        self._ray_start("--address", self.address, "--num-cpus", str(num_cpus), *extra)

    def processes(self, marker: str | None = None) -> list:
        """Processes started for this cluster (found by its private temp dir; ``marker`` narrows by command line),
        with all their children."""
        import psutil

        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if str(self.temp_dir) in line and (marker is None or marker in line):
                roots.append(proc)
        found = {}
        for root in roots:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.Error:
                pass
        return list(found.values())

    def node_processes(self, resource: str) -> list:
        """The raylet of the worker node started with a custom ``resource``, then every process under it."""
        raylets = [p for p in self.processes() if p.name() == "raylet" and resource in " ".join(p.cmdline())]
        return [proc for raylet in raylets for proc in [raylet, *raylet.children(recursive=True)]]

    def kill_node(self, resource: str) -> int:
        """SIGKILL one worker node (found by its custom ``resource``): its raylet and everything under it."""
        import psutil

        victims = self.node_processes(resource)
        for proc in reversed(victims):
            try:
                proc.kill()
            except psutil.Error:
                pass
        return len(victims)

    def stop(self) -> None:
        """End every process of this cluster (SIGTERM, then SIGKILL after 10 s) and remove its temp dir."""
        import shutil

        import psutil

        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _ray_cli() -> None:
    """``ray`` with the loopback addressing above and multi-node allowed (what ``add_worker`` runs)."""
    import ray._private.ray_constants as constants
    import ray._private.services as services
    from ray.scripts.scripts import main

    constants.ENABLE_RAY_CLUSTER = True  # lifts the single-node refusal only: addresses are given explicitly
    services.resolve_ip_for_localhost = lambda host: host
    sys.argv = ["ray", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    _ray_cli()
