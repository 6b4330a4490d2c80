"""What ingest's Kafka consumers share: a batch grouped by tenant (unknown or disabled
tenants rejected with a reason) and the rejection built from the record itself."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal

from services.ingest import metrics
from services.ingest.repository import IngestRepository
from shared.geo import GeoPolicy
from shared.kafka import Incoming, Outgoing, rejection
from shared.kafka_signing import KEY_HEADER, SIGNATURE_HEADER, header, valid


def reject(item: Incoming, code: str, reason: str, details: Sequence[Mapping[str, object]] | None = None) -> Outgoing:
    """The rejected-topic event for ``item``: its original bytes, where it came from and why."""
    r = item.record
    return rejection(
        r.topic, code, reason, r.value,
        tenant=item.event.tenant,
        errors=[{k: str(v) for k, v in d.items()} for d in details or []],
        key=r.key, partition=r.partition, offset=r.offset, trace_id=item.event.trace_id,
    )


SignatureMode = Literal["required", "optional"]


def check_signature(item: Incoming, keys: Mapping[str, tuple[str, str]], mode: SignatureMode) -> tuple[str, str] | None:
    """Why ``item`` may not speak for the tenant it names (code, reason), or None.

    ``keys``: key id -> (tenant, secret) of the live Kafka input keys the batch names."""
    record = item.record
    key_id = header(record.headers, KEY_HEADER)
    signature = header(record.headers, SIGNATURE_HEADER)
    if key_id is None and signature is None:
        if mode == "optional":
            return None
        return "unsigned_event", (f"no {KEY_HEADER} and {SIGNATURE_HEADER} headers: sign events with the tenant's "
                                  "Kafka input key (herald admin kafka-key create)")
    if key_id is None or signature is None:
        return "bad_signature", f"both {KEY_HEADER} and {SIGNATURE_HEADER} are needed"
    found = keys.get(key_id)
    if found is None:
        return "unknown_signing_key", f"no live Kafka input key {key_id!r}"
    tenant, secret = found
    if not valid(secret, record.value or b"", signature):
        return "bad_signature", "the signature does not match the record's value under this key"
    if tenant != item.event.tenant:
        return "tenant_mismatch", f"key {key_id!r} signs for another tenant than {item.event.tenant!r}"
    return None


async def by_known_tenant(
    batch: Sequence[Incoming], repository: IngestRepository, policies: dict[str, GeoPolicy] | None = None,
    signatures: SignatureMode = "required",
) -> tuple[dict[str, list[Incoming]], list[Outgoing]]:
    """The batch grouped by tenant (in order), and rejections for events not signed by a key of
    the tenant they name (shared/kafka_signing.py) and for tenants that do not exist or are
    disabled: two queries for the whole batch. ``policies``, when given, receives each known
    tenant's geo permissions (read by the same query)."""
    key_ids = {k for i in batch if (k := header(i.record.headers, KEY_HEADER)) is not None}
    keys = await repository.kafka_input_keys(key_ids) if key_ids else {}
    rejected: list[Outgoing] = []
    by_tenant: dict[str, list[Incoming]] = defaultdict(list)
    for item in batch:
        refused = check_signature(item, keys, signatures)
        if refused is not None:
            metrics.KAFKA_INPUT_REFUSED.labels(refused[0]).inc()
            rejected.append(reject(item, *refused))
            continue
        by_tenant[item.event.tenant].append(item)
    known = await repository.active_tenants(set(by_tenant)) if by_tenant else {}
    if policies is not None:
        policies.update(known)
    rejected += [
        reject(i, "unknown_tenant", f"tenant {tenant!r} does not exist or is disabled")
        for tenant, items in by_tenant.items() if tenant not in known for i in items
    ]
    return {t: items for t, items in by_tenant.items() if t in known}, rejected
