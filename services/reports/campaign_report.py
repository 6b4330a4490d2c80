"""A campaign's results per variant: counts from ``messages``, ``clicks`` and ``conversions``.

``load`` runs six grouped queries (one round trip each, whatever the campaign's size) and
``build`` turns their rows into the report; ``build`` is pure and unit-tested. Field
meanings are in docs/results.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.reports.abtest import Sample, decide

NO_VARIANT = "-"
METRICS = ("click_rate", "delivery_rate", "conversion_rate")

_CAMPAIGN = """
SELECT tenant_id, campaign_id, name, state, phase, variants, ab_test, decide_at, winner, winner_detail,
       published, launched_at
FROM shared_campaign_reports WHERE campaign_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
"""
_MESSAGES = """
SELECT variant, count(*) AS targeted,
       count(*) FILTER (WHERE submitted_at IS NOT NULL) AS sent,
       count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status = 'undelivered') AS undelivered,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'expired') AS expired,
       count(*) FILTER (WHERE status = 'unknown') AS unknown,
       count(*) FILTER (WHERE status_rank < 100 AND status <> 'unknown') AS pending,
       coalesce(sum(segments) FILTER (WHERE submitted_at IS NOT NULL), 0) AS segments
FROM messages WHERE campaign_id = $1 AND status_rank > 0 GROUP BY variant
"""
_SKIPPED = """
SELECT variant, status, coalesce(reason_code, status) AS reason_code, count(*) AS n
FROM messages WHERE campaign_id = $1 AND status = 'suppressed' GROUP BY 1, 2, 3
"""
# Held messages (status ``scheduled``): the rule of their latest hold and when it releases them,
# from the scheduler's status event in the timeline (reason_code and due_at in its detail).
_HELD = """
SELECT m.variant, coalesce(h.detail->>'reason_code', 'scheduled') AS rule, count(*) AS n,
       min((h.detail->>'due_at')::timestamptz) AS next_release, max((h.detail->>'due_at')::timestamptz) AS until
FROM messages m
LEFT JOIN LATERAL (
    SELECT e.detail FROM message_events e WHERE e.message_id = m.message_id AND e.status = 'scheduled'
    ORDER BY e.occurred_at DESC, e.recorded_at DESC LIMIT 1
) h ON true
WHERE m.campaign_id = $1 AND m.status = 'scheduled'
GROUP BY 1, 2
"""
# People's clicks are rows of ``clicks`` (rows flagged bot are from before bot clicks were
# counted apart); bots' are counters in ``bot_clicks``. A variant may have a row of each.
_CLICKS = """
SELECT variant, count(*) FILTER (WHERE NOT bot) AS total,
       count(DISTINCT message_id) FILTER (WHERE NOT bot) AS unique_messages,
       count(*) FILTER (WHERE bot) AS bots
FROM clicks WHERE campaign_id = $1 GROUP BY variant
UNION ALL
SELECT variant, 0, 0, sum(clicks) FROM bot_clicks WHERE campaign_id = $1 GROUP BY variant
"""
_CONVERSIONS = """
SELECT variant, currency, count(*) AS n, sum(value) AS revenue
FROM conversions WHERE campaign_id = $1 GROUP BY variant, currency
"""
# The A/B samples: per variant, messages sent / delivered, and delivered ones clicked by a
# person or converted; only messages accepted up to ``cutoff`` (the decision) when given.
_AB = """
SELECT m.variant,
       count(*) FILTER (WHERE m.submitted_at IS NOT NULL) AS sent,
       count(*) FILTER (WHERE m.status = 'delivered') AS delivered,
       count(*) FILTER (WHERE m.status = 'delivered' AND EXISTS (
           SELECT 1 FROM clicks c WHERE c.message_id = m.message_id AND NOT c.bot)) AS clicked,
       count(*) FILTER (WHERE m.status = 'delivered' AND EXISTS (
           SELECT 1 FROM conversions v WHERE v.message_id = m.message_id)) AS converted
