"""Segment previews are the expensive reads of the API (a count over a tenant's contacts):
at most ``concurrency`` run at once in a process, and at most ``per_tenant`` of one tenant.
A preview over either cap is refused at once (429 with Retry-After) rather than queued, so a
few slow previews cannot hold every pool connection or make other requests wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Counter

from shared.api import ApiError

REFUSED = Counter("herald_segment_previews_refused_total", "Segment previews refused (429), by the cap that was full", ["limit"])
RETRY_AFTER_S = 2


class PreviewGate:
    def __init__(self, concurrency: int, per_tenant: int) -> None:
        self.concurrency = concurrency
        self.per_tenant = per_tenant
        self.running = 0
        self.by_tenant: dict[str, int] = {}

    @asynccontextmanager
    async def slot(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold a slot for one preview of ``tenant_id``, or raise 429 ``too_many_previews``."""
        mine = self.by_tenant.get(tenant_id, 0)
        if mine >= self.per_tenant:
            REFUSED.labels("tenant").inc()
            raise _refused(f"this tenant already has {mine} segment previews running; retry in {RETRY_AFTER_S}s")
        if self.running >= self.concurrency:
            REFUSED.labels("instance").inc()
            raise _refused(f"too many segment previews are running; retry in {RETRY_AFTER_S}s")
        self.running += 1
        self.by_tenant[tenant_id] = mine + 1
        try:
            yield
        finally:
            self.running -= 1
            left = self.by_tenant[tenant_id] - 1
            if left:
                self.by_tenant[tenant_id] = left
            else:
                del self.by_tenant[tenant_id]


def _refused(message: str) -> ApiError:
    return ApiError(429, "too_many_previews", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def gate_for(app: Any, concurrency: int, per_tenant: int) -> PreviewGate:
    """The app's one gate (shared by the audience and campaign routers)."""
    gate = getattr(app.state, "preview_gate", None)
    if gate is None:
        gate = app.state.preview_gate = PreviewGate(concurrency, per_tenant)
    return gate
