"""The one answer to "may and can we reach the Hugging Face Hub?", decided in under two seconds, so an offline run
fails (or falls back) at once instead of after minutes of download retries. Models and datasets both ask it."""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
from urllib.parse import urlparse

#: seconds the probe may take; with the lookup in a daemon thread this bounds the whole decision
PROBE_TIMEOUT_S = 1.5
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """True when the user forbade Hub access (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), read at call time."""
    return any(
        (os.environ.get(var) or "").strip().upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_address() -> tuple[str, int, bool]:
    """Host, port and whether to finish a TLS handshake for the first hop of a Hub request: the HTTPS proxy when one
    is set (TCP only: a proxy is spoken to in clear first), else the Hub endpoint (``HF_ENDPOINT`` honoured)."""
    proxy = next((os.environ[v] for v in _PROXY_VARS if os.environ.get(v)), None)
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80), False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    tls = url.scheme != "http"
    return url.hostname or "huggingface.co", url.port or (443 if tls else 80), tls


def _probe(host: str, port: int, tls: bool, timeout: float) -> bool:
    """Connect (and for https finish a TLS handshake, so a middlebox that accepts any TCP connection does not count)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if tls:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    pass
        return True
    except (OSError, ssl.SSLError):
        return False


@functools.cache
def _endpoint_reachable(host: str, port: int, tls: bool, timeout: float) -> bool:
    """Run the probe in a daemon thread so a hanging DNS lookup cannot exceed ``timeout``; memoised per process."""
    result: list[bool] = []
    worker = threading.Thread(
        target=lambda: result.append(_probe(host, port, tls, timeout)), name="hub-probe", daemon=True
    )
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub can be contacted: False at once when offline is set, else a short probe (answer memoised)."""
    if hub_offline():
        return False
    return _endpoint_reachable(*hub_address(), timeout)


def hub_unavailable_reason() -> str:
    """Why the Hub cannot be used, for one-line errors: offline mode, or the address that did not answer."""
    if hub_offline():
        return "offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
    host, port, _ = hub_address()
    return f"unreachable (no connection to {host}:{port} within {PROBE_TIMEOUT_S:g} s)"
