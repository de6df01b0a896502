"""The seven statuses and the one table of moves between them."""

from __future__ import annotations

import pytest

from ledger import TRANSITIONS, Status

S = Status
EXPECTED_MOVES = {
    (S.SCHEDULED, S.QUEUED), (S.SCHEDULED, S.CANCELLED),
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.RETRYING), (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RETRYING, S.QUEUED), (S.RETRYING, S.CANCELLED),
    (S.FAILED, S.QUEUED), (S.CANCELLED, S.QUEUED),
}  # fmt: skip


def test_the_statuses_are_the_seven_strings_of_the_contract() -> None:
    assert [s.value for s in Status] == [
        "scheduled", "queued", "running", "retrying", "succeeded", "failed", "cancelled",
    ]  # fmt: skip


def test_the_transition_table_holds_exactly_the_moves_of_the_lifecycle_diagram() -> None:
    moves = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert moves == EXPECTED_MOVES
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize("status", list(Status))
def test_terminal_statuses_are_exactly_succeeded_failed_and_cancelled(status: Status) -> None:
    terminal = status in (S.SUCCEEDED, S.FAILED, S.CANCELLED)
    assert status.is_terminal == terminal
    assert status.is_active == (not terminal)


def test_terminal_statuses_leave_only_by_a_manual_retry_to_queued() -> None:
    assert TRANSITIONS[S.SUCCEEDED] == frozenset()
    assert TRANSITIONS[S.FAILED] == frozenset({S.QUEUED})
    assert TRANSITIONS[S.CANCELLED] == frozenset({S.QUEUED})


def test_nothing_moves_to_a_status_it_is_already_in() -> None:
    assert all(status not in TRANSITIONS[status] for status in Status)
