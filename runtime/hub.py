"""A quick, bounded answer to "can we reach the Hugging Face hub?", so offline runs fail in seconds, not minutes of retries."""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline_env() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in names)


def hub_reachable(timeout: float = 1.5) -> bool:
    """True if a TCP connection to the hub (``HF_ENDPOINT`` or huggingface.co:443) opens within ``timeout`` seconds.

    Skipped (False) in offline mode. The connect runs in a daemon thread so a slow DNS lookup cannot stretch the wait.
    """
    if hub_offline_env():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, name="hub-reachable", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
