"""The job's lifecycle rules, checked over random command interleavings of the pure domain.

One job, a simulated clock, and every command a user, worker, timer or reaper
can issue, tried in any state: each either returns events (which are applied)
or raises `InvalidTransition` (and changes nothing). The model states when a
command must be accepted and what it must lead to; the invariants hold after
every step.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from ledger import (
    TRANSITIONS,
    InvalidTransition,
    Job,
    JobEvent,
    RetryPolicy,
    Status,
    as_document,
    from_snapshot,
    to_snapshot,
)
from ledger.domain import job as domain
from ledger.domain.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Cancelled,
    RetryScheduled,
)
from tests.factories import T0, a_spec

JOB_ID = UUID("8c3f2a55-0d6e-4f0a-9a57-6f1f2f7b1c01")
NON_RETRYABLE = "PermissionError"
ERROR_TYPES = ("RuntimeError", "ValueError", NON_RETRYABLE)
ENDINGS = (AttemptSucceeded, AttemptFailed, Cancelled)

delays = st.lists(
    st.sampled_from([0.0, 0.2, 1.0, 60.0, 300.0, 900.0, 3600.0]), min_size=1, max_size=4
)
seconds = st.one_of(
    st.sampled_from([0.0, 0.001, 1.0, 60.0, 300.0, 900.0, 990.0]),
    st.floats(min_value=0, max_value=4000, allow_nan=False),
)


class JobLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.job: Job | None = None
        self.events: list[JobEvent] = []
        self.states: list[tuple[datetime, Job]] = []  # (clock, state after the step)
        self.policy = RetryPolicy()

    # ---------------------------------------------------------------- helpers

    def attempt(self, command: Any, *args: Any, **kwargs: Any) -> list[JobEvent] | None:
        """Run a command on the job: apply its events, or check it changed nothing."""
        assert self.job is not None
        before = self.job
        try:
            new = command(before, *args, **kwargs)
        except InvalidTransition:
            assert self.job == before
            return None
        for offset, event in enumerate(new, start=1):
            assert event.originator_id == before.id
            assert event.originator_version == before.version + offset
            assert event.timestamp == self.now
        self.record(new)
        return list(new)

    def record(self, new: list[JobEvent]) -> None:
        job = self.job
        for event in new:
            after = domain.evolve(job, event)
            if job is not None and after.status != job.status:
                assert after.status in TRANSITIONS[job.status], (job.status, event.TYPE)
            job = after
        self.events.extend(new)
        self.job = job
        if job is not None:
            self.states.append((self.now, job))

    @property
    def status(self) -> Status:
        assert self.job is not None
        return self.job.status

    def is_running(self, attempt: int) -> bool:
        job = self.job
        return (
            job is not None
            and job.status is Status.RUNNING
            and job.attempt_running
            and job.attempts == attempt
        )

    # ---------------------------------------------------------------- rules

    @initialize(
        retry_delays=delays,
        jitter=st.sampled_from([0.0, 0.05, 0.1]),
        own_max_attempts=st.none() | st.integers(min_value=1, max_value=5),
        delay_s=st.none() | seconds,
    )
    def submit(
        self,
        retry_delays: list[float],
        jitter: float,
        own_max_attempts: int | None,
        delay_s: float | None,
    ) -> None:
        self.policy = RetryPolicy(
            delays_s=tuple(retry_delays), jitter=jitter, non_retryable=frozenset({NON_RETRYABLE})
        )
        max_attempts = own_max_attempts or self.policy.max_attempts
        run_at = self.now + timedelta(seconds=delay_s) if delay_s is not None else None
        spec = a_spec(run_at=run_at, max_attempts=max_attempts)
        new = domain.submit(JOB_ID, spec, self.now)
        self.record(new)
        expected = Status.QUEUED if run_at is None or run_at <= self.now else Status.SCHEDULED
        assert self.status is expected

    @rule(by=seconds)
    def advance_clock(self, by: float) -> None:
        self.now += timedelta(seconds=by)

    @rule()
    def enqueue_when_due(self) -> None:
        assert self.job is not None
        before = self.job
        new = self.attempt(domain.enqueue, now=self.now)
        due = before.next_attempt_at is None or before.next_attempt_at <= self.now
        waiting = before.status in (Status.SCHEDULED, Status.RETRYING)
        assert (new is not None) == (waiting and due), (before.status, before.next_attempt_at)
        if new is not None:
            assert self.status is Status.QUEUED

    @rule(lease_s=st.sampled_from([0.5, 30.0]))
    def start_attempt(self, lease_s: float) -> None:
        assert self.job is not None
        before = self.job
        if before.status is Status.QUEUED:
            # The budget guard itself: a queued job with no attempts left never starts.
            spent = replace(before, attempts=before.max_attempts)
            try:
                domain.start_attempt(spent, "w-1", lease_s, self.now)
            except InvalidTransition:
                pass
            else:
                raise AssertionError("an attempt beyond max_attempts was started")
        new = self.attempt(domain.start_attempt, "w-1", lease_s, self.now)
        assert (new is not None) == (before.status is Status.QUEUED)
        if new is not None:
            assert self.status is Status.RUNNING
            assert self.job.attempts == before.attempts + 1
            assert self.job.lease_until == self.now + timedelta(seconds=lease_s)

    @rule(stale=st.booleans())
    def succeed(self, stale: bool) -> None:
        assert self.job is not None
        attempt = self.job.attempts - int(stale)
        allowed = self.is_running(attempt)
        new = self.attempt(domain.succeed, attempt, {"ok": attempt}, 5.0, self.now)
        assert (new is not None) == allowed
        if new is not None:
            assert self.status is Status.SUCCEEDED
            assert self.job.last_error is None

    @rule(
        reason=st.sampled_from(["error", "timeout", "lost_worker", "shutdown"]),
        error_type=st.sampled_from(ERROR_TYPES),
        retryable=st.booleans(),
        stale=st.booleans(),
    )
    def fail(self, reason: str, error_type: str, retryable: bool, stale: bool) -> None:
        assert self.job is not None
        before = self.job
        attempt = before.attempts - int(stale)
        if reason != "error":
            error_type, retryable = reason, True
        allowed = self.is_running(attempt)
        new = self.attempt(
            domain.fail_attempt,
            attempt,
            reason=reason,
            error_type=error_type,
            message="it broke",
            retryable=retryable,
            duration_ms=12.0,
            policy=self.policy,
            now=self.now,
        )
        assert (new is not None) == allowed
        if new is None:
            return
        assert self.job.last_error == {"type": error_type, "message": "it broke"}
        will_retry = retryable and error_type != NON_RETRYABLE
        if before.cancel_requested:
            assert self.status is Status.CANCELLED
        elif not will_retry or attempt >= before.max_attempts:
            assert self.status is Status.FAILED
        else:
            assert self.status is Status.RETRYING
            delay = self.policy.delays_s[
                min(attempt - before.budget_start, len(self.policy.delays_s)) - 1
            ]
            assert self.job.next_attempt_at is not None
            waited = (self.job.next_attempt_at - self.now).total_seconds()
            assert delay - 1e-6 <= waited <= delay * 1.1 + 1e-6, (delay, waited)

    @rule(
        reason=st.sampled_from(["error", "timeout", "lost_worker", "shutdown"]),
        error_type=st.sampled_from(ERROR_TYPES),
        retryable=st.booleans(),
    )
    def a_worker_takes_the_next_step(self, reason: str, error_type: str, retryable: bool) -> None:
        """Walks the usual path (wait, queue, start, fail) so long histories are common."""
        job = self.job
        assert job is not None
        if job.status in (Status.SCHEDULED, Status.RETRYING):
            assert job.next_attempt_at is not None
            self.now = max(self.now, job.next_attempt_at)
            self.enqueue_when_due()
        elif job.status is Status.QUEUED:
            self.start_attempt(30.0)
        elif job.status is Status.RUNNING:
            self.fail(reason, error_type, retryable, stale=False)

    @rule()
    def request_cancel(self) -> None:
        assert self.job is not None
        before = self.job
        new = self.attempt(domain.request_cancel, "cli", self.now)
        assert (new is not None) == (not before.status.is_terminal)
        if new is None:
            return
        if before.status is Status.RUNNING:
            assert self.status is Status.RUNNING
            assert self.job.cancel_requested
        else:
            assert self.status is Status.CANCELLED

    @rule()
    def confirm_cancel(self) -> None:
        assert self.job is not None
        before = self.job
        allowed = self.is_running(before.attempts) and before.cancel_requested
        new = self.attempt(domain.confirm_cancel, before.attempts, self.now)
        assert (new is not None) == allowed
        if new is not None:
            assert self.status is Status.CANCELLED

    @rule()
    def manual_retry(self) -> None:
        assert self.job is not None
        before = self.job
        new = self.attempt(domain.manual_retry, "cli", self.now)
        assert (new is not None) == (before.status in (Status.FAILED, Status.CANCELLED))
        if new is not None:
            assert self.status is Status.QUEUED
            assert self.job.max_attempts == before.max_attempts + before.original_max_attempts
            assert not self.job.cancel_requested

    # ---------------------------------------------------------------- invariants

    @invariant()
    def attempts_are_gapless_and_within_the_budget(self) -> None:
        job: Job | None = None
        numbers = []
        for event in self.events:
            if isinstance(event, AttemptStarted):
                assert job is not None
                assert event.attempt <= job.max_attempts
                numbers.append(event.attempt)
            job = domain.evolve(job, event)
        assert numbers == list(range(1, len(numbers) + 1))

    @invariant()
    def at_most_one_attempt_runs_and_one_succeeds(self) -> None:
        running = False
        for event in self.events:
            if isinstance(event, AttemptStarted):
                assert not running, "a second attempt started while one runs"
                running = True
            elif isinstance(event, ENDINGS):
                running = False
        assert sum(isinstance(e, AttemptSucceeded) for e in self.events) <= 1
        if self.job is not None:
            assert self.job.attempt_running == (self.job.status is Status.RUNNING)
            assert running == self.job.attempt_running

    @invariant()
    def a_cancel_request_ends_in_cancelled_or_an_earlier_success(self) -> None:
        job = self.job
        if job is not None and job.cancel_requested:
            assert job.status in (Status.RUNNING, Status.CANCELLED, Status.SUCCEEDED)

    @invariant()
    def retries_wait_for_the_policy_delay(self) -> None:
        for event in self.events:
            if isinstance(event, RetryScheduled):
                assert event.next_attempt_at >= event.timestamp

    @invariant()
    def the_job_object_follows_the_contract(self) -> None:
        if self.job is None:
            return
        doc = as_document(self.job)
        assert doc["status"] == self.job.status.value
        assert (doc["finished_at"] is not None) == self.job.status.is_terminal
        waiting = self.job.status in (Status.SCHEDULED, Status.RETRYING)
        assert (doc["next_attempt_at"] is not None) == waiting
        assert doc["attempts"] == sum(isinstance(e, AttemptStarted) for e in self.events)
        assert (doc["started_at"] is not None) == (doc["attempts"] > 0)
        assert doc["version"] == len(self.events)
        if self.job.status is Status.SUCCEEDED:
            assert doc["last_error"] is None

    @invariant()
    def replaying_the_events_rebuilds_the_state(self) -> None:
        if self.job is None:
            return
        assert domain.fold(self.events) == self.job
        assert from_snapshot(to_snapshot(self.job)) == self.job
        assert self.job.version == len(self.events)

    def teardown(self) -> None:
        """`fold_until(t)` is the state after the last step taken at clock time t."""
        last_at: dict[datetime, Job] = {}
        for at, job in self.states:
            last_at[at] = job
        for at, job in last_at.items():
            assert domain.fold_until(self.events, at) == job
            assert domain.fold([e for e in self.events if e.timestamp <= at]) == job
        if self.events:
            before_first = self.events[0].timestamp - timedelta(microseconds=1)
            assert domain.fold_until(self.events, before_first) is None


JobLifecycle.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobLifecycle = JobLifecycle.TestCase
