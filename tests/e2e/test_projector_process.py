"""`jobledger projector` as real processes: kill -9 mid-batch, leader takeover, wake-ups."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from projections import rebuild_views
from tests.factories import a_spec
from tests.integration.projection_workload import tracked_position, view_rows, workload


class Projector:
    """One `jobledger projector` process, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["jobledger", "projector", *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def leads(self) -> bool:
        return "projector leads" in self.log.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def projectors(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Projector]]:
    started: list[Projector] = []

    def start(name: str, *args: str) -> Projector:
        started.append(Projector(env, tmp_path / f"{name}.log", *args))
        return started[-1]

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def wait_for(check: Callable[[], bool], timeout: float = 20.0, every: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(every)


def test_a_projector_killed_mid_batch_resumes_with_no_event_lost_or_applied_twice(
    ledger: Ledger, database_url: str, projectors: Callable[..., Projector]
) -> None:
    workload(ledger, 1000)
    head = ledger.max_position()
    first = projectors("first", "--batch-size", "300")
    wait_for(lambda: tracked_position(database_url) > head // 3)
    first.kill()  # while it works through the backlog, a batch at a time
    killed_at = tracked_position(database_url)
    assert 0 < killed_at < head

    second = projectors("second")
    wait_for(lambda: tracked_position(database_url) == head, timeout=60)
    assert second.stop() == 0
    resumed = view_rows(database_url)

    rebuild_views(ledger, database_url)
    assert view_rows(database_url) == resumed


def test_of_two_projectors_one_leads_and_the_other_takes_over_when_it_is_killed(
    ledger: Ledger, database_url: str, projectors: Callable[..., Projector]
) -> None:
    a, b = projectors("a"), projectors("b")
    wait_for(lambda: a.leads() or b.leads())
    leader, standby = (a, b) if a.leads() else (b, a)
    time.sleep(0.5)
    assert not standby.leads()

    ledger.submit(a_spec())
    wait_for(lambda: tracked_position(database_url) == ledger.max_position())

    leader.kill()
    ledger.submit(a_spec())
    wait_for(lambda: tracked_position(database_url) == ledger.max_position())
    assert standby.leads()
    assert standby.stop() == 0


def test_an_idle_projector_wakes_on_a_new_event_without_waiting_for_its_poll(
    ledger: Ledger, database_url: str, projectors: Callable[..., Projector]
) -> None:
    projector = projectors("p")
    wait_for(projector.leads)
    time.sleep(0.3)  # LISTEN is set up right after the lock
    waits = []
    for _ in range(5):
        time.sleep(0.1)
        ledger.submit(a_spec())
        submitted = time.monotonic()
        wait_for(lambda: tracked_position(database_url) == ledger.max_position(), every=0.002)
        waits.append(time.monotonic() - submitted)
    # The fallback poll is 1 s: a projector that missed the NOTIFY would wait ~0.5 s on average.
    assert max(waits) < 0.5, waits
    assert projector.stop() == 0


def test_a_rebuild_while_a_projector_runs_ends_in_the_same_views(
    ledger: Ledger, database_url: str, projectors: Callable[..., Projector]
) -> None:
    projector = projectors("p", "--batch-size", "200")
    wait_for(projector.leads)
    workload(ledger, 600)
    rebuild_views(ledger, database_url, batch_size=300)  # races the running projector
    workload(ledger, 100, seed=7)
    wait_for(lambda: tracked_position(database_url) == ledger.max_position(), timeout=60)
    assert projector.stop() == 0
    raced = view_rows(database_url)
    rebuild_views(ledger, database_url)
    assert view_rows(database_url) == raced


def test_jobledger_rebuild_prints_its_rate_and_refuses_a_bad_batch_size(
    ledger: Ledger, database_url: str, env: dict[str, str]
) -> None:
    workload(ledger, 50)
    done = subprocess.run(
        ["jobledger", "rebuild"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"up to log position {ledger.max_position()}" in done.stdout
    assert "events/s" in done.stdout
    assert tracked_position(database_url) == ledger.max_position()

    bad = subprocess.run(
        ["jobledger", "rebuild", "--batch-size", "0"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "--batch-size" in bad.stderr
