"""What a handler receives besides its payload: which job and attempt it runs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog


class AttemptContext:
    """The job and attempt a handler runs for, with a logger bound to them."""

    __slots__ = ("_logger", "attempt", "job_id", "job_type", "org")

    def __init__(self, job_id: UUID, org: str, job_type: str, attempt: int) -> None:
        self.job_id = job_id
        self.org = org
        self.job_type = job_type
        self.attempt = attempt
        self._logger: Any = None

    @property
    def logger(self) -> Any:
        """A structlog logger bound to the job; built on first use (most handlers never log)."""
        if self._logger is None:
            self._logger = structlog.get_logger("jobledger.handler").bind(
                job_id=str(self.job_id), type=self.job_type, org=self.org, attempt=self.attempt
            )
        return self._logger

    def __repr__(self) -> str:
        return f"AttemptContext({self.job_type} {self.job_id} attempt {self.attempt})"
