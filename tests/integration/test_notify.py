"""`notify.send` against a real webhook on loopback, and in the log without one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import anyio
import pytest
import structlog
import structlog.testing

from consumers.context import AttemptContext
from consumers.handlers.notify import WebhookRefused, make_notify
from ledger import NonRetryableError, registry


class Webhook:
    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict[str, Any]] = []


@pytest.fixture
def webhook() -> Iterator[tuple[str, Webhook]]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            hook.received.append(json.loads(self.rfile.read(length)))
            self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/jobs", hook
    server.shutdown()
    server.server_close()


def _notice() -> Any:
    return registry.get("notify.send").parse(
        {"kind": "job_failed", "subject": "diag.echo job failed", "message": "EchoError: boom",
         "job_id": str(uuid4())}
    )  # fmt: skip


def _send(webhook_url: str | None) -> dict[str, Any]:
    context = AttemptContext(uuid4(), "acme", "notify.send", 1)
    result: dict[str, Any] = anyio.run(make_notify(webhook_url), _notice(), context)
    return result


def test_a_notice_is_posted_to_the_webhook_with_its_organisation(
    webhook: tuple[str, Webhook],
) -> None:
    url, hook = webhook
    assert _send(url) == {"channel": "webhook", "status": 200}
    [body] = hook.received
    assert body["org"] == "acme"
    assert body["kind"] == "job_failed"
    assert body["subject"] == "diag.echo job failed"


def test_a_webhook_that_fails_or_throttles_is_retried(webhook: tuple[str, Webhook]) -> None:
    url, hook = webhook
    for status in (503, 429):
        hook.status = status
        with pytest.raises(WebhookRefused):
            _send(url)


def test_a_webhook_that_refuses_the_notice_fails_it_for_good(webhook: tuple[str, Webhook]) -> None:
    url, hook = webhook
    hook.status = 404
    with pytest.raises(NonRetryableError):
        _send(url)


def test_without_a_webhook_the_notice_is_a_log_line() -> None:
    with structlog.testing.capture_logs() as lines:
        assert _send(None) == {"channel": "log"}
    [line] = [entry for entry in lines if entry["event"] == "organisation_notified"]
    assert line["subject"] == "diag.echo job failed"
    assert line["org"] == "acme"
