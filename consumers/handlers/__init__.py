"""Handlers of the built-in job types, bound to the registry at start-up."""

from consumers.handlers import diag, notify
from ledger import Registry, Settings


def bind_builtins(registry: Registry, settings: Settings) -> None:
    registry.bind_handler("diag.echo", diag.echo)
    registry.bind_handler("notify.send", notify.make_notify(settings.notify_webhook_url))


__all__ = ["bind_builtins"]
