"""Faults with real processes: kill -9 dispatchers, a crashed role under `up`, Redis flushed or
restarted mid-run, PostgreSQL crashed and restarted mid-run. Every job still ends exactly once,
and nothing queued is lost."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from uuid import UUID

import pytest

from ledger import Job, Ledger, Settings
from tests.control_plane_support import (
    JOBLEDGER,
    PrivateRedis,
    Role,
    free_port,
    private_postgres,
    private_redis,
    published_ids,
    retry_rule_violations,
    statuses,
    submit,
    terminal_count,
    wait_for,
)

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.control_plane_fixtures"]  # fixtures: clean_redis

DELAYS = (0.2, 0.4)


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "JOBLEDGER_LEASE_S": "2",
        "JOBLEDGER_RETRY_DELAYS": ",".join(map(str, DELAYS)),
        "JOBLEDGER_SHUTDOWN_GRACE_S": "1",
        "JOBLEDGER_WORKER_CONCURRENCY": "20",
    }


@pytest.fixture
def roles(clean_redis: None) -> Iterator[list[Role]]:
    """Roles of the test, stopped at its end (gracefully, so `up` stops its children).

    Stopped before the test's Redis keys are deleted, so none come back.
    """
    started: list[Role] = []
    yield started
    for role in started:
        role.proc.send_signal(signal.SIGTERM)
    for role in started:
        role.terminate(timeout_s=20)


def log_lines(role: Role) -> list[dict[str, object]]:
    out = []
    for line in role.output().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def logged(role: Role, event: str) -> list[dict[str, object]]:
    return [line for line in log_lines(role) if line.get("event") == event]


def all_published(settings: Settings, jobs: list[Job]) -> Callable[[], bool]:
    wanted = {j.id for j in jobs}
    return lambda: wanted <= set(published_ids(settings.redis_url, settings.redis_prefix))


def test_dispatchers_killed_mid_run_lose_no_queued_job(
    ledger: Ledger, settings: Settings, env: dict[str, str], roles: list[Role], clean_redis: None
) -> None:
    """kill -9 at random moments, around appends and publishes; jobs also arrive while none runs."""
    jobs: list[Job] = []
    done = threading.Event()

    def keep_submitting() -> None:
        while not done.is_set():
            # a fresh organisation per batch keeps clear of the active-job quota
            jobs.extend(submit(ledger, random.randint(1, 20), org=f"org{len(jobs)}"))
            time.sleep(0.01)

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    try:
        for _ in range(3):
            roles.append(Role(["dispatcher"], env))
            wait_for(lambda: published_ids(settings.redis_url, settings.redis_prefix), 30,
                     "a first publish")  # fmt: skip
            time.sleep(random.uniform(0.1, 0.6))
            roles[-1].kill9()
            time.sleep(0.3)  # jobs appended now have no dispatcher at all
    finally:
        done.set()
        submitter.join()
    roles.append(Role(["dispatcher"], env))

    wait_for(all_published(settings, jobs), 60, "every queued job published")
    assert len(jobs) > 50


def test_a_standby_dispatcher_takes_over_when_the_leader_is_killed(
    ledger: Ledger, settings: Settings, env: dict[str, str], roles: list[Role], clean_redis: None
) -> None:
    first, second = Role(["dispatcher"], env), Role(["dispatcher"], env)
    roles += [first, second]
    leader = wait_for(
        lambda: next((r for r in (first, second) if logged(r, "leading")), None), 30, "a leader"
    )
    standby = second if leader is first else first
    before = submit(ledger, 5)
    wait_for(all_published(settings, before), 30, "the leader's publishes")
    assert logged(standby, "leading") == []

    leader.kill9()
    after = submit(ledger, 5)

    wait_for(all_published(settings, after), 30, "the standby's publishes")
    assert len(logged(standby, "leading")) == 1


def test_up_restarts_a_crashed_role_and_stops_every_role_on_sigterm_with_exit_0(
    fast_env: dict[str, str], roles: list[Role], clean_redis: None
) -> None:
    up = Role(["up", "--workers", "0", "--port", str(free_port())], fast_env)
    roles.append(up)

    def started() -> dict[str, int]:
        return {str(x["role"]): int(str(x["pid"])) for x in logged(up, "started")}

    first = wait_for(lambda: started().get("dispatcher"), 30, "the dispatcher role")
    os.kill(first, signal.SIGKILL)

    restarted = wait_for(
        lambda: started().get("dispatcher") if started().get("dispatcher") != first else None,
        30,
        "the dispatcher restarted",
    )
    [crash] = [x for x in logged(up, "exited; restarting") if x["role"] == "dispatcher"]
    assert crash["exit_code"] == -signal.SIGKILL
    pids = set(started().values())

    assert up.terminate(timeout_s=60) == 0
    assert restarted in pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_roles_of_a_killed_up_stop_too(
    fast_env: dict[str, str], roles: list[Role], clean_redis: None
) -> None:
    up = Role(["up", "--workers", "1", "--port", str(free_port())], fast_env)
    roles.append(up)
    [plan] = wait_for(lambda: logged(up, "starting roles"), 30, "the supervisor")

    def all_started() -> set[int] | None:
        pids = {int(str(x["pid"])) for x in logged(up, "started")}
        return pids if len(pids) == len(plan["roles"]) else None  # type: ignore[arg-type]

    pids = wait_for(all_started, 30, "every role")
    [group] = logged(up, "roles run in process group")
    time.sleep(2)  # let each role install its signal handlers: this is not a start-up race test

    os.kill(up.proc.pid, signal.SIGKILL)  # the supervisor alone; its children are elsewhere

    def all_gone() -> bool:
        return all(not _alive(pid) for pid in pids)

    try:
        wait_for(all_gone, 30, "every role to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):  # leave nothing running, whatever happened
            os.killpg(int(str(group["pgid"])), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_through_a_redis_fault(
    ledger: Ledger,
    fast_env: dict[str, str],
    roles: list[Role],
    redis: PrivateRedis,
    fault: Callable[[], None],
    command: list[list[str]],
) -> list[UUID]:
    """Jobs run while `fault` hits Redis; more arrive after it; returns every job id.

    Few slots per worker, so that many jobs wait in the streams when the fault hits.
    """
    env = {**fast_env, "REDIS_URL": redis.url, "JOBLEDGER_WORKER_CONCURRENCY": "4"}
    jobs = [j.id for j in submit(ledger, 30, payload={"sleep_ms": 150})]
    jobs += [j.id for j in submit(ledger, 10, payload={"sleep_ms": 50, "fail_times": 1})]
    roles += [Role(args, env) for args in command]

    def some_ended() -> bool:
        return sum(s.is_terminal for s in statuses(ledger, jobs).values()) >= 8

    wait_for(some_ended, 60, "the first jobs to end")
    fault()
    waiting = [s for s in statuses(ledger, jobs).values() if s.value in ("queued", "retrying")]
    assert waiting, "the fault came too late to lose any message"
    jobs += [j.id for j in submit(ledger, 20, org="beta", payload={"sleep_ms": 100})]

    def all_ended() -> bool:
        return all(s.is_terminal for s in statuses(ledger, jobs).values())

    wait_for(all_ended, 90, "every job to end", every_s=0.2)
    return jobs


def assert_each_ended_once(ledger: Ledger, jobs: list[UUID]) -> None:
    for job_id in jobs:
        events = ledger.history(job_id)
        assert retry_rule_violations(events, DELAYS) == [], job_id
        assert terminal_count(events) == 1, [e.TYPE for e in events]
        assert sum(e.TYPE == "attempt_succeeded" for e in events) == 1


def test_every_job_ends_exactly_once_when_redis_is_flushed_mid_run(
    ledger: Ledger, fast_env: dict[str, str], roles: list[Role]
) -> None:
    with private_redis() as redis:
        jobs = run_through_a_redis_fault(
            ledger, fast_env, roles, redis, redis.flushall,
            [["dispatcher"], ["worker"], ["worker"]],
        )  # fmt: skip
    assert_each_ended_once(ledger, jobs)


def test_every_job_ends_exactly_once_when_redis_restarts_mid_run_under_up(
    ledger: Ledger, fast_env: dict[str, str], roles: list[Role]
) -> None:
    with private_redis() as redis:
        jobs = run_through_a_redis_fault(
            ledger, fast_env, roles, redis, redis.restart,
            [["up", "--workers", "2", "--port", str(free_port())]],
        )  # fmt: skip
    assert_each_ended_once(ledger, jobs)


def test_a_message_published_three_times_starts_one_attempt_on_real_workers(
    ledger: Ledger, settings: Settings, fast_env: dict[str, str], roles: list[Role],
    clean_redis: None,
) -> None:  # fmt: skip
    import anyio
    import redis.asyncio as aioredis

    from consumers.streams import StreamKeys, Streams

    jobs = submit(ledger, 5, payload={"sleep_ms": 100})

    async def publish_thrice() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        streams = Streams(client, StreamKeys(settings.redis_prefix))
        for _ in range(3):
            await streams.publish(jobs)
        await client.aclose()

    anyio.run(publish_thrice)
    roles += [Role(["worker"], fast_env), Role(["worker"], fast_env)]

    ids = [j.id for j in jobs]
    wait_for(lambda: all(s.is_terminal for s in statuses(ledger, ids).values()), 60, "the jobs")
    for job_id in ids:
        kinds = [e.TYPE for e in ledger.history(job_id)]
        assert kinds.count("attempt_started") == 1, kinds
        assert kinds[-1] == "attempt_succeeded"


@pytest.mark.parametrize("down_s", [3.0, 15.0])
def test_every_job_ends_exactly_once_when_postgresql_crashes_mid_run(
    fast_env: dict[str, str], redis_prefix: str, roles: list[Role], down_s: float
) -> None:
    """The ledger's server stops as in a crash (no checkpoint) and comes back `down_s` later.

    Commits acknowledged before the crash survive it; what was in flight failed
    and is retried: every role reconnects, and each job still ends exactly once.
    3 s is within the worker's retries of an append; 15 s outlasts them.
    """
    from jobledger.wiring import make_ledger

    with private_postgres() as pg:
        settings = Settings(
            database_url=pg.url("jobledger"),
            redis_url=fast_env["REDIS_URL"],
            redis_prefix=redis_prefix,
        )
        env = {**fast_env, "DATABASE_URL": settings.database_url,
               "JOBLEDGER_WORKER_CONCURRENCY": "4"}  # fmt: skip
        subprocess.run([*JOBLEDGER, "migrate"], env=env, check=True, capture_output=True)
        ledger = make_ledger(settings, publish=False)
        try:
            jobs = [j.id for j in submit(ledger, 30, payload={"sleep_ms": 150})]
            jobs += [j.id for j in submit(ledger, 10, payload={"sleep_ms": 50, "fail_times": 1})]
            roles += [Role(args, env) for args in (["dispatcher"], ["worker"], ["worker"])]

            def ended() -> int:
                return sum(s.is_terminal for s in statuses(ledger, jobs).values())

            wait_for(lambda: ended() >= 8, 60, "the first jobs to end")
            running = [s for s in statuses(ledger, jobs).values() if s.value == "running"]
            assert running, "the crash came when no attempt was running"
            pg.crash_and_restart(down_s=down_s)
            jobs += [j.id for j in submit(ledger, 20, org="beta", payload={"sleep_ms": 100})]
            # Starts the workers could not record went back to the streams, so
            # they run once the ledger is back (~4 s here), not when the
            # reconcile's 30 s safety net finds them queued (~33 s).
            wait_for(lambda: ended() == len(jobs), 15, "every job to end", every_s=0.2)
            assert_each_ended_once(ledger, jobs)
            for role in roles:
                assert role.proc.poll() is None, f"{role.args} exited: {role.output()[-2000:]}"
                # The outage is told in a line or two, never with a traceback.
                assert not [line for line in log_lines(role) if "exception" in line]
            [dispatcher] = [r for r in roles if r.args == ["dispatcher"]]
            told = logged(dispatcher, "database or redis unreachable; retrying every second")
            assert len(told) == 1, [(t["timestamp"], t["error"]) for t in told]  # not once a second
        finally:
            for role in roles:
                role.terminate(timeout_s=20)
            roles.clear()
            ledger.close()
