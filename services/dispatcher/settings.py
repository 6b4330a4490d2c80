from __future__ import annotations

import os
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from services.dispatcher.gateways.config import GatewayConfig, HeraldHttpConfig
from shared.settings import ConsumerSettings, RetentionSettings


def _default_gateways() -> list[GatewayConfig]:
    return [HeraldHttpConfig(name="sim", url="http://127.0.0.1:28090", api_token=SecretStr("sim-token"))]


class RouteConfig(BaseModel):
    """A routing rule; the first rule that matches a message picks its gateway list."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    gateways: list[str] = Field(min_length=1, description="Gateway names in order of preference")
    countries: list[str] = Field(default_factory=list, description="ISO 3166 alpha-2 codes; empty matches any")
    prefixes: list[str] = Field(default_factory=list, description="E.164 prefixes, e.g. +3467; empty matches any")
    types: list[Literal["transactional", "marketing"]] = Field(default_factory=list, description="Empty matches any")


class DispatcherSettings(ConsumerSettings, RetentionSettings):
    ops_port: int = Field(28182, ge=1, le=65535, description="Port of /healthz, /readyz and /metrics: the dispatcher has no API")
    consumer_max_records: int = Field(500, ge=1, description="Most messages handled in one batch")
    gateways: list[GatewayConfig] = Field(default_factory=_default_gateways, description="Gateways, JSON list")
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Instance name on claims; each process start adds a random token to it, so a restart under "
        "the same name never holds (or renews) the claims of the process before it",
    )
    claim_lease_s: float = Field(
        30.0, ge=3, description="A claim's lease; renewed every third of it while its instance lives"
    )
    retry_max_attempts: int = Field(8, ge=1, description="Submission attempts before a message fails")
    retry_base_s: float = Field(0.5, gt=0, description="First retry delay (doubles, with jitter)")
    retry_cap_s: float = Field(20.0, gt=0, description="Longest delay between retries")
    retry_budget_s: float = Field(120.0, gt=0, description="Longest time one batch keeps retrying")
    reconcile_interval_s: float = Field(
        2.0, gt=0, description="How often stale claims are resolved (and own leases renewed)"
    )
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Routing rules, JSON list; unmatched messages use all gateways in order"
    )
    failover_error_rate: float = Field(0.5, gt=0, le=1, description="Share of bad submissions that opens a gateway")
    failover_min_samples: int = Field(10, ge=1, description="Submissions needed in the window before judging")
    failover_window_s: float = Field(60.0, gt=0, description="How far back submissions are judged")
    failover_slow_s: float = Field(10.0, gt=0, description="An answer slower than this counts as bad")
    failover_cooldown_s: float = Field(30.0, gt=0, description="How long an open gateway is skipped before a retry")
    throttle_backend: Literal["postgres", "local"] = Field(
        "postgres", description="postgres: limits shared by all instances; local: per process"
    )
    parking_max_age_transactional_s: float = Field(
        6 * 3600.0, ge=0,
        description="How long a transactional message without a validity waits (parked) for a refusing gateway,"
        " counted from its release; 0: never park (it fails when the retry budget ends)",
    )
    parking_max_age_marketing_s: float = Field(
        2 * 3600.0, ge=0, description="The same for marketing messages"
    )
    parking_tenant_max_age_s: dict[str, float] | None = Field(
        None, description="Per-tenant maximum wait while parked (any type, instead of the two above), JSON map tenant -> seconds"
    )
    parking_interval_s: float = Field(5.0, gt=0, description="How often parked messages due for a resend are looked at")
    parking_retry_base_s: float = Field(15.0, gt=0, description="First wait before a parked message is resent (doubles, with jitter)")
    parking_retry_cap_s: float = Field(120.0, gt=0, description="Longest wait between resends of a parked message")
    parking_batch_size: int = Field(500, ge=1, description="Parked messages taken for a resend at once")
    bulk_tenant_weights: dict[str, int] = Field(
        default_factory=dict,
        description="Weights of tenants within a batch of the campaign lane (default 1 each): tenants take turns at the "
        "gateway, a tenant of weight 3 sending three messages for every one of weight 1 (docs/operations.md, fair share)",
    )
    bulk_consumer_group: str | None = Field(
        None, description="Consumer group of the bulk lane; default: the priority group + '.bulk'"
    )

    retention_claims_days: float = Field(
        7.0, ge=4, le=3650,
        description="Finished claims (submitted, failed, expired) are deleted this many days after they finished (at "
        "least 4: longer than the outbound topics keep a record, so a redelivered message still finds its claim)",
    )
    retention_body_grace_h: float = Field(
        24.0, ge=0, le=24 * 365,
        description="A finished claim's text is redacted this many hours after it finished (a secret message's at once)",
    )

    _ownership: Any = PrivateAttr(default=None)  # handlers.Ownership of this process, made on first use

    @model_validator(mode="after")
    def _gateways_consistent(self) -> DispatcherSettings:
        names = [g.name for g in self.gateways]
        if not names:
            raise ValueError("at least one gateway is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"gateway names must be unique: {names}")
        for route in self.routes:
            unknown = set(route.gateways) - set(names)
            if unknown:
                raise ValueError(f"route {route.name!r} names unknown gateways {sorted(unknown)}")
        return self
