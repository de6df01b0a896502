"""API load: requests/s and latency of GET /api/jobs/{id} and POST /api/jobs.

`jobledger api` runs as its own process; this process is the load: a few
keep-alive connections, each sending its next request as soon as the last one
is answered. `run(settings)` uses the database it is given (it adds one
organisation and a few thousand queued jobs); `python -m jobledger.bench.api`
runs it on a scratch database beside DATABASE_URL's, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from jobledger.bench.scratch import scratch_settings
from ledger import Settings

CLIENTS = 8
SECONDS = 5.0
WARMUP_S = 1.0
SEED_JOBS = 1000
WORKERS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def jobledger_command() -> str:
    beside = Path(sys.executable).parent / "jobledger"
    return str(beside) if beside.exists() else (shutil.which("jobledger") or "jobledger")


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 30.0) -> None:
    """Until `GET /health` answers 200; raises if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jobledger api exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobledger api did not answer in {timeout_s:g} s")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)


@contextmanager
def api_process(settings: Settings, workers: int = 1) -> Iterator[str]:
    """`jobledger api` on a free port with no quota to speak of (the bench fills the org)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JOBLEDGER_REDIS_PREFIX": settings.redis_prefix,
        "JOBLEDGER_ACTIVE_LIMIT": str(10**9),
    }
    proc = subprocess.Popen(  # noqa: S603  (our own command, arguments we built)
        [jobledger_command(), "api", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Connection:
    """A keep-alive HTTP/1.1 connection that costs next to nothing per request.

    httpx spends 1-3 ms of CPU per request on this machine, more than the
    server does: measured through it, the figures would be the client's. This
    sends prepared request bytes and reads `Content-Length` bodies, nothing more.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, request: bytes) -> int:
        """The status code; the body is read and dropped."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def http_request(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(url: str, requests: Iterator[bytes], seconds: float) -> list[float]:
    """Latencies (s) of every request answered in `seconds`, after a warm-up."""
    latencies: list[float] = []
    errors = 0
    recording = False

    async def client_loop(conn: Connection, stop_at: float) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            status = await conn.send(next(requests))
            if status >= 300:
                errors += 1
            elif recording:
                latencies.append(time.perf_counter() - now)

    conns = [await Connection.open(url) for _ in range(CLIENTS)]
    try:
        warm_until = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(client_loop(c, warm_until) for c in conns))
        recording = True
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(c, stop_at) for c in conns))
    finally:
        for c in conns:
            await c.close()
    if errors:
        raise RuntimeError(f"{errors} requests failed during the API benchmark")
    return latencies


def _figures(name: str, latencies: Sequence[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0

    return {
        f"api_{name}_rps": round(len(ordered) / seconds, 1),
        f"api_{name}_p50_ms": round(pct(0.50), 2),
        f"api_{name}_p99_ms": round(pct(0.99), 2),
    }


def _seed(url: str, key: str) -> list[str]:
    """Jobs to read back, submitted in batches and projected before the GETs start."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"jobs": [{"type": "diag.echo", "payload": {"result": i}} for i in range(500)]}
    ids: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for _ in range(SEED_JOBS // 500):
            r = client.post("/api/jobs/batch", json=body)
            r.raise_for_status()
            ids += [job["id"] for job in r.json()["items"]]
    return ids


def _project(settings: Settings) -> None:
    import psycopg

    from jobledger.wiring import make_ledger
    from projections import Follower

    ledger = make_ledger(settings)
    try:
        with psycopg.connect(settings.database_url) as conn:
            follower = Follower(ledger, conn)
            while follower.step():
                pass
    finally:
        ledger.close()


def run(
    settings: Settings, *, seconds: float = SECONDS, workers: int = WORKERS
) -> dict[str, float]:
    """GET then POST load against a fresh `jobledger api` process; figures by route."""
    from api import create_key

    key, _ = create_key(settings.database_url, f"bench-{uuid.uuid4().hex[:8]}")
    with api_process(settings, workers) as url:
        ids = _seed(url, key)
        _project(settings)  # the GETs read the views, as they do once the projector caught up
        random.shuffle(ids)
        get = itertools.cycle([http_request("GET", f"/api/jobs/{i}", key) for i in ids])
        post = itertools.repeat(
            http_request("POST", "/api/jobs", key, b'{"type": "diag.echo", "payload": {}}')
        )
        gets = asyncio.run(_load(url, get, seconds))
        posts = asyncio.run(_load(url, post, seconds))
    return {**_figures("get", gets, seconds), **_figures("post", posts, seconds)}


def main() -> None:
    """`python -m jobledger.bench.api [WORKERS]`: one JSON object of figures."""
    from jobledger.wiring import load_job_types, load_settings

    settings = load_settings()
    load_job_types(settings)
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else WORKERS
    with scratch_settings(settings) as scratch:
        print(json.dumps(run(scratch, workers=workers)))


if __name__ == "__main__":
    main()
