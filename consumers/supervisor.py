"""The supervisor of `jobledger up`: every role as a child process, restarted when it crashes.

The children share the supervisor's process group, so one `kill -TERM -PGID`
(or Ctrl-C in a terminal) reaches them all. `stop()` sends each running child
SIGTERM, waits for them to drain (a worker lets its attempts finish within
its grace period) and kills what is still running after `kill_after_s`. A
child that exits on its own while not stopping is restarted with a backoff.
Signal handlers are the entry point's business, not this module's.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import Process

log = structlog.get_logger("jobledger.supervisor")


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    argv: Sequence[str]


class Supervisor:
    """`await Supervisor(children).run()` returns once `stop()` was called and all exited."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        kill_after_s: float = 40.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 30.0,
    ) -> None:
        self.children = list(children)
        self.kill_after_s = kill_after_s
        self.max_backoff_s = max_backoff_s
        self.healthy_after_s = healthy_after_s
        self.running: dict[str, Process] = {}
        self.restarts: dict[str, int] = {c.name: 0 for c in self.children}
        self._stopping: anyio.Event | None = None
        self._stop_requested = False

    async def run(self) -> None:
        self._stopping = anyio.Event()
        if self._stop_requested:
            self._stopping.set()
        async with anyio.create_task_group() as tg:
            for child in self.children:
                tg.start_soon(self._keep_running, child)
        log.info("all roles stopped")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Ask every child to stop (again, if called twice); returns at once."""
        first = not self._stop_requested
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()
        for name, proc in list(self.running.items()):
            if proc.returncode is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    continue
                log.debug("signalled", role=name, signal=signum)
        if first:
            log.info("stopping", roles=sorted(self.running))

    async def _keep_running(self, child: Child) -> None:
        backoff = 0.5
        assert self._stopping is not None
        while not self._stop_requested:
            started = anyio.current_time()
            proc = await anyio.open_process(
                list(child.argv), stdin=subprocess.DEVNULL, stdout=None, stderr=None
            )
            self.running[child.name] = proc
            log.info("started", role=child.name, pid=proc.pid)
            if self._stop_requested:  # stop() came while this child was starting
                proc.send_signal(signal.SIGTERM)
            code = await self._wait(proc)
            del self.running[child.name]
            if self._stop_requested:
                log.info("stopped", role=child.name, exit_code=code)
                return
            if anyio.current_time() - started >= self.healthy_after_s:
                backoff = 0.5
            log.warning("exited; restarting", role=child.name, exit_code=code, after_s=backoff)
            self.restarts[child.name] += 1
            with anyio.move_on_after(backoff):
                await self._stopping.wait()
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _wait(self, proc: Process) -> int:
        async with anyio.create_task_group() as tg:

            async def kill_when_overdue() -> None:
                assert self._stopping is not None
                await self._stopping.wait()
                await anyio.sleep(self.kill_after_s)
                if proc.returncode is None:
                    log.warning("did not stop in time; killing", pid=proc.pid)
                    proc.kill()

            tg.start_soon(kill_when_overdue)
            code = await proc.wait()
            tg.cancel_scope.cancel()
        return code
