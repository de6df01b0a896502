"""The API's sub-commands: `api` serves HTTP, `keys create` makes an API key."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

from jobledger.runtime import settle_heap
from jobledger.wiring import make_ledger
from ledger import Ledger, Settings, registry

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=1, choices=range(1, 65), metavar="N",
        help="server processes sharing the port (default 1)",
    )  # fmt: skip
    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, parser_class=type(p))
    p = keys.add_parser("create", help="create an API key for ORG and print it (shown once)")
    p.add_argument("org")
    p.add_argument("--admin", action="store_true", help="the key sees every organisation")


def migrate(settings: Settings) -> None:
    from api import migrate as migrate_api

    migrate_api(settings.database_url)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


SERVER_OPTIONS: dict[str, Any] = {
    # uvloop and httptools when installed: about twice the requests per core.
    "loop": "uvloop" if _have("uvloop") else "asyncio",
    "http": "httptools" if _have("httptools") else "h11",
    "lifespan": "on",
    "access_log": False,  # our own access log writes one JSON line per request
    "log_config": None,
    "server_header": False,
    "timeout_graceful_shutdown": 10,
}


def make_server(config: Any) -> Any:
    """uvicorn's server, except that a SIGTERM or Ctrl-C that drained it exits 0.

    (uvicorn re-raises the signal after its graceful shutdown, so the process
    would end "killed by SIGTERM" after doing everything right.)
    """
    import signal
    import threading
    from collections.abc import Iterator
    from contextlib import contextmanager

    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            before = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    return Server(config)


def uvicorn_config(settings: Settings, ledger: Ledger, host: str, port: int) -> Any:
    import uvicorn

    from api import create_app

    return uvicorn.Config(
        create_app(settings, ledger, registry), host=host, port=port, **SERVER_OPTIONS
    )


def worker_app() -> Any:
    """The app of one of several server processes (`--workers N`): each reads its settings."""
    from api import create_app
    from jobledger.logs import configure
    from jobledger.wiring import load_job_types, load_settings

    settings = load_settings()
    configure(settings.log_format)
    load_job_types(settings)
    ledger = make_ledger(settings, pool_size=4)
    app = create_app(settings, ledger, registry)
    app.on_shutdown.append(ledger.close)
    app.on_startup.append(settle_heap)
    return app


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API inside an event loop that someone else owns (`jobledger up`)."""
    ledger = make_ledger(settings, pool_size=4)
    try:
        config = uvicorn_config(settings, ledger, host, port)
        settle_heap()
        await make_server(config).serve()
    finally:
        ledger.close()


def run_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if args.workers > 1:
        uvicorn.run(
            "jobledger.role_api:worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            **SERVER_OPTIONS,
        )
        return 0
    ledger = make_ledger(settings, pool_size=4)
    try:
        server = make_server(uvicorn_config(settings, ledger, args.host, args.port))
        settle_heap()
        server.run()
    finally:
        ledger.close()
    return 0 if server.started else 1


def keys(args: argparse.Namespace, settings: Settings) -> int:
    from api import create_key

    key, who = create_key(settings.database_url, args.org, admin=args.admin)
    kind = "admin key (sees every organisation)" if who.admin else "key"
    print(f"{kind} {who.key_id} for organisation {who.org}; store it now, it is not shown again:")
    print(key)
    return 0


COMMANDS["api"] = run_api
COMMANDS["keys"] = keys
