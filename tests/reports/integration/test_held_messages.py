"""Held messages in the campaign report and `herald report`: the scheduler's real decision on a
Saturday night in Madrid (quiet hours) goes through reports' status handler into PostgreSQL, and
the report says how many are held, by which rule, until when."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from rich.console import Console

from services.reports import campaign_report
from services.reports.api import create_app
from services.reports.handlers import StatusHandler
from services.reports.report_cli import print_report
from services.scheduler.handlers import AcceptedHandler, FactsRepository
from shared.contracts import MessageAcceptedEvent
from shared.kafka import Incoming
from tests.conftest import make_tenant
from tests.reports.integration.test_results import accept_marketing

pytestmark = pytest.mark.integration

SATURDAY_NIGHT = datetime(2026, 12, 5, 22, 30, tzinfo=UTC)  # 23:30 in Madrid


def incoming(topic, event) -> Incoming:
    return Incoming(topic, event, None)  # handlers never read the record


async def test_held_messages_show_their_rule_and_release_time(pool) -> None:
    tenant = await make_tenant(pool)
    campaign = uuid.uuid4()
    variants = [{"name": "A", "template_id": str(uuid.uuid4()), "percent": 50},
                {"name": "B", "template_id": str(uuid.uuid4()), "percent": 50}]
    await pool.execute(
        "INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, state)"
        " VALUES ($1, $2, 'Black Friday', 'true', $3, 'running')", tenant.tenant_id, campaign, variants,
    )
    messages, accepted = await accept_marketing(pool, tenant.tenant_id, ["Hola, 30% hoy", "El Black Friday acaba"])
    events = []
    for out, variant in zip(accepted, ("A", "B"), strict=True):
        payload = out.event.payload.model_copy(update={"campaign_id": campaign, "variant": variant})
        events.append(MessageAcceptedEvent(tenant=tenant.tenant_id, trace_id="t", payload=payload))

    decided = await AcceptedHandler(FactsRepository(pool), clock=lambda: SATURDAY_NIGHT)(
        [incoming(out.topic, e) for out, e in zip(accepted, events, strict=True)])
    statuses = [o for o in decided if o.event.type == "message.status"]
    assert [s.event.payload.status.value for s in statuses] == ["scheduled", "scheduled"]
    assert {s.event.payload.reason_code for s in statuses} == {"quiet_hours"}
    release = datetime.fromisoformat(statuses[0].event.payload.detail["due_at"])
    assert release > SATURDAY_NIGHT

    await StatusHandler(pool)([incoming(out.topic, e) for out, e in zip(accepted, events, strict=True)]
                              + [incoming(o.topic, o.event) for o in statuses])
    async with pool.acquire() as conn:
        report = await campaign_report.load(conn, campaign, tenant.tenant_id, 0.05)
    totals = report["totals"]
    assert (totals["sent"], totals["pending"], totals["held"]) == (0, 2, 2)
    assert totals["held_by"] == [{"rule": "quiet_hours", "count": 2, "next_release": release.isoformat(),
                                  "until": release.isoformat()}]
    a = report["variants"][0]
    assert (a["variant"], a["held"], a["held_by"][0]["rule"]) == ("A", 1, "quiet_hours")

    out = io.StringIO()
    print_report(report, Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    assert "held" in text and "quiet_hours" in text and release.strftime("%Y-%m-%d %H:%M") in text

    app = create_app(pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reports") as client:
        r = await client.get(f"/v1/campaigns/{campaign}/report", headers=tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["totals"]["pending"], body["totals"]["held"]) == (2, 2)
    assert body["totals"]["held_by"][0]["rule"] == "quiet_hours" and body["ab_test"]["winner"] is None
