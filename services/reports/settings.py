from __future__ import annotations

from pydantic import Field

from shared.settings import ConsumerSettings


class ReportsSettings(ConsumerSettings):
    http_port: int = Field(38083, description="Port of the reports HTTP server")
    consumer_max_records: int = Field(2000, ge=1, description="Most events handled in one batch")
    pending_sweep_interval_s: float = Field(2.0, gt=0, description="How often parked receipts are matched again")
