"""Joining a Ray cluster: the one connection every Ray path shares, kept on 127.0.0.1 for a local cluster."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from twostage.errors import UsageError

#: environment the driver hands to every actor, so workers started elsewhere read the same caches and offline settings
FORWARDED_ENV = (
    "TWOSTAGE_CACHE_DIR",
    "TWOSTAGE_BACKEND",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "TOKENIZERS_PARALLELISM",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)
LOOPBACK = ("127.0.0.1", "localhost")


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``host:port``), or with ``auto`` the one Ray finds on this machine, else a
    new single-node one. A loopback address, and a new local cluster, keep every Ray endpoint on 127.0.0.1."""
    from twostage.runtime.optional import require

    ray = require("ray", "ray", "--ray")

    if ray.is_initialized():
        return ray
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    options = dict(runtime_env={"env_vars": env}, log_to_driver=False, logging_level=logging.WARNING)
    if address.rsplit(":", 1)[0] in LOOPBACK:
        _stay_on_loopback(env)
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except ConnectionError as err:
        if address != "auto":
            raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({err})") from None
        _stay_on_loopback(env)
        ray.init(include_dashboard=False, **options)
    _quiet_ray_data(ray)
    return ray


def _stay_on_loopback(env: dict[str, str]) -> None:
    """Make Ray advertise 127.0.0.1 for this machine instead of its outward address (Ray's switch for single-machine
    clusters, read from the environment at import and set here too in case ray was imported already)."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A ``HOST:PORT`` that answers, checked in seconds: Ray's own connect retries for minutes against an address where
    nothing listens."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: expected 'auto' or the head's HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({err.strerror or err})") from None


def _quiet_ray_data(ray: Any) -> None:
    """Ray Data prints a progress report per operator; twostage shows its own progress instead."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
