"""``twostage serve``: arguments and start-up of the HTTP server."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .search_request import SearchRequest
    from .server import ServerConfig

TOKEN_ENV = "TWOSTAGE_TOKEN"

# (flag, ServerConfig field, help) for each abuse limit; defaults come from ServerConfig
_LIMITS = (
    ("--max-query-chars", "max_query_chars", "longest query accepted"),
    ("--max-k", "max_k", "largest candidate depth k a request may ask for"),
    ("--max-top-n", "max_top_n", "largest top_n a request may ask for"),
    ("--max-ef-search", "max_ef_search", "largest HNSW ef_search a request may ask for"),
    ("--max-nprobe", "max_nprobe", "largest IVF nprobe a request may ask for"),
    ("--max-batch", "max_batch", "most queries in one /search/batch request"),
    ("--max-body-bytes", "max_body_bytes", "largest request body"),
    ("--max-docs-per-add", "max_docs_per_add", "most documents in one POST /documents"),
)


#: the longest a query may wait for others to batch with: beyond a second, batching costs more than it saves
MAX_BATCH_WINDOW_MS = 1000.0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {value}")
    return value


def check_listen_address(host: str, port: int) -> None:
    """Whether ``host``:``port`` can be listened on now, checked before the collection and models load: a port in use
    or an address not on this machine is one line, not Uvicorn's log after the start-up."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Uvicorn binds
            probe.bind((host, port))
    except OSError as err:
        raise UsageError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port, or 0 for a free one"
        ) from None


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``twostage serve`` (search options mirror ``twostage search`` and set the server defaults)."""
    from twostage.runtime.config import add_runtime_arguments

    from .search_request import add_search_arguments
    from .server import ServerConfig

    defaults = ServerConfig()
    p.add_argument("directory", help="collection directory (built by 'twostage index')")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument(
        "--token",
        default=None,
        help=f"token required to add or delete documents (default: ${TOKEN_ENV}; "
        "prefer the variable, a flag is visible to other users in the process list). Without one the server is read-only",
    )
    p.add_argument("--protect-reads", action="store_true", help="require the token for searches and reads too")
    add_search_arguments(p, serve=True)
    add_runtime_arguments(p)
    limits = p.add_argument_group("limits against abuse (each answered with a 4xx error)")
    for flag, field, text in _LIMITS:
        limits.add_argument(
            flag,
            type=int,
            default=getattr(defaults, field),
            dest=field,
            help=f"{text} (default {getattr(defaults, field)})",
        )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help=f"requests in progress before new ones get 503; idle connections do not count and "
        f"/health always answers (default {defaults.max_connections})",
    )
    p.add_argument(
        "--allowed-hosts",
        default=None,
        metavar="NAME,...",
        help="Host header names to serve, comma-separated, '*' for any (default: the --host address, "
        "localhost, 127.0.0.1 and ::1); other names get 400, so a web page cannot rebind to this server",
    )
    from .cli_args import add_wait_argument

    add_wait_argument(p)
    batching = p.add_argument_group("batching")
    batching.add_argument(
        "--batch-window-ms",
        type=float,
        default=defaults.batch_window_ms,
        help=f"how long to wait for more queries to batch together (default {defaults.batch_window_ms:g})",
    )
    batching.add_argument(
        "--max-batch-queries",
        type=int,
        default=defaults.max_batch_queries,
        help=f"queries per encoder/rerank pass (default {defaults.max_batch_queries})",
    )
    scale = p.add_argument_group("scale-out (a sharded collection on Ray)")
    scale.add_argument(
        "--ray",
        default=None,
        metavar="auto|HOST:PORT",
        help="serve a sharded collection from Ray: one actor per shard, writes routed to the owning "
        "shard, reranking on a pool of replica actors (pip install 'twostage[ray]')",
    )
    scale.add_argument(
        "--reranker-replicas",
        type=int,
        default=2,
        metavar="N",
        help="with --ray: reranker replica actors, one model each (default 2)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info)",
    )


def server_config(args: argparse.Namespace, defaults: SearchRequest) -> ServerConfig:
    """The ServerConfig for parsed ``serve`` arguments (token from the flag, else the environment) and the search
    defaults they give."""
    from .server import ServerConfig

    values = {field: getattr(args, field) for _, field, _ in _LIMITS}
    for name, value in [
        *values.items(),
        ("max_connections", args.max_connections),
        ("max_batch_queries", args.max_batch_queries),
    ]:
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if not 0 <= args.batch_window_ms <= MAX_BATCH_WINDOW_MS:  # NaN fails this too
        raise UsageError(f"--batch-window-ms must be 0 to {MAX_BATCH_WINDOW_MS:g} (got {args.batch_window_ms:g})")
    return ServerConfig(
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        protect_reads=args.protect_reads,
        batch_window_ms=args.batch_window_ms,
        max_batch_queries=args.max_batch_queries,
        candidate_depth=defaults.candidate_depth,
        top_k=defaults.top_k,
        rerank=defaults.rerank,
        first_stage=defaults.first_stage,
        max_connections=args.max_connections,
        allowed_hosts=_allowed_hosts(args),
        **values,
    )


def _allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """``--allowed-hosts``, or by default the bind address and the names of this machine's loopback."""
    if args.allowed_hosts:
        return tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    return tuple(dict.fromkeys([args.host, "localhost", "127.0.0.1", "::1"]))


