"""Fair share of the transactional lanes between tenants (pure logic, no I/O).

The transactional (priority) lanes are where every tenant's codes and alerts travel ahead of
campaigns. One tenant sending 600,000 "transactional" messages at once would queue ahead of
every other tenant's OTPs there. Each tenant therefore has a share of those lanes: a token
bucket of ``rate_per_s`` messages a second with ``burst`` of headroom, per ingest instance.
What a tenant sends beyond its share is still accepted, still transactional (no marketing
rules, no quiet hours), but travels the campaign lanes (``bulk_lane``), where it waits its turn
with the campaigns instead of in front of everybody's codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass
class PriorityShare:
    """Per-tenant token buckets; ``rates`` overrides ``rate_per_s`` for named tenants (a bank's
    2FA traffic, say). A rate of 0 means no limit."""

    rate_per_s: float
    burst: int
    rates: dict[str, float] = field(default_factory=dict)
    max_tenants: int = 100_000  # idle buckets are dropped past this many (they refill to full anyway)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, tenant: str, count: int, now: float) -> int:
        """How many of ``count`` transactional messages of ``tenant`` go on the priority lanes
        now (the first ones; the rest go on the campaign lanes)."""
        rate = self.rates.get(tenant, self.rate_per_s)
        if rate <= 0 or count <= 0:
            return max(0, count)
        capacity = max(float(self.burst), rate)
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= self.max_tenants:
                self._buckets.clear()
            bucket = self._buckets[tenant] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        admitted = min(count, int(bucket.tokens))
        bucket.tokens -= admitted
        return admitted
