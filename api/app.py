"""`create_app`: the Litestar application, given the settings, the ledger and the job types."""

from __future__ import annotations

from litestar import Litestar

from api.access_log import AccessLog, LineBuffer
from api.errors import exception_handlers
from api.openapi import openapi_config
from api.routes.jobs import MAX_BODY, JobRoutes, stats
from api.routes.ops import health, metrics, ready
from api.state import lifespan
from ledger import Ledger, Registry, Settings


def create_app(settings: Settings, ledger: Ledger, registry: Registry) -> Litestar:
    """The app; it opens its pools, writer and read models at start and closes them at stop.

    The caller owns `ledger` (and closes it after the server stops).
    """
    log_lines = LineBuffer()
    app = Litestar(
        route_handlers=[JobRoutes, stats, health, ready, metrics],
        exception_handlers=exception_handlers(),
        lifespan=[lifespan(settings, ledger, registry, log_lines)],
        openapi_config=openapi_config(registry),
        request_max_body_size=MAX_BODY,
        logging_config=None,
        debug=False,
    )
    # Wrapped outside the router so that unknown routes and 405s are logged too.
    app.asgi_handler = AccessLog(app.asgi_handler, log_lines)
    return app