FROM messages m
WHERE m.campaign_id = $1 AND m.status_rank > 0 AND ($2::timestamptz IS NULL OR m.accepted_at <= $2)
GROUP BY m.variant
"""


async def load_campaign(conn: asyncpg.Connection, campaign_id: uuid.UUID, tenant_id: str | None) -> asyncpg.Record | None:
    return await conn.fetchrow(_CAMPAIGN, campaign_id, tenant_id)


async def ab_rows(conn: asyncpg.Connection, campaign_id: uuid.UUID, cutoff: datetime | None) -> list[asyncpg.Record]:
    return await conn.fetch(_AB, campaign_id, cutoff)


async def load(
    conn: asyncpg.Connection, campaign_id: uuid.UUID, tenant_id: str | None, alpha: float
) -> dict[str, Any] | None:
    """The report, or None when there is no such campaign (for this tenant)."""
    campaign = await load_campaign(conn, campaign_id, tenant_id)
    if campaign is None:
        return None
    detail = campaign["winner_detail"] or {}
    cutoff = _parse_time(detail.get("decided_at")) if isinstance(detail, dict) else None
    return build(
        dict(campaign),
        await conn.fetch(_MESSAGES, campaign_id),
        await conn.fetch(_SKIPPED, campaign_id),
        await conn.fetch(_CLICKS, campaign_id),
        await conn.fetch(_CONVERSIONS, campaign_id),
        await ab_rows(conn, campaign_id, cutoff),
        alpha=alpha,
        held=await conn.fetch(_HELD, campaign_id),
    )


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _empty() -> dict[str, Any]:
    return {
        "targeted": 0, "skipped": {}, "skipped_total": 0, "pending": 0, "held": 0, "held_by": [], "sent": 0,
        "delivered": 0,
        "undelivered": 0, "failed": 0, "expired": 0, "unknown": 0, "delivery_rate": None, "clicks_total": 0,
        "clicks_unique": 0, "bot_clicks": 0, "click_rate": None, "conversions": 0, "revenue": {},
        "conversion_rate": None, "segments": 0,
    }


def _name(variant: str | None) -> str:
    return variant if variant is not None else NO_VARIANT


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _merge_held(into: list[dict[str, Any]], rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Held counts by rule: ``{rule, count, next_release, until}`` (the earliest and the latest
    release), sorted by rule."""
    by_rule = {h["rule"]: dict(h) for h in into}
    for r in rows:
        count = int(r["n"] if "n" in r else r["count"])
        first, last = _iso(r["next_release"]), _iso(r["until"])
        h = by_rule.setdefault(r["rule"], {"rule": r["rule"], "count": 0, "next_release": first, "until": last})
        if h["count"]:
            h["next_release"] = min(x for x in (h["next_release"], first) if x) if (h["next_release"] or first) else None
            h["until"] = max(x for x in (h["until"], last) if x) if (h["until"] or last) else None
        h["count"] += count
    return [by_rule[k] for k in sorted(by_rule)]


def samples(rows: Iterable[Mapping[str, Any]], metric: str, planned: Iterable[str] = ()) -> list[Sample]:
    """Successes and trials per variant for ``metric`` (click_rate: delivered messages a person
    clicked / delivered; delivery_rate: delivered / sent; conversion_rate: delivered messages
    with a conversion / delivered). A planned variant without messages is a zero sample."""
    out = []
    for r in rows:
        if r["variant"] is None:
            continue
        if metric == "delivery_rate":
            out.append(Sample(r["variant"], r["delivered"], r["sent"]))
        elif metric == "conversion_rate":
            out.append(Sample(r["variant"], r["converted"], r["delivered"]))
        else:
            out.append(Sample(r["variant"], r["clicked"], r["delivered"]))
    seen = {s.name for s in out}
    return out + [Sample(name, 0, 0) for name in planned if name not in seen]


