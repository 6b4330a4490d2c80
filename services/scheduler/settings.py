from __future__ import annotations

from pydantic import Field

from shared.settings import ConsumerSettings


class SchedulerSettings(ConsumerSettings):
    http_port: int = Field(38081, description="Port of the scheduler HTTP server")
