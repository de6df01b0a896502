"""`notify.send`: tell an organisation something, by webhook or in the log.

Every failed job owes its organisation a notice (the ledger submits one), so
this type must always run: without a webhook configured
(`JOBLEDGER_NOTIFY_WEBHOOK`) the notice is one structured log line for the
operator's pipeline; with one, it is POSTed there as JSON. The destination is
configuration, never payload: payloads are stored and shown for good.
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

import httpx

from consumers.context import AttemptContext
from ledger import Handler, NonRetryableError

WEBHOOK_TIMEOUT_S = 10.0


class NoticePayload(Protocol):
    """The fields of `notify.send`'s payload model (declared with the job type in `ledger`)."""

    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def job_id(self) -> UUID | None: ...


class WebhookRefused(Exception):
    """The webhook answered with an error worth retrying (5xx, 429)."""


def make_notify(webhook_url: str | None) -> Handler:
    async def notify(payload: NoticePayload, context: AttemptContext) -> dict[str, Any]:
        notice = {
            "kind": payload.kind,
            "subject": payload.subject,
            "message": payload.message,
            "job_id": str(payload.job_id) if payload.job_id else None,
        }
        if webhook_url is None:
            context.logger.warning("organisation_notified", channel="log", **notice)
            return {"channel": "log"}
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            response = await client.post(webhook_url, json={"org": context.org, **notice})
        if response.status_code == 429 or response.status_code >= 500:
            raise WebhookRefused(f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise NonRetryableError(f"webhook refused the notice: {response.status_code}")
        return {"channel": "webhook", "status": response.status_code}

    return notify
