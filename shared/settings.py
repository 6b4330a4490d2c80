"""Typed settings read from environment variables (prefix ``HERALD_``).

Every service builds its own settings class from these parts, so one variable means
the same thing everywhere. Secrets are ``SecretStr`` and never appear in ``repr`` or logs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class HeraldSettings(BaseSettings):
    """Base for all settings classes: ``HERALD_`` prefix, ``__`` for nesting, unknown vars ignored."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", env_nested_delimiter="__", extra="ignore")


class KafkaSettings(HeraldSettings):
    """Connection to the Kafka cluster, shared by every service."""

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Comma-separated bootstrap servers")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (PLAIN when SASL is on and this is unset)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for SSL / SASL_SSL")
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS")
    kafka_ssl_keyfile: str | None = Field(None, description="Client key for mutual TLS")
    kafka_linger_ms: int = Field(2, ge=0, le=1000, description="Producer linger: latency traded for bigger batches")
    topic_prefix: str = Field("herald.", description="Prefix of every topic name (one cluster, many environments)")
    topic_partitions: int = Field(6, ge=1, description="Partitions for topics created by `herald migrate`")
    topic_replication: int = Field(1, ge=1, description="Replication factor for topics created by `herald migrate`")


class DatabaseSettings(HeraldSettings):
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:15432/herald"), description="PostgreSQL DSN"
    )
    db_pool_min: int = Field(1, ge=0, description="Connections opened at start")
    db_pool_max: int = Field(10, ge=1, description="Connections per process (the DB connection budget)")


class ServiceSettings(KafkaSettings, DatabaseSettings):
    """What every Herald service needs: Kafka, PostgreSQL, an HTTP port, logging."""

    http_host: str = Field("127.0.0.1", description="Address the HTTP server binds (0.0.0.0 in containers)")
    http_port: int = Field(
        28080, ge=1, le=65535,
        description="Port of the public API (ingest, reports); a service without an API (scheduler, dispatcher) "
        "does not open it",
    )
    ops_port: int = Field(
        28180, ge=1, le=65535,
        description="Port of /healthz, /readyz and /metrics, never the API's: probes and Prometheus use it, and it "
        "stays off the public network (metrics carry every tenant's volumes and revenue)",
    )
    api_docs: bool = Field(
        False,
        description="Serve /docs, /redoc and /openapi.json on the API port: on in the local stack (`herald up`, "
        "tests); off by default, so production does not map its API for anyone",
    )
    http_max_concurrency: int = Field(
        1000, ge=1, description="Connections and requests handled at once; above it new ones get 503 at once"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request body may take to arrive (408 body_timeout after it)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    log_format: Literal["json", "text"] = Field("json", description="json (one object per line) or text")
    shutdown_timeout_s: float = Field(15.0, gt=0, description="Bound on graceful shutdown")
    gc_gen0_threshold: int = Field(
        20_000, ge=700,
        description="Allocations between young-generation collections (CPython's default is 700); with the "
        "start-up heap frozen out of the collector, this keeps GC pauses short and rare (shared/loopwatch.py)",
    )

    @model_validator(mode="after")
    def _ops_port_apart(self) -> ServiceSettings:
        if self.ops_port == self.http_port:
            raise ValueError(f"HERALD_OPS_PORT must differ from HERALD_HTTP_PORT ({self.http_port})")
        return self


class ConsumerSettings(ServiceSettings):
    """A service that consumes Kafka in batches."""

    consumer_group: str | None = Field(
        None, description="Consumer group id; default: topic prefix + service name (e.g. herald.dispatcher)"
    )
    consumer_max_records: int = Field(1000, ge=1, description="Most records handled in one batch")
    consumer_poll_ms: int = Field(200, ge=1, description="How long one poll waits for records")
    consumer_max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="A consumer silent this long leaves its group"
    )
    consumer_session_timeout_ms: int = Field(
        10_000, ge=6_000, description="A consumer without heartbeats this long is dropped"
    )
    consumer_retry_attempts: int = Field(
        5,
        ge=1,
        description="Attempts of a batch that fails with a transient error (deadlock, lock or statement timeout, or "
        "a connection error while the database answers its probe) before it is split to isolate the record that "
        "fails; that record goes to the rejected topic (handler_retries_exhausted). An outage is waited out without bound",
    )
    consumer_retry_backoff_s: float = Field(0.2, gt=0, description="First delay before a failed batch is retried; doubles")
    consumer_retry_backoff_max_s: float = Field(10.0, gt=0, description="Longest delay between two retries of a batch")
    lanes: list[str] | None = Field(
        None,
        description="Run only these consumer lanes of the service (main, the transactional lane, plus bulk, journeys, "
        "commands, results, replies, erasures, subject-access, subject-access-parts, links, campaign-winners or "
        "journey-sends as the service has them); unset: every lane; [] none (ingest only: an instance that serves HTTP and consumes nothing). Lets priority and campaign "
        "work run in processes (Deployments) of their own, e.g. [\"main\"] and [\"bulk\"] (docs/operations.md)",
    )
    subject_access_part_bytes: int = Field(
        256 * 1024, ge=16 * 1024, le=900 * 1024,
        description="Largest chunk, in bytes of JSON, of a service's part of a subject-access export: a bigger part is "
        "published in several events, each under the broker's message size limit (about 1 MB by default; docs/data-map.md)",
    )
    nice: int = Field(
        0, ge=0, le=19,
        description="Lower this process's CPU priority by this much at start (10 for campaign-lane instances: on "
        "shared cores the kernel then runs transactional work first)",
    )


