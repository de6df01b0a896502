"""`jobledger dispatcher`, `reconcile` and `up`: the control plane's commands and signals."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import structlog

from jobledger.runtime import settle_heap
from jobledger.signals import until_signalled
from jobledger.wiring import make_ledger
from ledger import Settings

log = structlog.get_logger("jobledger.up")

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}
# Roles `up` starts besides the dispatcher, in order; a role whose command does
# not exist in this build is skipped with a log line.
OPTIONAL_ROLES = ("projector", "scheduler")


def add_parsers(sub: Any) -> None:
    sub.add_parser(
        "dispatcher",
        help="publish runnable jobs to the streams, fire timers, reap lost workers, reconcile",
    )
    sub.add_parser("reconcile", help="re-dispatch every queued job that the streams lost")
    p = sub.add_parser("up", help="every role in one process group; Ctrl-C drains and stops")
    p.add_argument("--host", default="127.0.0.1", help="address of the HTTP API")
    p.add_argument("--port", type=int, default=8000, help="port of the HTTP API")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    COMMANDS.update({"dispatcher": dispatcher, "reconcile": reconcile, "up": up})


def migrate(settings: Settings) -> None:
    from consumers.dispatcher import CREATE_POSITION

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(CREATE_POSITION)


def dispatcher(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.control_plane import ControlPlane

    ledger = make_ledger(settings, pool_size=4)
    plane = ControlPlane(ledger, settings)
    settle_heap()
    scopes: list[anyio.CancelScope] = []

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await plane.run()

    def on_signal(_signum: signal.Signals) -> None:
        for scope in scopes:
            scope.cancel()

    try:
        anyio.run(until_signalled, main, on_signal)
    finally:
        ledger.close()
    log.info("dispatcher stopped")
    return 0


def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.control_plane import redis_client, stream_names
    from consumers.outages import REDIS_DOWN
    from consumers.reconcile import reconcile as run_reconcile
    from consumers.streams import StreamKeys, Streams
    from jobledger.wiring import StartupError

    ledger = make_ledger(settings)

    async def main() -> int:
        client = redis_client(settings)
        try:
            keys = StreamKeys(settings.redis_prefix)
            return await run_reconcile(ledger, Streams(client, keys), stream_names(ledger, keys))
        finally:
            await client.aclose()

    try:
        count = anyio.run(main)
    except REDIS_DOWN as e:
        raise StartupError(f"cannot reach Redis at {settings.redis_url}: {e}") from None
    finally:
        ledger.close()
    print(f"re-dispatched {count} queued job(s)")
    return 0


def up(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.supervisor import Supervisor
    from jobledger.cli import UsageError
    from jobledger.role_scheduler import configured_schedules

    if args.workers < 0:
        raise UsageError("--workers must be 0 or more")
    configured_schedules(settings)  # a bad file stops `up` now, not its scheduler over and over
    supervisor = Supervisor(_children(args), kill_after_s=settings.shutdown_grace_s + 10.0)
    anyio.run(until_signalled, supervisor.run, supervisor.stop)
    return 0


def _children(args: argparse.Namespace) -> list[Any]:
    from consumers.supervisor import Child
    from jobledger import roles

    def role(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-c", "from jobledger.cli import main; main()", name, *extra]

    def exists(name: str) -> bool:
        try:
            roles.COMMANDS[name]
        except KeyError:
            log.warning("role not in this build; not started", role=name)
            return False
        return True

    children = []
    if exists("api"):
        children.append(Child("api", role("api", "--host", args.host, "--port", str(args.port))))
    children.append(Child("dispatcher", role("dispatcher")))
    if args.workers and exists("worker"):
        children += [Child(f"worker-{i + 1}", role("worker")) for i in range(args.workers)]
    children += [Child(name, role(name)) for name in OPTIONAL_ROLES if exists(name)]
    return children
