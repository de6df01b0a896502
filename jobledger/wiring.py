"""The composition root's building blocks: settings, job types and the ledger."""

from __future__ import annotations

import importlib

from ledger import Ledger, Settings, registry
from ledger.domain.job_types import Registry


class StartupError(Exception):
    """Bad configuration found at start-up; the CLI prints it in one line."""


def load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise StartupError(f"invalid {_env_name(name)}: {first['msg']}") from None


def _env_name(name: str) -> str:
    """The environment variable behind a settings field (errors name the variable)."""
    for field_name, field in Settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", ())
        if name == field_name or name in choices:
            return str(choices[0]) if choices else field_name
    return name


def load_job_types(settings: Settings) -> Registry:
    """Bind the built-in handlers, then import the application's handler modules."""
    from consumers.handlers import bind_builtins

    bind_builtins(registry, settings)

    for module in settings.handlers:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise StartupError(f"cannot import JOBLEDGER_HANDLERS module {module!r}: {e}") from None
    return registry


def make_ledger(
    settings: Settings,
    *,
    create_tables: bool = False,
    pool_size: int = 2,
    publish: bool = True,
) -> Ledger:
    """The ledger; with `publish`, each append publishes the jobs it queued right after its commit.

    The dispatcher publishes whatever the direct path misses, so `publish=False`
    only costs latency; it suits processes that never queue a job.
    """
    ledger = Ledger(
        settings.database_url,
        registry=registry,
        active_limit=settings.active_limit,
        retry_delays_s=settings.retry_delays_s,
        create_tables=create_tables,
        pool_size=pool_size,
    )
    if publish:
        from consumers.publisher import AsyncDirectPublisher, DirectPublisher
        from consumers.streams import StreamKeys

        keys = StreamKeys(settings.redis_prefix)
        ledger.publisher = DirectPublisher(keys, settings.redis_url)
        ledger.async_publisher = AsyncDirectPublisher(keys, settings.redis_url)
    return ledger
