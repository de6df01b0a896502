"""Real API servers on loopback for the API tests: in a thread (fast) or as a process."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psycopg
import uvicorn

from api import create_app, create_key
from jobledger.bench.api import free_port, jobledger_command, wait_until_healthy
from ledger import Ledger, Settings, registry
from projections import Follower


@contextmanager
def server_in_thread(settings: Settings, ledger: Ledger) -> Iterator[str]:
    """uvicorn serving `create_app` on a free port, in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, ledger, registry),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the API server failed to start"
        assert time.monotonic() < deadline, "the API server did not start in 15 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def server_process(
    env: dict[str, str], log: IO[Any] | Path | None = None, *, workers: int = 1
) -> Iterator[str]:
    """`jobledger api --port P [--workers N]` as a subprocess; its stderr goes to `log`."""
    port = free_port()
    stderr: Any = open(log, "wb") if isinstance(log, Path) else (log or subprocess.DEVNULL)  # noqa: SIM115
    proc = subprocess.Popen(
        [jobledger_command(), "api", "--port", str(port), "--workers", str(workers)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url)
        yield url
        proc.terminate()
        assert proc.wait(15) == 0, "jobledger api did not drain and exit 0 on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if isinstance(log, Path):
            stderr.close()


@contextmanager
def projector_process(env: dict[str, str]) -> Iterator[None]:
    """`jobledger projector`, so the views follow the ledger as in production."""
    proc = subprocess.Popen(
        [jobledger_command(), "projector"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def key_for(database_url: str, org: str, *, admin: bool = False) -> dict[str, str]:
    """Request headers carrying a new key of `org`."""
    key, _ = create_key(database_url, org, admin=admin)
    return {"Authorization": f"Bearer {key}"}


def project(ledger: Ledger, database_url: str) -> None:
    """Bring the views up to date with the ledger, now (what the projector does)."""
    with psycopg.connect(database_url) as conn:
        follower = Follower(ledger, conn)
        while follower.step():
            pass