def build(
    campaign: Mapping[str, Any],
    messages: Iterable[Mapping[str, Any]],
    skipped: Iterable[Mapping[str, Any]],
    clicks: Iterable[Mapping[str, Any]],
    conversions: Iterable[Mapping[str, Any]],
    ab: Iterable[Mapping[str, Any]],
    *,
    alpha: float,
    held: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    planned = [v.get("name") for v in campaign.get("variants") or [] if isinstance(v, dict)]
    per: dict[str, dict[str, Any]] = {str(n): _empty() for n in planned if n}
    revenue: dict[str, dict[str, Decimal]] = {}

    def row_for(variant: str | None) -> dict[str, Any]:
        return per.setdefault(_name(variant), _empty())

    for r in messages:
        v = row_for(r["variant"])
        for key in ("targeted", "sent", "delivered", "undelivered", "failed", "expired", "unknown", "pending", "segments"):
            v[key] += int(r.get(key) or 0)  # rows without a column count it as 0
    for r in skipped:
        v = row_for(r["variant"])
        v["skipped"][r["reason_code"]] = v["skipped"].get(r["reason_code"], 0) + int(r["n"])
        v["skipped_total"] += int(r["n"])
    for r in held:
        v = row_for(r["variant"])
        v["held"] += int(r["n"])
        v["held_by"] = _merge_held(v["held_by"], [r])
    for r in clicks:
        v = row_for(r["variant"])
        v["clicks_total"] += int(r["total"])
        v["clicks_unique"] += int(r["unique_messages"])
        v["bot_clicks"] += int(r["bots"])
    for r in conversions:
        name = _name(r["variant"])
        v = row_for(r["variant"])
        v["conversions"] += int(r["n"])
        money = revenue.setdefault(name, {})
        currency = r["currency"] or "unknown"
        money[currency] = money.get(currency, Decimal(0)) + Decimal(r["revenue"] or 0)

    totals = _empty()
    for name, v in per.items():
        v["revenue"] = {c: str(a) for c, a in sorted(revenue.get(name, {}).items())}
        for key, value in v.items():
            if isinstance(value, int):
                totals[key] += value
        for reason, n in v["skipped"].items():
            totals["skipped"][reason] = totals["skipped"].get(reason, 0) + n
        totals["held_by"] = _merge_held(totals["held_by"], v["held_by"])
    all_money: dict[str, Decimal] = {}
    for money in revenue.values():
        for currency, amount in money.items():
            all_money[currency] = all_money.get(currency, Decimal(0)) + amount
    totals["revenue"] = {c: str(a) for c, a in sorted(all_money.items())}
    for v in [*per.values(), totals]:
        v["delivery_rate"] = _rate(v["delivered"], v["sent"])
        v["click_rate"] = _rate(v["clicks_unique"], v["delivered"])
        v["conversion_rate"] = _rate(v["conversions"], v["delivered"])

    ab_test = campaign.get("ab_test") or None
    ab_section = None
    named = [n for n in per if n != NO_VARIANT]
    if ab_test or len(named) > 1:
        settings = ab_test if isinstance(ab_test, dict) else {}
        metric = settings.get("metric") if settings.get("metric") in METRICS else "click_rate"
        min_sample = int(settings.get("min_sample") or 0)
        decision = decide(samples(list(ab), metric, named), alpha=alpha, min_sample=min_sample, metric=metric)
        configured = bool(ab_test)
        ab_section = {
            **decision.detail,
            # only a configured A/B test with a significant result has a winner; the best
            # variant so far is the leader (none while no variant has any trials)
            "configured": configured,
            "winner": decision.winner if configured and decision.significant else None,
            "leader": decision.winner,
            "significant": decision.significant,
            "reason": decision.reason,
            "decided": (
                {"winner": campaign.get("winner"), "detail": campaign.get("winner_detail")}
                if campaign.get("winner") else None
            ),
        }
    return {
        "campaign_id": str(campaign["campaign_id"]),
        "tenant_id": campaign["tenant_id"],
        "name": campaign["name"],
        "state": campaign["state"],
        "phase": campaign.get("phase"),
        "published": campaign.get("published"),
        "winner": campaign.get("winner"),
        "totals": totals,
        "variants": [{"variant": name, **v} for name, v in per.items()],
        "ab_test": ab_section,
    }
