"""The one settings object, read from the environment once at start-up."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every variable of the contract; unknown JOBLEDGER_* variables are ignored."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    database_url: str = Field(
        "postgresql://localhost:5432/jobledger", validation_alias=_alias("DATABASE_URL")
    )
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=_alias("REDIS_URL"))
    redis_prefix: str = Field(
        "jl",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        validation_alias=_alias("JOBLEDGER_REDIS_PREFIX"),
    )
    active_limit: int = Field(50, ge=1, validation_alias=_alias("JOBLEDGER_ACTIVE_LIMIT"))
    worker_concurrency: int = Field(
        100, ge=1, le=10_000, validation_alias=_alias("JOBLEDGER_WORKER_CONCURRENCY")
    )
    retry_delays_s: Annotated[tuple[float, ...] | None, NoDecode] = Field(
        None, validation_alias=_alias("JOBLEDGER_RETRY_DELAYS")
    )
    lease_s: float = Field(
        30.0, gt=0, allow_inf_nan=False, validation_alias=_alias("JOBLEDGER_LEASE_S")
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, allow_inf_nan=False, validation_alias=_alias("JOBLEDGER_SHUTDOWN_GRACE_S")
    )
    schedules: Path | None = Field(None, validation_alias=_alias("JOBLEDGER_SCHEDULES"))
    handlers: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_alias("JOBLEDGER_HANDLERS")
    )
    notify_webhook_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        validation_alias=_alias("JOBLEDGER_NOTIFY_WEBHOOK"),
    )
    log_format: Literal["json", "console"] = Field(
        "json", validation_alias=_alias("JOBLEDGER_LOG_FORMAT")
    )

    @field_validator("retry_delays_s", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                delays = tuple(float(part) for part in value.split(","))
            except ValueError:
                raise ValueError(
                    f"expected seconds separated by commas, e.g. 60,300,900; got {value!r}"
                ) from None
            if not all(math.isfinite(d) and d >= 0 for d in delays):
                raise ValueError(f"retry delays must be finite and not negative; got {value!r}")
            return delays
        return value

    @field_validator("handlers", mode="before")
    @classmethod
    def _parse_handlers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value
