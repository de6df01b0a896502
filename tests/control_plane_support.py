"""Helpers for the control-plane tests: stream reads, submissions, a private Redis, processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import redis

from consumers.dispatcher import Dispatcher
from ledger import Job, JobSpec, Ledger, Status, change, commands, utc_now
from tests.factories import a_spec

JOBLEDGER = [sys.executable, "-c", "from jobledger.cli import main; main()"]


def submit(ledger: Ledger, n: int = 1, **overrides: Any) -> list[Job]:
    specs: list[tuple[JobSpec, str | None]] = [(a_spec(**overrides), None) for _ in range(n)]
    return [job for job, _ in ledger.submit_many(specs)]


async def catch_up(dispatcher: Dispatcher) -> None:
    """Publish everything there is, then store the position (stored with the next read)."""
    while await dispatcher.step():
        pass
    await dispatcher.step()
    await dispatcher.close()


def start(ledger: Ledger, job: Job, *, lease_s: float = 30.0, worker: str = "w1") -> Job:
    [after] = ledger.append([change(job, commands.start_attempt(job, worker, lease_s, utc_now()))])
    return after


def stream_messages(redis_url: str, prefix: str) -> list[dict[str, Any]]:
    """Every message in every stream of this prefix, as {stream, id, job snapshot}."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        out = []
        for key in client.scan_iter(match="{" + prefix + "}:q:*", count=1000):
            for message_id, fields in client.xrange(key):
                out.append({"stream": key, "id": message_id, "job": json.loads(fields["job"])})
        return out
    finally:
        client.close()


def published_ids(redis_url: str, prefix: str) -> list[UUID]:
    return [UUID(m["job"]["id"]) for m in stream_messages(redis_url, prefix)]


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Remove this test's keys (never a FLUSHALL on a shared Redis)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="{" + prefix + "}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def statuses(ledger: Ledger, job_ids: Sequence[UUID]) -> dict[UUID, Status]:
    return {job_id: job.status for job_id, job in ledger.load_many(list(job_ids)).items()}


def queued_at(ledger: Ledger, job_id: UUID) -> list[datetime]:
    return [e.timestamp for e in ledger.history(job_id) if e.TYPE == "queued"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test alone, which it may flush and restart."""
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PrivateRedis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, "the private redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test alone, which it may crash and restart.

    Made with initdb in a temporary directory and run as the `postgres` user
    when the tests run as root (the server refuses root).
    """
    with tempfile.TemporaryDirectory(prefix="jlpg") as workdir:
        server = PrivatePostgres(Path(workdir), free_port())
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()


def pg_bin() -> Path:
    """The newest installed PostgreSQL's programs (initdb, pg_ctl), as Debian lays them out."""
    return max(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name)) / "bin"


class PrivatePostgres:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = port

    def url(self, database: str) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        self._run(str(pg_bin() / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "root",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1"
        self._run(str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.workdir / "log"), "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with suppress(subprocess.CalledProcessError):
            self._run(str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def crash_and_restart(self, down_s: float = 1.0) -> None:
        """Stop as a crash would (`immediate`: no checkpoint, recovery at start), then start."""
        self.stop("immediate")
        time.sleep(down_s)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


class Role:
    """One `jobledger <role>` subprocess in its own process group; stopped at exit."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.args = list(args)
        # a file, as a pipe nobody reads would block a chatty role
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed with the test process)
        self.proc = subprocess.Popen(
            [*JOBLEDGER, *self.args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill9(self) -> None:
        """kill -9 the role and everything it started."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.kill9()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


# ------------------------------------------------------------ the contract's retry rules


def retry_rule_violations(events: Sequence[Any], delays_s: Sequence[float]) -> list[str]:
    """What in one job's history breaks the contract's lifecycle and retry rules (empty: none).

    Versions and attempts gapless; an attempt starts only after the previous one
    ended; at most one success; a retry starts no earlier than its backoff after
    the failure; nothing but a manual retry follows a terminal event.
    """
    problems: list[str] = []
    versions = [e.originator_version for e in events]
    if versions != list(range(1, len(events) + 1)):
        problems.append(f"versions not gapless: {versions}")
    started = [e.attempt for e in events if e.TYPE == "attempt_started"]
    if started != list(range(1, len(started) + 1)):
        problems.append(f"attempts not gapless: {started}")
    successes = sum(e.TYPE == "attempt_succeeded" for e in events)
    if successes > 1:
        problems.append(f"{successes} successes")
    running: int | None = None
    terminal = False
    retry_at: Any = None
    failed_at: Any = None
    for e in events:
        if terminal and e.TYPE != "retry_requested":
            problems.append(f"{e.TYPE} after the job ended")
        if e.TYPE == "attempt_started":
            if running is not None:
                problems.append(f"attempt {e.attempt} started while {running} ran")
            if retry_at is not None and e.timestamp < retry_at:
                problems.append(f"attempt {e.attempt} started before its retry time")
            running, retry_at = e.attempt, None
        elif e.TYPE in ("attempt_succeeded", "attempt_failed"):
            if running != e.attempt:
                problems.append(f"attempt {e.attempt} ended but {running} ran")
            running = None
            terminal = terminal or e.TYPE == "attempt_succeeded"
            failed_at = e.timestamp
        elif e.TYPE == "retry_scheduled":
            delay = delays_s[min(e.attempt, len(delays_s)) - 1]
            if (e.next_attempt_at - failed_at).total_seconds() < delay - 1e-6:
                problems.append(f"retry after attempt {e.attempt} sooner than {delay}s")
            retry_at = e.next_attempt_at
        elif e.TYPE in ("failed", "cancelled"):
            terminal = True
        elif e.TYPE == "retry_requested":
            terminal = False
    return problems


def terminal_count(events: Sequence[Any]) -> int:
    return sum(e.TYPE in ("attempt_succeeded", "failed", "cancelled") for e in events)
