"""Job types: a name, a strict payload model, a timeout, retry delays and a handler.

The built-in types register their payload models here so every role (the API
validates, the workers run) knows the same types; the consumers package binds
their handlers. Applications register their own types the same way.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from uuid import UUID

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError

from ledger.domain.errors import InvalidJob
from ledger.domain.retry import DEFAULT_DELAYS_S, RetryPolicy

Handler = Callable[..., Awaitable[Any]]
NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


class Payload(BaseModel):
    """Base of every payload model: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    timeout_s: float = 60.0
    retry_delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    handler: Handler | None = None
    non_retryable: frozenset[str] = frozenset()

    def policy(self, delays_override: tuple[float, ...] | None = None) -> RetryPolicy:
        return RetryPolicy(
            delays_s=delays_override or self.retry_delays_s,
            non_retryable=self.non_retryable,
        )

    def parse(self, payload: Any) -> BaseModel:
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as e:
            errors = [
                {"loc": ["payload", *e_["loc"]], "msg": e_["msg"], "type": e_["type"]}
                for e_ in e.errors(include_url=False, include_context=False, include_input=False)
            ]
            raise InvalidJob(f"invalid payload for {self.name}", errors) from None

    def validate_payload(self, payload: Any) -> dict[str, Any]:
        """The payload with defaults filled in, as it is stored in the ledger."""
        return self.parse(payload).model_dump(mode="json")


class Registry:
    """Every job type this process knows, by name."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def register(
        self,
        name: str,
        payload: type[BaseModel],
        handler: Handler | None = None,
        *,
        timeout_s: float = 60.0,
        retry_delays_s: tuple[float, ...] = DEFAULT_DELAYS_S,
        non_retryable: frozenset[str] = frozenset(),
    ) -> JobType:
        if not NAME.match(name):
            raise ValueError(f"job type name {name!r} is not of the form area.action")
        if timeout_s <= 0:
            raise ValueError(f"timeout of {name} must be positive")
        RetryPolicy(delays_s=retry_delays_s)  # validates the delays
        job_type = JobType(name, payload, timeout_s, retry_delays_s, handler, non_retryable)
        self._types[name] = job_type
        return job_type

    def bind_handler(self, name: str, handler: Handler) -> None:
        self._types[name] = replace(self.get(name), handler=handler)

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types))
            raise InvalidJob(
                f"unknown job type {name!r} (known: {known})",
                [{"loc": ["type"], "msg": f"unknown job type {name!r}", "type": "unknown_type"}],
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def schemas(self) -> Mapping[str, dict[str, Any]]:
        return {t.name: t.payload_model.model_json_schema() for t in self}


# ------------------------------------------------------------ built-in payloads


class EchoPayload(Payload):
    sleep_ms: int = Field(0, ge=0, le=86_400_000)
    fail_times: int = Field(0, ge=0)
    retryable: bool = True
    error: str = "boom"
    result: Any = None


class ContentGeneratePayload(Payload):
    brand_id: str = Field(min_length=1, max_length=200)
    brief: str = Field(min_length=1, max_length=20_000)
    channel: str = Field(min_length=1, max_length=50)
    tone: str | None = Field(None, max_length=200)
    max_tokens: int = Field(800, ge=16, le=8_000)


class ContentPublishPayload(Payload):
    connection_id: str = Field(min_length=1, max_length=200)
    content_id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=20_000)
    media_urls: list[AnyHttpUrl] = Field(default_factory=list, max_length=20)


class ContextScrapePayload(Payload):
    brand_id: str = Field(min_length=1, max_length=200)
    url: AnyHttpUrl


class RssSyncPayload(Payload):
    brand_id: str = Field(min_length=1, max_length=200)
    feed_url: AnyHttpUrl


class AnalyticsCollectPayload(Payload):
    connection_id: str = Field(min_length=1, max_length=200)
    since_days: int = Field(7, ge=1, le=365)


class TokenRefreshPayload(Payload):
    """Names the connection only: tokens are read from the database, never carried."""

    connection_id: str = Field(min_length=1, max_length=200)


class BrandLearnPayload(Payload):
    brand_id: str = Field(min_length=1, max_length=200)
    window_days: int = Field(30, ge=1, le=365)


class NotifySendPayload(Payload):
    kind: Literal["job_failed", "message"] = "message"
    subject: str = Field(min_length=1, max_length=500)
    message: str = Field("", max_length=20_000)
    job_id: UUID | None = None


registry = Registry()
"""The process-wide registry; `JOBLEDGER_HANDLERS` modules add to it."""

registry.register("diag.echo", EchoPayload, timeout_s=60.0)
registry.register("content.generate", ContentGeneratePayload, timeout_s=300.0)
registry.register("content.publish", ContentPublishPayload, timeout_s=60.0)
registry.register("context.scrape", ContextScrapePayload, timeout_s=60.0)
registry.register("rss.sync", RssSyncPayload, timeout_s=60.0)
registry.register("analytics.collect", AnalyticsCollectPayload, timeout_s=120.0)
registry.register(
    "token.refresh", TokenRefreshPayload, timeout_s=30.0, retry_delays_s=(10.0, 60.0, 300.0)
)
registry.register("brand.learn", BrandLearnPayload, timeout_s=120.0)
registry.register("notify.send", NotifySendPayload, timeout_s=30.0)