def run_serve(args: argparse.Namespace) -> int:
    """Open the collection (in the engine worker), say how it is served, then run uvicorn until interrupted."""
    import uvicorn

    from twostage.indexes.sharded import collection_exists

    from .engine import Engine
    from .search_request import SearchRequest
    from .server import create_app

    defaults = SearchRequest.from_args(args, search=False)
    config = server_config(args, defaults)
    if config.protect_reads and config.read_only:
        raise UsageError(f"--protect-reads needs a token (--token or ${TOKEN_ENV})")
    if not collection_exists(args.directory):
        raise UsageError(
            f"{args.directory} holds no collection; build one with 'twostage index CORPUS --index {args.directory}'"
        )
    check_listen_address(args.host, args.port)
    spec, runtime = defaults.reranker, defaults.runtime
    if args.ray:
        if args.reranker_replicas < 1:
            raise UsageError(f"--reranker-replicas must be at least 1 (got {args.reranker_replicas})")
        from .shards.replicas import open_ray_engine  # imported only with --ray: importing ray is slow

        app = create_app(
            lambda: open_ray_engine(
                args.directory, address=args.ray, reranker=spec, replicas=args.reranker_replicas, runtime=runtime
            ),
            config,
        )
    else:
        app = create_app(lambda: Engine.open(args.directory, request=defaults), config)
    engine = app.state.batcher.engine
    for notice in engine.notices:  # once, here and in /stats; never repeated in search responses
        print(notice, file=sys.stderr)
    reranker = getattr(engine.reranker, "name", None) if spec else None
    print(
        f"twostage serve: {app.state.batcher.documents} documents in {args.directory}; "
        f"bi-encoder {engine.encoder.name} ({engine.encoder.backend_tag}), reranker {reranker or 'none (first stage only)'}",
        file=sys.stderr,
    )
    if config.read_only:
        print(
            f"read-only: no token set, so adding and deleting documents is refused (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    else:
        print(
            "writes need the token" + (", and so do reads" if config.protect_reads else "; reads are open"),
            file=sys.stderr,
        )
    if not _is_loopback(args.host):
        print(f"note: listening on {args.host}, reachable from other machines", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{host}:{args.port}/" if args.port else f"http://{host}:<port in the Uvicorn line below>/"
    print(f"search page: {where}  (API schema at /openapi.json)", file=sys.stderr)
    sys.stderr.flush()
    if args.host in ("0.0.0.0", "::") and not args.allowed_hosts:
        print(
            "note: only requests addressed to localhost are served; pass --allowed-hosts with this machine's "
            "names (or '*') to serve the others",
            file=sys.stderr,
        )
    # no limit_concurrency: uvicorn counts idle sockets too; RequestBudget counts requests and spares /health
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
