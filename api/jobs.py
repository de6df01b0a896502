"""What the job routes do, tenancy checked: submit through the writer, read the views.

Every read or command takes the caller's `Principal`; a job of another
organisation raises `JobNotFound`, exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio

from api.keys import Principal
from api.state import Resources
from api.submissions import Item
from ledger import (
    Job,
    JobEvent,
    JobNotFound,
    as_document,
    commands,
    event_document,
    fold,
    utc_now,
)

Document = dict[str, Any]


def parse_id(job_id: str) -> UUID:
    """A job id from a path; anything that is not a UUID names no job (404)."""
    try:
        return UUID(job_id)
    except (ValueError, TypeError):
        raise JobNotFound(job_id[:100]) from None


class Jobs:
    def __init__(self, res: Resources) -> None:
        self.res = res

    async def submit(self, items: Sequence[Item]) -> list[tuple[Document, bool]]:
        """All of them in one transaction; each with whether it was created now."""
        results = await self.res.writer.submit_many(items)
        return [(as_document(job), created) for job, created in results]

    async def get(self, who: Principal, job_id: str) -> Document:
        """The view's row; if the view has not caught up yet, the ledger's state."""
        uid = parse_id(job_id)
        found = await self.res.queries.get(uid, who.scope())
        if found is not None:
            return found
        return as_document(await self._load(who, uid))

    async def get_at(self, who: Principal, job_id: str, at: datetime) -> Document:
        """Replayed from the ledger up to `at` (never from the views)."""
        uid = parse_id(job_id)
        job = await anyio.to_thread.run_sync(self.res.ledger.state_at, uid, at)
        return as_document(self._visible(who, job))

    async def events(self, who: Principal, job_id: str) -> list[Document]:
        uid = parse_id(job_id)
        history: list[JobEvent] = await anyio.to_thread.run_sync(self.res.ledger.history, uid)
        job = fold(history)
        assert job is not None
        self._visible(who, job)
        return [event_document(e) for e in history]

    async def cancel(self, who: Principal, job_id: str) -> Document:
        return await self._execute(
            who, job_id, lambda job: commands.request_cancel(job, who.key_id, utc_now())
        )

    async def retry(self, who: Principal, job_id: str) -> Document:
        return await self._execute(
            who, job_id, lambda job: commands.manual_retry(job, who.key_id, utc_now())
        )

    async def _execute(
        self, who: Principal, job_id: str, decide: Callable[[Job], Sequence[JobEvent]]
    ) -> Document:
        uid = parse_id(job_id)

        def checked(job: Job) -> Sequence[JobEvent]:
            return decide(self._visible(who, job))

        job = await anyio.to_thread.run_sync(self.res.ledger.execute, uid, checked)
        return as_document(job)

    async def _load(self, who: Principal, uid: UUID) -> Job:
        job = await anyio.to_thread.run_sync(self.res.ledger.load, uid)
        return self._visible(who, job)

    @staticmethod
    def _visible(who: Principal, job: Job) -> Job:
        if not who.may_see(job.org):
            raise JobNotFound(job.id)
        return job
