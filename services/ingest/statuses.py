"""ingest's one consumer of ``messages.status.v1``: the ``links`` lane (consumer group
``{prefix}ingest.links``). Each batch is handled by every part in turn: short links of submitted
marketing messages start answering (link_activation.py), and the campaign lanes' mark moves for
the launcher's pacing (campaigns/progress.py). Each part is idempotent, so a batch redelivered
after one part failed is harmless to the other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from shared.kafka import Incoming, Outgoing

Part = Callable[[list[Incoming]], Awaitable[list[Outgoing]]]


class StatusesHandler:
    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = tuple(parts)

    async def __call__(self, batch: list[Incoming]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for part in self.parts:
            out += await part(batch)
        return out
