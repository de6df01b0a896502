"""Handlers of the built-in job types; importing this package binds them."""

from consumers.handlers import diag
from ledger import registry

registry.bind_handler("diag.echo", diag.echo)
