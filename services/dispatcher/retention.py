"""The dispatcher's retention job (docs/operations.md, "Retention"): claims own the text of
every message they sent (``dispatch_claims.outbound``), kept only to resolve a stale claim.

Once a claim is finished (submitted, failed, expired) its text is redacted after a grace
period, a secret message's at once (in the statement that finishes it, repository._FINISH; the
job catches any left). Finished claims are deleted after ``retention_claims_days``, which
outlasts the outbound topics' retention, so a redelivered message still finds its claim.
"""

from __future__ import annotations

from datetime import timedelta

from services.dispatcher.settings import DispatcherSettings
from shared.retention_store import Run, Task

_FINAL = "state IN ('submitted', 'failed', 'expired')"
# What a redacted outbound keeps: everything but the text (number and metadata go with the row).
REDACT_BODY = """outbound || '{"body": "", "body_redacted": true}'::jsonb"""

_REDACT = f"""
WITH done AS (
    UPDATE dispatch_claims SET outbound = {REDACT_BODY}
    WHERE message_id IN (
        SELECT message_id FROM dispatch_claims
        WHERE {_FINAL} AND NOT outbound ? 'body_redacted' AND updated_at < $2 AND EXTRA
        LIMIT $1)
    RETURNING 1)
SELECT count(*) FROM done"""


def tasks(settings: DispatcherSettings) -> list[Task]:
    async def redact(run: Run) -> None:
        await run.batches("dispatch_claims.body", _REDACT.replace("EXTRA", "outbound ->> 'secret' = 'true'"), run.now)
        await run.batches("dispatch_claims.body", _REDACT.replace("EXTRA", "TRUE"),
                          run.now - timedelta(hours=settings.retention_body_grace_h))

    async def claims(run: Run) -> None:
        await run.expire_older_than("dispatch_claims", "updated_at",
                                    run.now - timedelta(days=settings.retention_claims_days), _FINAL)

    return [redact, claims]