class WebhookEgressSettings(HeraldSettings):
    """Where webhooks may be posted (shared/egress.py, docs/webhooks.md): checked when a URL is
    submitted (ingest, the admin command) and again when it is posted (reports)."""

    webhook_allow_private: bool = Field(
        False, description="Post webhooks to any address, private ones included (local development only; never "
        "in production: it lets tenants reach the internal network)",
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list, description="Addresses (CIDRs, JSON list) webhooks may reach although not public, "
        "e.g. [\"127.0.0.1/32\"] for a local receiver; everything else must be publicly routable",
    )
    webhook_require_https: bool = Field(True, description="Only https webhook URLs are accepted and posted")
    webhook_proxy: str | None = Field(
        None, description="Post webhooks through this HTTP proxy (egress filtering done by the proxy; Herald still "
        "checks URLs as written, but no longer the addresses a name resolves to)",
    )

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError: a clear settings error
        return value


class ErasureSettings(HeraldSettings):
    """The key of the hash that keeps erased numbers suppressed (shared/erasure.py,
    docs/data-map.md): ingest writes the hashes, the scheduler checks numbers against them."""

    erasure_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="HMAC keys of erased numbers' hashes by version, as JSON {\"k1\": \"secret\"} (versions: 1-16 "
        "lowercase letters or digits; secrets of 32+ characters, kept outside the database). None by default: "
        "erasure answers 503 erasure_key_missing until one is set; a bad one stops the service at start",
    )
    erasure_key_current: str | None = Field(
        None, description="The version of HERALD_ERASURE_KEYS new hashes use (required with several keys; rotation: "
        "add a key, make it current, keep the old one while hashes under it are kept)",
    )
    erasure_match_legacy: bool = Field(
        True, description="Also match the unkeyed sha256 hashes written before keyed hashes (they cannot be re-keyed)",
    )

    def erasure_key_problems(self) -> list[str]:
        from shared.erasure import key_problems

        return key_problems({v: s.get_secret_value() for v, s in self.erasure_keys.items()}, self.erasure_key_current)

    def erasure_keyring(self):  # -> shared.erasure.ErasureKeys
        from shared.erasure import build_keys

        return build_keys({v: s.get_secret_value() for v, s in self.erasure_keys.items()}, self.erasure_key_current,
                          self.erasure_match_legacy)


class RetentionSettings(HeraldSettings):
    """The retention job of a service (shared/retention_store.py, docs/operations.md "Retention"):
    every instance may run it, one at a time, once per interval."""

    retention_enabled: bool = Field(
        True, description="Take part in the retention job in this instance (one instance runs it per interval)"
    )
    retention_interval_s: float = Field(
        3600.0, ge=1, description="How often the retention job runs (once per interval across the service's instances)"
    )
    retention_batch_rows: int = Field(
        5000, ge=1, le=100_000, description="Rows deleted or redacted per statement (each its own short transaction)"
    )
    retention_run_budget_s: float = Field(
        900.0, gt=0,
        description="Longest one run may take; past it the run stops and goes on at once in a new run, and its "
        "last success is not updated (herald_retention_last_success_timestamp_seconds falls behind)",
    )
