"""What ingest's Kafka consumers share: a batch grouped by tenant (unknown or disabled
tenants rejected with a reason) and the rejection built from the record itself."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from services.ingest.repository import IngestRepository
from shared.geo import GeoPolicy
from shared.kafka import Incoming, Outgoing, rejection


def reject(item: Incoming, code: str, reason: str, details: Sequence[Mapping[str, object]] | None = None) -> Outgoing:
    """The rejected-topic event for ``item``: its original bytes, where it came from and why."""
    r = item.record
    return rejection(
        r.topic, code, reason, r.value,
        tenant=item.event.tenant,
        errors=[{k: str(v) for k, v in d.items()} for d in details or []],
        key=r.key, partition=r.partition, offset=r.offset, trace_id=item.event.trace_id,
    )


async def by_known_tenant(
    batch: Sequence[Incoming], repository: IngestRepository, policies: dict[str, GeoPolicy] | None = None
) -> tuple[dict[str, list[Incoming]], list[Outgoing]]:
    """The batch grouped by tenant (in order), and rejections for tenants that do not exist
    or are disabled: one query for the whole batch. ``policies``, when given, receives each
    known tenant's geo permissions (read by the same query)."""
    by_tenant: dict[str, list[Incoming]] = defaultdict(list)
    for item in batch:
        by_tenant[item.event.tenant].append(item)
    known = await repository.active_tenants(set(by_tenant))
    if policies is not None:
        policies.update(known)
    rejected = [
        reject(i, "unknown_tenant", f"tenant {tenant!r} does not exist or is disabled")
        for tenant, items in by_tenant.items() if tenant not in known for i in items
    ]
    return {t: items for t, items in by_tenant.items() if t in known}, rejected
