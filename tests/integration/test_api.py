"""The HTTP API against a real server on loopback, real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import pytest

from ledger import Ledger, Settings, commands, registry, utc_now
from tests.api_server import key_for, project, server_in_thread

ECHO = {"type": "diag.echo", "payload": {"result": 1}}


@dataclass
class Api:
    client: httpx.Client
    acme: dict[str, str]
    beta: dict[str, str]
    admin: dict[str, str]
    ledger: Ledger
    database_url: str

    def submit(self, body: object = ECHO, who: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post("/api/jobs", json=body, headers=who or self.acme)

    def job(self, who: dict[str, str] | None = None, **overrides: object) -> dict[str, object]:
        r = self.submit({**ECHO, **overrides}, who)
        assert r.status_code == 201, r.text
        doc: dict[str, object] = r.json()
        return doc

    def project(self) -> None:
        project(self.ledger, self.database_url)


@pytest.fixture
def api(settings: Settings, ledger: Ledger) -> Iterator[Api]:
    with server_in_thread(settings, ledger) as url, httpx.Client(base_url=url) as client:
        yield Api(
            client=client,
            acme=key_for(settings.database_url, "acme"),
            beta=key_for(settings.database_url, "beta"),
            admin=key_for(settings.database_url, "ops", admin=True),
            ledger=ledger,
            database_url=settings.database_url,
        )


def test_a_submitted_job_answers_201_with_location_and_reads_back_at_once(api: Api) -> None:
    r = api.submit()
    assert r.status_code == 201
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["org"] == "acme"
    assert job["payload"]["result"] == 1
    # No projector ran: the view has nothing, the ledger answers.
    got = api.client.get(r.headers["location"], headers=api.acme)
    assert got.status_code == 200
    assert got.json() == job


def test_a_get_answers_from_the_view_once_projected(api: Api) -> None:
    job = api.job()
    api.project()
    got = api.client.get(f"/api/jobs/{job['id']}", headers=api.acme)
    assert got.json() == job


ROUTES = [
    ("GET", "/api/jobs"),
    ("POST", "/api/jobs"),
    ("POST", "/api/jobs/batch"),
    ("GET", "/api/jobs/{id}"),
    ("GET", "/api/jobs/{id}?at=2030-01-01T00:00:00Z"),
    ("GET", "/api/jobs/{id}/events"),
    ("DELETE", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/retry"),
    ("GET", "/api/stats"),
]


BAD_AUTH = [None, "Bearer", "Bearer jlk_unknown", "Bearer " + "x" * 5000, "Basic dXNlcjpwYXNz"]


def test_every_api_route_answers_401_without_a_known_key(api: Api) -> None:
    job = api.job()
    wrong = []
    for auth in BAD_AUTH:
        headers = {"Authorization": auth} if auth else {}
        for method, route in ROUTES:
            r = api.client.request(method, route.format(id=job["id"]), headers=headers, json=ECHO)
            if r.status_code != 401 or r.json()["status_code"] != 401:
                wrong.append((auth and auth[:20], method, route, r.status_code))
    assert wrong == []


def test_another_organisations_job_answers_exactly_like_a_missing_one(api: Api) -> None:
    job = api.job()
    for method, route in ROUTES[3:8]:
        foreign = api.client.request(method, route.format(id=job["id"]), headers=api.beta)
        missing = api.client.request(method, route.format(id=uuid4()), headers=api.beta)
        assert foreign.status_code == missing.status_code == 404, (method, route)
        assert foreign.json() == missing.json()
    # ...and nothing happened to it.
    events = api.client.get(f"/api/jobs/{job['id']}/events", headers=api.acme).json()
    assert [e["type"] for e in events["items"]] == ["submitted", "queued"]


def test_lists_and_stats_only_show_the_keys_organisation(api: Api) -> None:
    mine = api.job()
    api.job(who=api.beta)
    api.project()
    items = api.client.get("/api/jobs", headers=api.acme).json()["items"]
    assert [j["id"] for j in items] == [mine["id"]]
    stats = api.client.get("/api/stats", headers=api.acme).json()
    assert stats["by_status"]["queued"] == 1
    assert stats["by_type"] == {"diag.echo": 1}
    # A non-admin key cannot widen its scope with ?org=.
    items = api.client.get("/api/jobs?org=beta", headers=api.acme).json()["items"]
    assert [j["id"] for j in items] == [mine["id"]]


def test_an_admin_key_sees_every_organisation_and_may_filter_by_one(api: Api) -> None:
    a = api.job()
    b = api.job(who=api.beta)
    api.project()
    everyone = api.client.get("/api/jobs", headers=api.admin).json()["items"]
    assert {j["id"] for j in everyone} == {a["id"], b["id"]}
    only_beta = api.client.get("/api/jobs?org=beta", headers=api.admin).json()["items"]
    assert [j["id"] for j in only_beta] == [b["id"]]
    assert api.client.get(f"/api/jobs/{a['id']}", headers=api.admin).status_code == 200
    assert api.client.get("/api/stats?org=beta", headers=api.admin).json()["by_type"] == {
        "diag.echo": 1
    }


def test_the_list_filters_and_pages_newest_first_while_new_jobs_arrive(api: Api) -> None:
    ids = [api.job()["id"] for _ in range(5)]
    low = api.job(priority="low", payload={"result": 2})
    api.client.delete(f"/api/jobs/{ids[0]}", headers=api.acme)
    api.project()
    page = api.client.get("/api/jobs?limit=2", headers=api.acme).json()
    assert [j["id"] for j in page["items"]] == [low["id"], ids[4]]
    api.job()  # a newer job does not shift the pages already handed out
    api.project()
    seen = [j["id"] for j in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        page = api.client.get(f"/api/jobs?limit=2&cursor={cursor}", headers=api.acme).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [low["id"], *reversed(ids)]
    cancelled = api.client.get("/api/jobs?status=cancelled", headers=api.acme).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    other = api.client.get("/api/jobs?type=rss.sync", headers=api.acme).json()
    assert other == {"items": [], "next_cursor": None}


def test_a_repeated_idempotency_key_answers_the_same_job_and_a_new_body_409(api: Api) -> None:
    body = {**ECHO, "idempotency_key": "order-1"}
    first = api.submit(body)
    again = api.submit({**body, "priority": "normal"})  # the default, spelled out
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    changed = api.submit({**body, "payload": {"result": 2}})
    assert changed.status_code == 409
    # Keys are per organisation.
    assert api.submit(body, api.beta).status_code == 201


def test_racing_submissions_with_one_key_create_exactly_one_job(api: Api) -> None:
    import concurrent.futures

    body = {**ECHO, "idempotency_key": "race"}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: api.submit(body), range(16)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 15 + [201]
    assert len({r.json()["id"] for r in answers}) == 1


def test_a_batch_lands_whole_or_not_at_all(api: Api) -> None:
    good = [{**ECHO, "payload": {"result": i}} for i in range(3)]
    bad = api.client.post(
        "/api/jobs/batch",
        json={"jobs": [*good, {"type": "diag.echo", "payload": {"nope": 1}}]},
        headers=api.acme,
    )
    assert bad.status_code == 422
    assert bad.json()["extra"][0]["loc"] == ["jobs", 3, "payload", "nope"]
    api.project()
    assert api.client.get("/api/stats", headers=api.acme).json()["by_type"] == {}
    ok = api.client.post("/api/jobs/batch", json={"jobs": good}, headers=api.acme)
    assert ok.status_code == 201
    assert [j["payload"]["result"] for j in ok.json()["items"]] == [0, 1, 2]
    too_many = api.client.post("/api/jobs/batch", json={"jobs": [ECHO] * 1001}, headers=api.acme)
    assert too_many.status_code == 422


def test_a_batch_over_the_quota_submits_nothing_and_answers_429(api: Api) -> None:
    r = api.client.post("/api/jobs/batch", json={"jobs": [ECHO] * 51}, headers=api.acme)
    assert r.status_code == 429
    assert r.headers["retry-after"].isdigit()
    api.project()
    assert api.client.get("/api/stats", headers=api.acme).json()["by_type"] == {}


def test_delete_cancels_a_waiting_job_requests_a_running_ones_and_refuses_a_finished(
    api: Api,
) -> None:
    waiting = api.job(delay_s=3600)
    assert waiting["status"] == "scheduled"
    r = api.client.delete(f"/api/jobs/{waiting['id']}", headers=api.acme)
    assert (r.status_code, r.json()["status"]) == (200, "cancelled")
    assert api.client.delete(f"/api/jobs/{waiting['id']}", headers=api.acme).status_code == 409

    running = api.job()
    job_id = running["id"]
    now = utc_now()
    api.ledger.execute(
        UUID(job_id),
        lambda job: commands.start_attempt(job, "w1", 30, now),
    )
    r = api.client.delete(f"/api/jobs/{job_id}", headers=api.acme)
    assert r.status_code == 202
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)


def test_retry_queues_a_cancelled_job_with_a_new_budget_and_refuses_others(api: Api) -> None:
    job = api.job()
    assert api.client.post(f"/api/jobs/{job['id']}/retry", headers=api.acme).status_code == 409
    api.client.delete(f"/api/jobs/{job['id']}", headers=api.acme)
    r = api.client.post(f"/api/jobs/{job['id']}/retry", headers=api.acme)
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["max_attempts"]) == ("queued", 8)


def test_at_replays_the_ledger_to_that_instant(api: Api) -> None:
    job = api.job()
    between = datetime.now(UTC)
    api.client.delete(f"/api/jobs/{job['id']}", headers=api.acme)
    url = f"/api/jobs/{job['id']}"
    then = api.client.get(url, params={"at": between.isoformat()}, headers=api.acme)
    assert (then.status_code, then.json()["status"]) == (200, "queued")
    now = api.client.get(url, params={"at": utc_now().isoformat()}, headers=api.acme)
    assert now.json()["status"] == "cancelled"
    before = (between - timedelta(hours=1)).isoformat()
    assert api.client.get(url, params={"at": before}, headers=api.acme).status_code == 404


def test_events_are_the_jobs_history_in_order(api: Api) -> None:
    job = api.job()
    api.client.delete(f"/api/jobs/{job['id']}", headers=api.acme)
    items = api.client.get(f"/api/jobs/{job['id']}/events", headers=api.acme).json()["items"]
    assert [(e["version"], e["type"]) for e in items] == [
        (1, "submitted"),
        (2, "queued"),
        (3, "cancel_requested"),
        (4, "cancelled"),
    ]
    assert items[0]["data"]["org"] == "acme"
    assert items[2]["data"]["by"].startswith("key:")


BAD_BODIES = [
    (b"{bad", 400),
    (b"", 400),
    (b"\xff\xfe", 400),
    (b"[" * 100_000, 400),
    (b"[1, 2]", 422),
    (b'"text"', 422),
    (b"null", 422),
    (b'{"type": 5}', 422),
    (b'{"type": "diag.echo", "payload": []}', 422),
    (b'{"type": "diag.echo", "payload": {"sleep_ms": "soon"}}', 422),
    (b'{"type": "diag.echo", "payload": {"unknown": 1}}', 422),
    (b'{"type": "diag.echo", "surprise": 1}', 422),
    (b'{"type": "no.such"}', 422),
    (b'{"type": "diag.echo", "priority": "urgent"}', 422),
    (b'{"type": "diag.echo", "delay_s": -1}', 422),
    (b'{"type": "diag.echo", "delay_s": 1e400}', 422),
    (b'{"type": "diag.echo", "run_at": "2030-01-01T00:00:00"}', 422),
    (b'{"type": "diag.echo", "run_at": "2030-01-01T00:00:00Z", "delay_s": 1}', 422),
    (b'{"type": "diag.echo", "max_attempts": 0}', 422),
    (b'{"type": "diag.echo", "idempotency_key": ""}', 422),
    (b'{"type": "context.scrape", "payload": {"brand_id": "b", "url": "nope"}}', 422),
    (b'{"type": "diag.echo", "payload": {"result": "' + b"x" * 300_000 + b'"}}', 413),
    (b'{"type": "diag.echo", "payload": {"result": NaN}}', 400),
    (b'{"type": "diag.echo", "payload": {"result": "\\ud800"}}', 400),
    (b'{"type": "diag.echo", "payload": {"result": ' + b"[" * 900 + b"]" * 900 + b"}}", 400),
    (b'{"type": "diag.echo", "run_at": "9999-12-31T23:59:59-14:00"}', 422),
    (b'{"type": "diag.echo", "run_at": "0001-01-01T00:00:00+14:00"}', 422),
]


def test_bad_submissions_answer_their_4xx_as_json(api: Api) -> None:
    wrong = []
    headers = {**api.acme, "Content-Type": "application/json"}
    for body, status in BAD_BODIES:
        sent = [("/api/jobs", body, status)]
        if status != 413:  # a batch may be larger than one job may
            inner = b'{"jobs": [' + body + b"]}" if body.startswith(b"{") else body
            sent.append(("/api/jobs/batch", inner, status))
        for route, content, expected in sent:
            r = api.client.post(route, content=content, headers=headers)
            doc = r.json()
            if (r.status_code, doc["status_code"]) != (expected, expected) or not isinstance(
                doc["detail"], str
            ):
                wrong.append((route, content[:50], r.status_code, r.text[:200]))
    assert wrong == []
    api.project()
    assert api.client.get("/api/stats", headers=api.acme).json()["by_type"] == {}


def test_field_errors_name_the_offending_field(api: Api) -> None:
    r = api.submit({"type": "diag.echo", "payload": {"sleep_ms": "soon"}})
    assert r.json()["extra"] == [
        {"loc": ["payload", "sleep_ms"], "msg": "Input should be a valid integer, unable to parse "
         "string as an integer", "type": "int_parsing"}
    ]  # fmt: skip


BAD_READS = [
    ("GET", "/api/jobs/not-a-uuid", 404),
    ("GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", 404),
    ("GET", "/api/jobs/%00", 404),
    ("GET", "/api/jobs/" + "a" * 5000, 404),
    ("DELETE", "/api/jobs/not-a-uuid", 404),
    ("POST", "/api/jobs/not-a-uuid/retry", 404),
    ("GET", "/api/jobs/not-a-uuid/events", 404),
    ("GET", "/api/jobs?limit=0", 400),
    ("GET", "/api/jobs?limit=501", 400),
    ("GET", "/api/jobs?limit=abc", 400),
    ("GET", "/api/jobs?status=lost", 400),
    ("GET", "/api/jobs?cursor=garbage", 400),
    ("GET", "/api/jobs?cursor=%FF%FE", 400),
    ("GET", "/api/jobs?cursor=" + "A" * 600, 400),
    ("GET", "/api/jobs?type=%00", 400),
    ("GET", "/api/jobs?org=%00", 400),
    ("GET", "/api/stats?org=%00", 400),
    ("GET", "/api/jobs/{id}?at=yesterday", 400),
    ("GET", "/api/jobs/{id}?at=2030-01-01T00:00:00", 400),
    ("GET", "/api/jobs/{id}?at=99999-01-01T00:00:00Z", 400),
    ("GET", "/api/nothing", 404),
    ("PUT", "/api/jobs", 405),
    ("PATCH", "/api/jobs/{id}", 405),
]


def test_bad_paths_and_parameters_answer_their_4xx_as_json(api: Api) -> None:
    job = api.job()
    wrong = []
    for method, route, status in BAD_READS:
        r = api.client.request(method, route.format(id=job["id"]), headers=api.acme)
        if r.status_code != status or r.json()["status_code"] != status:
            wrong.append((method, route[:60], r.status_code, r.text[:200]))
    assert wrong == []


def test_health_ready_and_metrics_report_the_system(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    api.job()
    api.project()
    ready = api.client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"postgres", "redis", "projections"}
    text = api.client.get("/metrics").text
    assert 'jobledger_jobs_submitted_total{type="diag.echo"} 1.0' in text
    assert 'jobledger_queue_depth{type="diag.echo"} 1.0' in text
    assert "jobledger_projection_lag_events 0.0" in text
    assert "# TYPE jobledger_attempt_duration_seconds histogram" in text


def test_ready_answers_503_while_the_views_lag_more_than_5_s(api: Api, settings: Settings) -> None:
    old = Ledger(
        settings.database_url, registry=registry, clock=lambda: utc_now() - timedelta(seconds=9)
    )
    try:
        old.submit(old.spec_for("diag.echo", "acme", {}))
    finally:
        old.close()
    r = api.client.get("/ready")
    assert r.status_code == 503
    assert r.json()["extra"]["projections"]["ok"] is False
    api.project()
    assert api.client.get("/ready").status_code == 200


def test_ready_answers_503_when_redis_is_unreachable(settings: Settings, ledger: Ledger) -> None:
    from tests.api_server import free_port

    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with server_in_thread(broken, ledger) as url:
        r = httpx.get(f"{url}/ready")
    assert r.status_code == 503
    assert r.json()["extra"]["redis"]["ok"] is False


def test_the_openapi_document_has_every_job_types_payload_schema(api: Api) -> None:
    doc = api.client.get("/schema/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for kind in registry:
        assert schemas[f"Payload.{kind.name}"]["properties"].keys() == (
            kind.payload_model.model_json_schema()["properties"].keys()
        )
    body = doc["paths"]["/api/jobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/SubmitJob")
    assert set(doc["paths"]) >= {
        "/api/jobs",
        "/api/jobs/batch",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/retry",
        "/api/stats",
        "/health",
        "/ready",
        "/metrics",
    }
