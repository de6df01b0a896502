"""The `jobledger` command: the one composition root that wires the packages together."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

from jobledger.wiring import StartupError, load_job_types, load_settings, make_ledger
from ledger import Ledger, Settings

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def parse_uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id (a UUID): {value!r}") from None


def parse_time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"time needs a time zone (e.g. {value}Z): {value!r}")
    return at


Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def build_parser() -> Parser:
    parser = Parser(prog="jobledger", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    sub.add_parser("migrate", help="create or upgrade every table (safe to repeat)")

    p = sub.add_parser("submit", help="submit a job, print its id")
    p.add_argument("type")
    p.add_argument("--payload", default="{}", help="the payload as a JSON object")
    p.add_argument("--org", required=True)
    p.add_argument("--delay-s", type=float, default=None)
    p.add_argument("--run-at", type=parse_time, default=None)
    p.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    p.add_argument("--max-attempts", type=int, default=None)
    p.add_argument("--timeout-s", type=float, default=None)
    p.add_argument("--idempotency-key", default=None)

    p = sub.add_parser("show", help="a job's state replayed from the ledger, as JSON")
    p.add_argument("id", type=parse_uuid)
    p.add_argument("--at", type=parse_time, default=None, help="replay up to this instant")

    p = sub.add_parser("history", help="a job's events")
    p.add_argument("id", type=parse_uuid)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    from jobledger import roles

    roles.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        from jobledger.logs import configure

        configure(settings.log_format)
        load_job_types(settings)
        from jobledger import roles

        handler = COMMANDS.get(args.command) or roles.COMMANDS[args.command]
        code = handler(args, settings)
    except (UsageError, StartupError) as e:
        _die(str(e))
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        _die(_describe(e))
    raise SystemExit(code)


def _die(message: str) -> NoReturn:
    sys.stderr.write(f"jobledger: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def _describe(e: Exception) -> str:
    from ledger import DATABASE_DOWN, JobledgerError

    if isinstance(e, JobledgerError):
        errors = getattr(e, "errors", None)
        if errors and str(e).startswith("invalid payload"):
            where = ".".join(str(p) for p in errors[0].get("loc", ()))
            return f"{e}: {where}: {errors[0].get('msg')}"
        return str(e)
    if isinstance(e, DATABASE_DOWN):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot reach the database: {first}"
    return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------ commands


CONNECT_TIMEOUT_S = 3


def open_ledger(settings: Settings) -> Ledger:
    """The ledger, after one quick connection: an unreachable database fails in seconds.

    The ledger's pool would otherwise keep retrying for its own, longer timeout.
    """
    import psycopg

    psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT_S).close()
    return make_ledger(settings)


@command("migrate")
def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from jobledger import roles
    from ledger import ensure_database

    created = ensure_database(settings.database_url)
    ledger = make_ledger(settings, create_tables=True)
    ledger.close()
    roles.migrate(settings)
    print("created database and tables" if created else "tables are up to date")
    return 0


@command("submit")
def submit(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from ledger import Submission, check_org, to_spec, utc_now

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise UsageError(f"--payload is not valid JSON: {e.msg} at position {e.pos}") from None
    org = check_org(args.org)
    try:
        submission = Submission(
            type=args.type,
            payload=payload,
            priority=args.priority,
            run_at=args.run_at,
            delay_s=args.delay_s,
            max_attempts=args.max_attempts,
            timeout_s=args.timeout_s,
            idempotency_key=args.idempotency_key,
        )
    except ValidationError as e:
        raise UsageError(_first_error(e)) from None
    ledger = open_ledger(settings)
    try:
        spec, fingerprint = to_spec(
            submission,
            org=org,
            registry=ledger.registry,
            now=utc_now(),
            retry_delays_s=settings.retry_delays_s,
        )
        job, _ = ledger.submit(spec, fingerprint=fingerprint)
    finally:
        ledger.close()
    print(job.id)
    return 0


def _first_error(e: Any) -> str:
    first = e.errors()[0]
    if not first["loc"]:
        return str(first["msg"])
    field, *inner = (str(p) for p in first["loc"])
    where = ".".join(["--" + field.replace("_", "-"), *inner])  # the option, as typed
    return f"{where}: {first['msg']}"


@command("show")
def show(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import as_document

    ledger = open_ledger(settings)
    try:
        job = ledger.state_at(args.id, args.at) if args.at else ledger.load(args.id)
    finally:
        ledger.close()
    print(json.dumps(as_document(job), indent=2))
    return 0


@command("history")
def history(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import event_document

    ledger = open_ledger(settings)
    try:
        events = [event_document(e) for e in ledger.history(args.id)]
    finally:
        ledger.close()
    if args.json:
        for doc in events:
            print(json.dumps(doc))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "type", "at", "data", box=None, show_edge=False)
    for doc in events:
        table.add_row(str(doc["version"]), doc["type"], doc["at"], json.dumps(doc["data"]))
    Console(width=200, soft_wrap=True).print(table)
    return 0
