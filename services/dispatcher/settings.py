from __future__ import annotations

import os
import socket
from pydantic import Field, SecretStr

from services.dispatcher.gateways.config import GatewayConfig, HeraldHttpConfig
from shared.settings import ConsumerSettings


def _default_gateways() -> list[GatewayConfig]:
    return [HeraldHttpConfig(name="sim", url="http://127.0.0.1:38090", api_token=SecretStr("sim-token"))]


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
