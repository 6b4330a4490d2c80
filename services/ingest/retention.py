"""ingest's retention job (docs/operations.md, "Retention"): messages received, idempotency
keys, and subject-access exports past their time. Each deletion goes in bounded batches
(shared/retention_store.py)."""

from __future__ import annotations

from datetime import timedelta

from services.ingest.audience import subject_access
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

    async def exports(run: Run) -> None:
        # A subject-access export keeps the number and its document HERALD_SUBJECT_ACCESS_EXPORT_DAYS;
        # then both go and the row stays as the audit (also done when an export is asked or read).
        run.check_budget()
        run.add("subject_access_exports", await subject_access.expire(run.pool, run.now))

    return [inbound, idempotency, exports]
