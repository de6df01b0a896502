"""`jobledger scheduler`, `schedules` and `types`: cron schedules and the job-type catalogue."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import structlog

from ledger import Settings, registry, utc_now

log = structlog.get_logger("jobledger.scheduler")

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def add_parsers(sub: Any) -> None:
    sub.add_parser("scheduler", help="submit the jobs of JOBLEDGER_SCHEDULES, one per cron tick")
    sub.add_parser("schedules", help="the schedules of JOBLEDGER_SCHEDULES and their next fire")
    p = sub.add_parser("types", help="every registered job type: timeout, delays, payload schema")
    p.add_argument("--json", action="store_true", help="one JSON object per type and line")
    COMMANDS.update({"scheduler": scheduler, "schedules": schedules, "types": types})


def migrate(settings: Settings) -> None:
    from consumers.scheduler import CREATE_TICKS

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(CREATE_TICKS)


def configured_schedules(settings: Settings) -> list[Any]:
    """The schedules of JOBLEDGER_SCHEDULES, validated (a bad file raises, naming the field)."""
    from consumers.scheduler import load_schedules

    if settings.schedules is None:
        return []
    return load_schedules(settings.schedules, registry)


def scheduler(args: argparse.Namespace, settings: Settings) -> int:
    """Runs until SIGTERM/SIGINT; a bad schedules file stops it at start (exit 2)."""
    from consumers.scheduler import Scheduler
    from jobledger.cli import open_ledger
    from jobledger.runtime import settle_heap
    from jobledger.signals import until_signalled

    loaded = configured_schedules(settings)
    if not loaded:
        log.info("no schedules: JOBLEDGER_SCHEDULES is not set or empty; idling")
    ledger = open_ledger(settings)
    running = Scheduler(ledger, loaded, clock=utc_now)
    settle_heap()

    try:
        anyio.run(until_signalled, running.run, lambda _signum: running.stop())
    finally:
        ledger.close()
    log.info("scheduler stopped")
    return 0


def schedules(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from consumers.scheduler import next_tick

    loaded = configured_schedules(settings)
    if not loaded:
        print("no schedules (JOBLEDGER_SCHEDULES is not set or lists none)")
        return 0
    now = utc_now()
    table = Table("name", "cron", "timezone", "type", "org", "enabled", "next fire", box=None)
    for s in loaded:
        upcoming = next_tick(s, now).isoformat() if s.enabled else "-"
        enabled = "yes" if s.enabled else "no"
        table.add_row(s.name, s.cron, s.timezone.key, s.job_type, s.org, enabled, upcoming)
    Console(width=200, soft_wrap=True).print(table)
    return 0


def types(args: argparse.Namespace, settings: Settings) -> int:
    rows: list[dict[str, Any]] = []
    for job_type in registry:
        policy = job_type.policy(settings.retry_delays_s)
        rows.append(
            {
                "name": job_type.name,
                "timeout_s": job_type.timeout_s,
                "retry_delays_s": list(policy.delays_s),
                "max_attempts": policy.max_attempts,
                "payload_schema": job_type.payload_model.model_json_schema(),
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("type", "timeout_s", "retry delays (s)", "max attempts", "payload", box=None)
    for row in rows:
        delays = ", ".join(f"{d:g}" for d in row["retry_delays_s"])
        timeout = f"{row['timeout_s']:g}"
        fields = _fields(row["payload_schema"])
        table.add_row(row["name"], timeout, delays, str(row["max_attempts"]), fields)
    Console(width=200, soft_wrap=True).print(table)
    return 0


def _fields(schema: dict[str, Any]) -> str:
    """`name: type = default` per payload field; `--json` has the whole schema."""
    required = set(schema.get("required", ()))
    parts: list[str] = []
    for name, spec in schema.get("properties", {}).items():
        options = [str(option.get("type", "any")) for option in spec.get("anyOf", [])]
        kind = spec.get("type") or "|".join(options) or "any"
        default = "" if "default" not in spec else f" = {json.dumps(spec['default'])}"
        if name not in required and "default" not in spec:
            default = " (optional)"
        parts.append(f"{name}: {kind}{default}")
    return ", ".join(parts)
