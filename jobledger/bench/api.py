"""API load: requests/s and latency of GET /api/jobs/{id} and POST /api/jobs.

`jobledger api` runs as its own process; this process is the load: a few
keep-alive httpx clients, each sending its next request as soon as the last
one is answered. Run alone with `python -m jobledger.bench.api` (it creates
and migrates the database named by DATABASE_URL), or through `jobledger bench`.
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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from ledger import Settings

CLIENTS = 8
SECONDS = 5.0
WARMUP_S = 1.0
SEED_JOBS = 1000
Request = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _jobledger() -> str:
    beside = Path(sys.executable).parent / "jobledger"
    return str(beside) if beside.exists() else (shutil.which("jobledger") or "jobledger")


@contextmanager
def api_process(settings: Settings) -> Iterator[str]:
    """`jobledger api` on a free port with no quota to speak of (the bench fills the org)."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JOBLEDGER_REDIS_PREFIX": settings.redis_prefix,
        "JOBLEDGER_ACTIVE_LIMIT": str(10**9),
    }
    proc = subprocess.Popen(  # noqa: S603  (our own command, arguments we built)
        [_jobledger(), "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jobledger api exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("jobledger api did not start in 30 s")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _load(url: str, key: str, request: Request, seconds: float) -> list[float]:
    """Latencies (s) of every request answered in `seconds`, after a warm-up."""
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors = 0
    recording = False

    async def client_loop(client: httpx.AsyncClient, stop_at: float) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            r = await request(client)
            if r.status_code >= 300:
                errors += 1
            elif recording:
                latencies.append(time.perf_counter() - now)

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        warm_until = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(client_loop(client, warm_until) for _ in range(CLIENTS)))
        recording = True
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(client, stop_at) for _ in range(CLIENTS)))
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


def run(settings: Settings, *, seconds: float = SECONDS) -> dict[str, float]:
    """GET then POST load against a fresh `jobledger api` process; figures by route."""
    from api import create_key

    key, _ = create_key(settings.database_url, f"bench-{uuid.uuid4().hex[:8]}")
    with api_process(settings) as url:
        ids = _seed(url, key)
        _project(settings)  # the GETs read the views, as they do once the projector caught up
        shuffled = itertools.cycle(random.sample(ids, len(ids)))

        def get_one(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
            return client.get(f"/api/jobs/{next(shuffled)}")

        def post_one(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
            return client.post("/api/jobs", json={"type": "diag.echo", "payload": {}})

        gets = asyncio.run(_load(url, key, get_one, seconds))
        posts = asyncio.run(_load(url, key, post_one, seconds))
    return {**_figures("get", gets, seconds), **_figures("post", posts, seconds)}


def main() -> None:
    from jobledger import roles
    from jobledger.wiring import load_job_types, load_settings, make_ledger
    from ledger import ensure_database

    settings = load_settings()
    load_job_types(settings)
    ensure_database(settings.database_url)
    make_ledger(settings, create_tables=True).close()
    roles.migrate(settings)
    print(json.dumps(run(settings)))


if __name__ == "__main__":
    main()
