"""The one place that handles SIGTERM and SIGINT, for every long-running role."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def until_signalled(
    main: Callable[[], Awaitable[None]], on_signal: Callable[[signal.Signals], None]
) -> None:
    """Run `main`; each SIGTERM/SIGINT calls `on_signal`, which should make `main` return."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for signum in signals:
                    on_signal(signum)

        tg.start_soon(watch)
        await main()
        tg.cancel_scope.cancel()
