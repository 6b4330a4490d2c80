"""Cancel and reschedule held messages through the four services running as processes: ingest
publishes the command, the scheduler applies it to its timer, reports shows the outcome."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from herald_tools.stack import Stack
from shared.contracts import utcnow
from tests.conftest import make_tenant
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


async def test_cancel_and_reschedule_through_the_services(stack: Stack, pool) -> None:
    tenant = await make_tenant(pool)
    later = (utcnow() + timedelta(days=1)).isoformat()
    async with httpx.AsyncClient(base_url=stack.url("ingest"), headers=tenant.headers, timeout=30) as ingest, \
            httpx.AsyncClient(base_url=stack.url("reports"), headers=tenant.headers, timeout=30) as reports:
        ids = []
        for to in ("+34600100001", "+34600100002"):
            r = await ingest.post("/v1/messages", json={"to": to, "body": "Your appointment is tomorrow",
                                                        "send_at": later})
            assert r.status_code == 202, r.text
            ids.append(r.json()["message_id"])
        cancel, move = ids

        def status_is(message_id: str, *wanted: str):
            async def check():
                r = await reports.get(f"/v1/messages/{message_id}")
                return r.json() if r.status_code == 200 and r.json()["status"] in wanted else None
            return check

        for message_id in ids:
            await wait_for(status_is(message_id, "scheduled"), timeout_s=60)

        r = await ingest.delete(f"/v1/messages/{cancel}")
        assert (r.status_code, r.json()["status"]) == (202, "cancel_requested"), r.text
        cancelled = await wait_for(status_is(cancel, "suppressed"), timeout_s=60)
        assert cancelled["reason_code"] == "cancelled_by_client"

        soon = (utcnow() + timedelta(seconds=2)).isoformat()
        r = await ingest.patch(f"/v1/messages/{move}", json={"send_at": soon})
        assert (r.status_code, r.json()["status"]) == (202, "reschedule_requested"), r.text
        sent = await wait_for(status_is(move, "submitted", "delivered"), timeout_s=90)
        assert sent["status"] in ("submitted", "delivered")
        r = await ingest.delete(f"/v1/messages/{move}")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "already_sent")
