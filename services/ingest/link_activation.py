"""The links lane: short links start answering once their message is submitted.

Consumes ``messages.status.v1`` in its own consumer group (``{prefix}ingest.links``). Of each
batch, the submitted (or ``unknown``: the SMS may be out) marketing messages sent through a real
gateway (``links.activations``) have their links activated in one statement. A suppressed,
refused or failed-before-submission message never gets there, so its links never answer.
At-least-once is harmless: an active link keeps its first activation time.
"""

from __future__ import annotations

import logging

from services.ingest import metrics
from services.ingest.links import activations
from services.ingest.links_repo import LinksRepository
from shared.contracts import MessageStatusEvent
from shared.kafka import Incoming, Outgoing

log = logging.getLogger("herald.ingest.links")


class LinkActivationHandler:
    def __init__(self, links: LinksRepository) -> None:
        self.links = links

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        submitted = activations(
            (e.payload.message_id, e.payload.status, e.payload.gateway, e.payload.type, e.occurred_at)
            for e in (item.event for item in batch) if isinstance(e, MessageStatusEvent)
        )
        if submitted:
            activated = await self.links.activate(submitted)
            if activated:
                metrics.LINKS_ACTIVATED.inc(activated)
        return []
