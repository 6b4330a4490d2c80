"""`herald report CAMPAIGN`: the terminal report (rich) and the PNG chart, on the real database."""

from __future__ import annotations

import asyncio
import io
import uuid

import pytest
from rich.console import Console

from herald_tools.cli import main
from services.reports.campaign_report import load
from services.reports.report_cli import print_report, write_png
from shared.contracts import utcnow
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


async def a_campaign(pool) -> tuple[str, uuid.UUID]:
    tenant = await make_tenant(pool)
    campaign = uuid.uuid4()
    variants = [{"name": "A", "template_id": str(uuid.uuid4()), "percent": 50},
                {"name": "B", "template_id": str(uuid.uuid4()), "percent": 50}]
    await pool.execute(
        "INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, ab_test, state)"
        " VALUES ($1, $2, 'Autumn', 'true', $3, $4, 'running')",
        tenant.tenant_id, campaign, variants, {"metric": "click_rate", "min_sample": 10, "wait_s": 60, "test_percent": 20},
    )
    for variant, clicked in (("A", 12), ("B", 4)):
        ids = [uuid.uuid4() for _ in range(40)]
        await pool.execute(
            "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, campaign_id, variant, segments,"
            " accepted_at, submitted_at, final_at) SELECT m, $2, 'delivered', 100, 'marketing', $3, $4, 2, $5, $5, $5"
            " FROM unnest($1::uuid[]) AS t(m)", ids, tenant.tenant_id, campaign, variant, utcnow(),
        )
        await pool.execute(
            "INSERT INTO clicks (event_id, tenant_id, code, message_id, link_index, url, campaign_id, variant,"
            " clicked_at, bot) SELECT gen_random_uuid(), $2, 'c', m, 0, 'https://x', $3, $4, now(), false"
            " FROM unnest($1::uuid[]) AS t(m)", ids[:clicked], tenant.tenant_id, campaign, variant,
        )
    return tenant.tenant_id, campaign


async def test_terminal_report_and_png(pool, tmp_path) -> None:
    tenant_id, campaign = await a_campaign(pool)
    async with pool.acquire() as conn:
        report = await load(conn, campaign, tenant_id, 0.05)
    out = io.StringIO()
    print_report(report, Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    assert "Autumn" in text and "clicks (unique)" in text and "30.00%" in text and "10.00%" in text
    assert "A vs B" in text and "two-proportion" in text
    png = write_png(report, tmp_path / "report.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


async def test_the_command(pool, tmp_path, capsys) -> None:
    tenant_id, campaign = await a_campaign(pool)
    png = tmp_path / "chart.png"
    code = await asyncio.to_thread(main, ["report", str(campaign), "--png", str(png)])
    assert code == 0 and png.stat().st_size > 10_000
    captured = capsys.readouterr()
    assert "Autumn" in captured.out and "chart written" in captured.err
    assert await asyncio.to_thread(main, ["report", str(campaign), "--tenant", "someone-else"]) == 1
    assert await asyncio.to_thread(main, ["report", "nope"]) == 2


async def test_no_winner_without_a_test_and_no_data_yet(pool, tmp_path) -> None:
    """Two variants without an A/B test, nothing delivered yet: no winner and no empty chart."""
    tenant = await make_tenant(pool)
    campaign = uuid.uuid4()
    variants = [{"name": "A", "template_id": str(uuid.uuid4()), "percent": 50},
                {"name": "B", "template_id": str(uuid.uuid4()), "percent": 50}]
    await pool.execute(
        "INSERT INTO campaigns (tenant_id, campaign_id, name, segment_filter, variants, state)"
        " VALUES ($1, $2, 'Plain', 'true', $3, 'running')", tenant.tenant_id, campaign, variants,
    )
    await pool.execute(
        "INSERT INTO messages (message_id, tenant_id, status, status_rank, type, campaign_id, variant, segments,"
        " accepted_at) SELECT gen_random_uuid(), $1, 'scheduled', 20, 'marketing', $2, v, 1, now()"
        " FROM unnest(ARRAY['A', 'B']) AS t(v)", tenant.tenant_id, campaign,
    )
    async with pool.acquire() as conn:
        report = await load(conn, campaign, tenant.tenant_id, 0.05)
    ab = report["ab_test"]
    assert ab["winner"] is None and ab["leader"] is None and ab["configured"] is False
    assert ab["reason"] == "no_data" and report["winner"] is None
    out = io.StringIO()
    print_report(report, Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    assert "no data yet" in text and "winner A" not in text and "best so far A" not in text
    png = write_png(report, tmp_path / "empty.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
