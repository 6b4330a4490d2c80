"""ingest's retention job (docs/operations.md, "Retention"): messages received and idempotency
keys. Each deletion goes in bounded batches (shared/retention_store.py)."""

from __future__ import annotations

from datetime import timedelta

from services.ingest.settings import IngestSettings
from shared.retention_store import Run, Task


def tasks(settings: IngestSettings) -> list[Task]:
    async def inbound(run: Run) -> None:
        # Replies and keywords received: the tenant's own age (kind inbound) or the default.
        await run.expire_by_age("inbound_messages", "received_at",
                                await run.cutoffs("inbound", settings.retention_inbound_days))

    async def idempotency(run: Run) -> None:
        # A key answers with its message for the window, then the same key makes a new message.
        await run.expire_older_than("idempotency_keys", "created_at",
                                    run.now - timedelta(days=settings.idempotency_window_days))

    return [inbound, idempotency]
