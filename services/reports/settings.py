from __future__ import annotations

from pydantic import Field

from shared.settings import ConsumerSettings


class ReportsSettings(ConsumerSettings):
    http_port: int = 38083
    consumer_max_records: int = 2000
    pending_sweep_interval_s: float = Field(2.0, gt=0, description="How often parked receipts are matched again")
