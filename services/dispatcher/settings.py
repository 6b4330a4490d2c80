from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from shared.settings import ConsumerSettings


class GatewayConfig(BaseModel):
    """One gateway connection. Given as JSON in ``HERALD_GATEWAYS``."""

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["herald-http"] = Field("herald-http", description="Adapter: herald-http (generic JSON)")
    url: str = Field(description="Base URL of the gateway's API")
    api_token: SecretStr = SecretStr("")
    rate_per_s: float = Field(200.0, gt=0, description="Segments per second this gateway allows")
    burst: float | None = Field(None, gt=0, description="Token bucket size; defaults to one second of rate")
    batch_size: int = Field(100, ge=1, le=1000, description="Messages per HTTP call when the gateway takes batches")
    concurrency: int = Field(8, ge=1, le=256, description="HTTP calls in flight at once")
    timeout_s: float = Field(10.0, gt=0)


def _default_gateways() -> list[GatewayConfig]:
    return [GatewayConfig(name="sim", url="http://127.0.0.1:38090", api_token=SecretStr("sim-token"))]


class DispatcherSettings(ConsumerSettings):
    http_port: int = Field(38082, description="Port of the dispatcher HTTP server")
    consumer_max_records: int = Field(500, ge=1, description="Most messages handled in one batch")
    gateways: list[GatewayConfig] = Field(default_factory=_default_gateways, description="Gateways, JSON list")
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="Owner name on claims"
    )
    claim_lease_s: float = Field(300.0, gt=0, description="How long a claim stays with the instance that took it")
    retry_max_attempts: int = Field(8, ge=1, description="Submission attempts before a message fails")
    retry_base_s: float = Field(0.5, gt=0, description="First retry delay (doubles, with jitter)")
    retry_cap_s: float = Field(20.0, gt=0, description="Longest delay between retries")
    retry_budget_s: float = Field(120.0, gt=0, description="Longest time one batch keeps retrying")
    reconcile_interval_s: float = Field(5.0, gt=0, description="How often stale claims are resolved")
