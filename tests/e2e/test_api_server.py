"""`jobledger api` as a real process: the quota under 200 concurrent POSTs, a schemathesis
run against its OpenAPI document, `keys create`, the request log, and a PostgreSQL crash."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ledger import Settings
from tests import api_server
from tests.api_server import key_for, projector_process, server_process
from tests.control_plane_support import JOBLEDGER, private_postgres, wait_for

ECHO = {"type": "diag.echo", "payload": {}}


def test_200_concurrent_posts_for_a_fresh_org_accept_exactly_50(
    env: dict[str, str], settings: Settings
) -> None:
    headers = key_for(settings.database_url, "fresh")

    async def flood(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/api/jobs", json=ECHO, headers=headers) for _ in range(200))
            )

    with server_process(env) as url:
        answers = asyncio.run(flood(url))
        codes = [r.status_code for r in answers]
        assert (codes.count(201), codes.count(429)) == (50, 150), sorted(set(codes))
        for r in answers:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) > 0
                assert r.json()["status_code"] == 429
        # Finishing a job frees room for exactly one more.
        accepted = next(r.json()["id"] for r in answers if r.status_code == 201)
        assert httpx.delete(f"{url}/api/jobs/{accepted}", headers=headers).status_code == 200
        more = [httpx.post(f"{url}/api/jobs", json=ECHO, headers=headers) for _ in range(2)]
        assert [r.status_code for r in more] == [201, 429]


def test_several_server_processes_share_the_port_and_read_their_writes(
    env: dict[str, str], settings: Settings
) -> None:
    headers = key_for(settings.database_url, "acme")
    with server_process(env, workers=2) as url, httpx.Client(base_url=url, headers=headers) as c:
        for _ in range(20):
            with httpx.Client(base_url=url, headers=headers) as fresh:  # new connection each
                created = fresh.post("/api/jobs", json=ECHO)
            assert created.status_code == 201
            got = c.get(created.headers["location"])
            assert (got.status_code, got.json()["id"]) == (200, created.json()["id"])


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(
    env: dict[str, str], settings: Settings
) -> None:
    headers = key_for(settings.database_url, "fuzz")
    with (
        projector_process(env),
        server_process(env) as url,
        httpx.Client(base_url=url, headers=headers) as client,
    ):
        # Some real jobs, so that ids and lists are not always empty.
        for i in range(3):
            client.post("/api/jobs", json={**ECHO, "payload": {"result": i}})
        schema = schemathesis.openapi.from_url(f"{url}/schema/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 11  # every route of the contract
        for operation in operations:
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):

                @hypothesis.settings(
                    max_examples=25,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def exchange(case: schemathesis.Case) -> None:
                    case.call_and_validate(base_url=url, headers=headers, checks=CHECKS)

                try:
                    exchange()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body): positive mode covered it.
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


def test_keys_create_prints_a_working_key_and_the_log_holds_no_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    jobledger = api_server.jobledger_command()
    out = subprocess.run(
        [jobledger, "keys", "create", "acme"], env=env, capture_output=True, text=True, check=True
    )
    key = out.stdout.strip().splitlines()[-1]
    admin = subprocess.run(
        [jobledger, "keys", "create", "ops", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "admin" in admin.stdout.splitlines()[0]
    assert admin.stdout.strip().splitlines()[-1].startswith("jlk_")
    bad = subprocess.run(
        [jobledger, "keys", "create", "Not An Org!"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    log = tmp_path / "api.log"
    with server_process(env, log) as url:
        auth = {"Authorization": f"Bearer {key}"}
        created = httpx.post(f"{url}/api/jobs", json=ECHO, headers=auth)
        assert created.status_code == 201
        assert httpx.get(f"{url}/api/jobs/nope", headers=auth).status_code == 404
        assert (
            httpx.get(f"{url}/api/jobs", headers={"Authorization": "Bearer x"}).status_code == 401
        )
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert [(r["method"], r["status"]) for r in requests if r["path"].startswith("/api")] == [
        ("POST", 201),
        ("GET", 404),
        ("GET", 401),
    ]
    assert requests[-3]["org"] == "acme"
    assert key not in log.read_text()
    assert "Bearer" not in log.read_text()


def test_while_postgresql_is_down_the_api_answers_503_and_serves_again_once_it_is_back(
    env: dict[str, str],
) -> None:
    """Never a 500 or a lost acknowledgement: 503 with Retry-After, then business as usual."""
    with private_postgres() as pg:
        env = {**env, "DATABASE_URL": pg.url("jobledger")}
        subprocess.run([*JOBLEDGER, "migrate"], env=env, check=True, capture_output=True)
        headers = key_for(env["DATABASE_URL"], "acme")
        with server_process(env) as url, httpx.Client(base_url=url, headers=headers) as c:
            before = c.post("/api/jobs", json=ECHO)
            assert before.status_code == 201
            pg.stop("immediate")
            for answer in (
                c.post("/api/jobs", json=ECHO),
                c.get(before.headers["location"]),
                c.get("/api/jobs"),
            ):
                assert answer.status_code == 503, answer.text
                assert answer.json()["status_code"] == 503
                assert answer.headers["retry-after"] == "1"
            assert c.get("/ready").status_code == 503
            assert c.get("/health").status_code == 200
            pg.start()
            after = wait_for(
                lambda: (r := c.post("/api/jobs", json=ECHO)).status_code == 201 and r,
                15,
                "the API to take submissions again",
                every_s=0.2,
            )
            for job in (before, after):
                assert c.get(job.headers["location"]).status_code == 200
