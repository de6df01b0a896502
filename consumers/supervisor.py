"""The supervisor of `jobledger up`: every role as a child process, restarted when it crashes.

The children share one process group of their own, apart from the
supervisor's: a terminal's Ctrl-C reaches the supervisor alone, and it passes
each signal on exactly once (a worker takes a second signal as "stop now"),
while `kill -TERM -<group>` still reaches every role at once. If the
supervisor itself is killed, the kernel sends each child SIGTERM (Linux). `stop()` signals
every running child, waits for them to drain (a worker lets its attempts
finish within its grace period) and kills what still runs after
`kill_after_s`. A child that exits on its own while not stopping is restarted
with a growing pause. Signal handlers are the entry point's business.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import structlog

log = structlog.get_logger("jobledger.supervisor")

POLL_S = 0.1  # how often exits are noticed; Popen.wait would tie up a thread per child


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
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {c.name: 0 for c in self.children}
        self.pgid: int | None = None
        self._stopping: anyio.Event | None = None
        self._stop_requested = False

    async def run(self) -> None:
        self._stopping = anyio.Event()
        if self._stop_requested:
            self._stopping.set()
        log.info("starting roles", roles=[c.name for c in self.children])
        async with anyio.create_task_group() as tg:
            for child in self.children:
                tg.start_soon(self._keep_running, child)
        log.info("all roles stopped")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Pass `signum` on to every running child; returns at once."""
        first = not self._stop_requested
        self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()
        if first:
            log.info("stopping", signal=signum.name, roles=sorted(self.running))
        for proc in list(self.running.values()):
            if proc.poll() is None:
                proc.send_signal(signum)

    def _spawn(self, child: Child) -> subprocess.Popen[bytes]:
        """Start the child in the children's process group (a new one if it is gone)."""
        for group in (self.pgid or 0, 0):
            try:
                proc = subprocess.Popen(  # noqa: S603  (our own command line)
                    list(child.argv),
                    stdin=subprocess.DEVNULL,
                    process_group=group,
                    preexec_fn=_die_with_parent(),  # noqa: PLW1509  (no threads here)
                )
            except PermissionError:  # every earlier child has exited: the group is gone
                continue
            if group == 0:
                self.pgid = proc.pid
                log.info("roles run in process group", pgid=self.pgid)
            return proc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _keep_running(self, child: Child) -> None:
        assert self._stopping is not None
        backoff = 0.5
        while not self._stop_requested:
            started = anyio.current_time()
            proc = self._spawn(child)
            self.running[child.name] = proc
            log.info("started", role=child.name, pid=proc.pid)
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

    async def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        overdue: float | None = None
        while (code := proc.poll()) is None:
            if self._stop_requested and overdue is None:
                overdue = anyio.current_time() + self.kill_after_s
            if overdue is not None and anyio.current_time() > overdue:
                log.warning("did not stop in time; killing", pid=proc.pid)
                proc.kill()
            await anyio.sleep(POLL_S)
        return code


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """What a child runs before exec so it gets SIGTERM when `up` dies, even by kill -9.

    The children live in a process group of their own, so nothing else would
    stop them. Linux only (prctl); elsewhere children outlive a killed `up`.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError, TypeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # `up` died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child
