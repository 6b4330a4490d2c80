"""Settings of the gateway simulator, read from ``HERALD_SIM_*`` environment variables."""

from __future__ import annotations

import ipaddress
import math
import secrets
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any address in 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SimulatorSettings(BaseSettings):
    """Every knob of the simulator. Secrets are ``SecretStr`` so they never show in a repr or a log."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SIM_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=28090, ge=0, le=65535)
    # The control port serves /control and /stats. It has no authentication, so it only ever
    # binds to a loopback address, and it stays open in "refuse" mode so the API can come back.
    control_host: str = "127.0.0.1"
    control_port: int = Field(default=28091, ge=0, le=65535)

    api_token: SecretStr = SecretStr("sim-token")
    receipt_url: str = "http://127.0.0.1:28080/v1/receipts/sim"
    # No published default: a fresh random secret per process unless one is given (ingest must
    # be given the same one in HERALD_RECEIPT_SECRETS; `herald up` and the tests do that).
    receipt_secret: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_urlsafe(24)))

    delivered_rate: float = Field(default=0.90, ge=0.0, le=1.0)
    undelivered_rate: float = Field(default=0.07, ge=0.0, le=1.0)
    failed_rate: float = Field(default=0.03, ge=0.0, le=1.0)

    receipt_delay_min_ms: int = Field(default=50, ge=0)
    receipt_delay_max_ms: int = Field(default=500, ge=0)
    receipt_batch_max: int = Field(default=500, ge=1, le=100_000)
    # Once a batch has been posted, wait at least this long before the next one, so receipts
    # that fall due close together travel together instead of one POST each.
    receipt_linger_ms: int = Field(default=20, ge=0, le=10_000)
    receipt_post_timeout_s: float = Field(default=10.0, gt=0)

    # Twilio face (services/simulator/twilio.py): Twilio's Messages API on the API port, basic auth
    # with this account, status callbacks signed with this token (X-Twilio-Signature).
    twilio_account_sid: str = Field(default="AC" + "0" * 32, pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token: SecretStr = SecretStr("sim-twilio-token")
    twilio_callback_concurrency: int = Field(default=16, ge=1, le=1024)
    twilio_callback_attempts: int = Field(default=5, ge=1, le=100)

    # SMPP face (services/simulator/smpp.py, docs/smpp.md): an SMSC on this port (0: off) that checks
    # binds against this account and sends receipts and MO as deliver_sm to a bound receiver.
    smpp_port: int = Field(default=28095, ge=0, le=65535)
    smpp_system_id: str = Field(default="herald", min_length=1, max_length=15)
    smpp_password: SecretStr = SecretStr("sim-pass")
    smpp_deliver_window: int = Field(default=50, ge=1, le=10_000)  # deliver_sm awaiting their resp at once
    smpp_part_outcomes: Literal["same", "independent"] = "same"  # receipts of a message's parts
    smpp_assembly_timeout_ms: int = Field(default=30_000, ge=0)  # an incomplete message is recorded after this
    smpp_redeliver_ms: int = Field(default=1000, ge=0)  # a NAKed or unanswered deliver_sm goes again after this

    seed: int | None = None
    # Like every Herald service, HERALD_LOG_LEVEL / HERALD_LOG_FORMAT apply; the HERALD_SIM_ ones win.
    log_level: str = Field(
        default="INFO", validation_alias=AliasChoices("HERALD_SIM_LOG_LEVEL", "HERALD_LOG_LEVEL", "log_level")
    )
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias=AliasChoices("HERALD_SIM_LOG_FORMAT", "HERALD_LOG_FORMAT", "log_format")
    )

    @field_validator("control_host")
    @classmethod
    def _control_on_loopback(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError("control_host must be a loopback address (the control port has no auth)")
        return value

    @field_validator("receipt_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("receipt_url must be an http:// or https:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SimulatorSettings:
        total = self.delivered_rate + self.undelivered_rate + self.failed_rate
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"delivered_rate + undelivered_rate + failed_rate must be 1, got {total:.6f}")
        if self.receipt_delay_min_ms > self.receipt_delay_max_ms:
            raise ValueError("receipt_delay_min_ms must not exceed receipt_delay_max_ms")
        if self.port != 0 and self.port == self.control_port:
            raise ValueError("port and control_port must differ")
        return self

    def public_dict(self) -> dict[str, object]:
        """The settings without secrets, for the startup log line."""
        return self.model_dump(exclude={"api_token", "receipt_secret", "twilio_auth_token", "smpp_password"})
