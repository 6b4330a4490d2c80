from __future__ import annotations

from pydantic import Field

from shared.settings import ConsumerSettings, ErasureSettings


class SchedulerSettings(ConsumerSettings, ErasureSettings):
    timer_interval_s: float = Field(0.5, gt=0, description="How often held messages are checked for due ones")
    timer_batch: int = Field(500, ge=1, description="Most held messages released in one transaction")
    ops_port: int = Field(28181, ge=1, le=65535, description="Port of /healthz, /readyz and /metrics: the scheduler has no API")
    journey_timer_interval_s: float = Field(0.5, gt=0, description="How often journey runs are checked for due steps")
    journey_timer_batch: int = Field(200, ge=1, description="Most journey runs advanced in one transaction")
    rate_limit_messages_per_minute: int = Field(
        600_000, ge=1, description="Default messages per minute per API key, as ingest's: a journey's sends stay within "
        "the message limit of the key that wrote it, on the scheduler's own counters (docs/journeys.md)"
    )
