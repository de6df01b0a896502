"""The retry policy: a frozen value object with pure methods, no clock reads."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

DEFAULT_DELAYS_S: tuple[float, ...] = (60.0, 300.0, 900.0)
MAX_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait after failed attempt n, and how many attempts a budget has.

    Jitter only ever adds (0 to `jitter` of the delay) so a retry never starts
    before its documented delay. It is derived from the job id and attempt, so
    the same failure always schedules the same instant: replays and tests are
    deterministic, and jobs that fail together still spread out.
    """

    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    jitter: float = MAX_JITTER
    non_retryable: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.delays_s:
            raise ValueError("a retry policy needs at least one delay")
        if not all(math.isfinite(d) and d >= 0 for d in self.delays_s):
            raise ValueError("retry delays must be finite and not negative")
        if not 0 <= self.jitter <= MAX_JITTER:
            raise ValueError(f"jitter must be between 0 and {MAX_JITTER}")

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s) + 1

    def delay_s(self, attempt_in_budget: int) -> float:
        """The base delay after failed attempt n (1-based) of the current budget."""
        index = min(max(attempt_in_budget, 1), len(self.delays_s)) - 1
        return self.delays_s[index]

    def jitter_fraction(self, job_id: UUID, attempt: int) -> float:
        digest = hashlib.blake2b(f"{job_id}:{attempt}".encode(), digest_size=8).digest()
        return self.jitter * int.from_bytes(digest, "big") / 2**64

    def next_attempt_at(
        self, job_id: UUID, attempt: int, attempt_in_budget: int, failed_at: datetime
    ) -> datetime:
        base = self.delay_s(attempt_in_budget)
        return failed_at + timedelta(seconds=base * (1 + self.jitter_fraction(job_id, attempt)))

    def is_retryable(self, error_type: str, retryable: bool) -> bool:
        return retryable and error_type not in self.non_retryable
