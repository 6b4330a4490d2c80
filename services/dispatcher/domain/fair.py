"""Tenants take turns within a batch of the campaign lane (pure logic, no I/O).

A batch the dispatcher fetches from the bulk lane is sent through the gateways' throttle in
order; when the batch holds several tenants' messages, a tenant whose messages happen to come
first would take the gateway's capacity until the batch ends. ``interleave`` orders the batch
round-robin by tenant, weighted (a tenant of weight 3 sends three for every one of weight 1),
keeping each tenant's own order. Across batches, fairness comes from the launcher's bound on
each tenant's campaign messages in flight (services/ingest/campaigns/pacing.py): Kafka
partitions are first in, first out, so what decides who waits is how much each tenant has
queued there, not the order within one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def interleave(items: Iterable[T], tenant_of: Callable[[T], str], weights: Mapping[str, int] | None = None) -> list[T]:
    """``items`` in weighted round-robin order of their tenants (first seen first), each tenant's
    items in their original order. A weight below 1 counts as 1."""
    queues: dict[str, list[T]] = {}
    for item in items:
        queues.setdefault(tenant_of(item), []).append(item)
    if len(queues) <= 1:
        return [item for queue in queues.values() for item in queue]
    weights = weights or {}
    heads = {tenant: 0 for tenant in queues}
    out: list[T] = []
    while heads:
        for tenant in list(heads):
            queue, at = queues[tenant], heads[tenant]
            take = max(1, int(weights.get(tenant, 1)))
            out.extend(queue[at:at + take])
            at += take
            if at >= len(queue):
                del heads[tenant]
            else:
                heads[tenant] = at
    return out
