from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from shared.geo import DEFAULT_HIGH_COST, GeoDefault, GeoRules, country_codes
from shared.phones import SMS_CAPABLE
from shared.settings import ConsumerSettings, ErasureSettings, RetentionSettings, WebhookEgressSettings


class IngestSettings(ConsumerSettings, WebhookEgressSettings, ErasureSettings, RetentionSettings):
    http_port: int = Field(28080, ge=1, le=65535, description="Port of the ingest API (public)")
    ops_port: int = Field(28180, ge=1, le=65535, description="Port of /healthz, /readyz and /metrics (not public)")
    kafka_input_signatures: Literal["required", "optional"] = Field(
        "required",
        description="Events on the triggers and contact-events topics must be signed by a Kafka input key of the "
        "tenant they name (required), or may be unsigned (optional: only where every producer is trusted, e.g. a "
        "single-tenant install); a signed event is always checked (docs/topics.md, signed input)",
    )
    priority_share_per_s: float = Field(
        200.0, ge=0,
        description="Each tenant's share of the transactional lanes, in messages a second per ingest instance; what a "
        "tenant sends beyond it (and its burst) travels the campaign lanes, so one tenant's flood never queues ahead "
        "of the others' codes (docs/operations.md, fair share). 0: no limit",
    )
    priority_share_burst: int = Field(
        5000, ge=1, description="Transactional messages a tenant may send at once above its share's rate"
    )
    priority_share_tenants: dict[str, float] = Field(
        default_factory=dict,
        description="Per-tenant shares that differ from the default, e.g. {\"bank\": 1000} (0: no limit for it)",
    )
    subject_access_export_days: int = Field(
        7, ge=1, le=90,
        description="Days a subject-access export's document is kept (POST /v1/subject-access); then its rows go and only "
        "the audit (who asked, when) stays (docs/data-map.md)",
    )
    campaign_page_size: int = Field(1000, ge=10, le=10_000, description="Contacts a campaign launcher reads, renders and publishes per page")
    campaign_lease_s: float = Field(30.0, ge=5, description="How long a launcher keeps a campaign without progress before another instance takes it over")
    campaign_launcher: bool = Field(True, description="Run a campaign launcher in this ingest instance")
    campaign_page_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Statement timeout of each page query of a campaign's audience (a failed attempt past it)"
    )
    campaign_slice_s: float = Field(
        10.0, ge=0,
        description="How long a launcher fans out one campaign before it goes back in line, so every tenant's due campaigns get turns",
    )
    campaign_max_attempts: int = Field(
        5, ge=1, le=100, description="Failed attempts in a row after which a campaign ends failed (with the reason)"
    )
    campaign_retry_base_s: float = Field(
        30.0, ge=0, description="Wait after a campaign's first failed attempt; doubled after each further one"
    )
    campaign_retry_max_s: float = Field(1800.0, ge=0, description="Longest wait between a campaign's attempts")
    campaign_tenant_in_flight: int = Field(
        5000, ge=0,
        description="Campaign messages one tenant may have in the lanes at once (published by the launcher, not yet "
        "handled by the dispatcher); the rest of its audience waits in PostgreSQL, so another tenant's campaign never "
        "queues behind a whole audience in Kafka (docs/operations.md, fair share). 0: no bound",
    )
    campaign_tenant_in_flight_tenants: dict[str, int] = Field(
        default_factory=dict,
        description="Per-tenant bounds that differ from the default (their weight), e.g. {\"retailer\": 20000} (0: no bound for it)",
    )
    campaign_in_flight_expiry_s: float = Field(
        120.0, gt=0,
        description="A published page stops counting in flight after this long, so messages that never reach the "
        "dispatcher (suppressed, held) cannot stall a tenant's campaigns",
    )
    campaign_pace_wait_s: float = Field(
        1.0, ge=0, le=60,
        description="How long a launcher waits for a tenant at its bound to have room before its campaign goes back in line",
    )
    segment_preview_concurrency: int = Field(
        4, ge=1, le=64,
        description="Segment previews (POST /v1/segments/preview, GET /v1/campaigns/{id}/audience) running at once per"
        " process; more answer 429 with Retry-After",
    )
    segment_preview_per_tenant: int = Field(
        2, ge=1, le=64, description="Segment previews one tenant may have running at once per process; more answer 429"
    )
    allowed_number_types: list[str] = Field(
        default_factory=lambda: sorted(SMS_CAPABLE),
        description="phonenumbers types accepted as recipients (e.g. add VOIP, UNKNOWN), for the API, the trigger topic "
        "and journeys' sends alike",
    )
    batch_max_messages: int = Field(10_000, ge=1, le=100_000, description="Most messages in one batch request")
    batch_concurrency: int = Field(
        2, ge=1, le=64,
        description="Batch requests (message batches, gateway receipt posts) worked on at once per process; the "
        "others wait their turn, so single requests such as one-time codes are not queued behind them",
    )
    body_max_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body of a route without a limit of its own (413 above it)"
    )
    message_body_max_bytes: int = Field(64 * 1024, ge=1024, description="Largest body of POST /v1/messages")
    batch_body_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024,
        description="Largest body of POST /v1/messages/batch and POST /v1/events/batch (batches are capped in bytes "
        "as well as in count)",
    )
    import_body_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest file of POST /v1/contacts/import (streamed, never held whole)"
    )
    import_body_timeout_s: float = Field(900.0, gt=0, description="Longest a contacts import may take to upload")
    events_batch_max: int = Field(1000, ge=1, le=10_000, description="Most contact events in one POST /v1/events/batch")
    smart_encoding: bool = Field(True, description="Replace typographic characters so texts stay GSM-7")
    geo_default: GeoDefault = Field(
        "all",
        description="Destinations of a tenant with neither country nor allowed_countries (tenants from before geo "
        "permissions): all (as before) or none",
    )
    geo_high_cost_countries: list[str] = Field(
        default_factory=lambda: list(DEFAULT_HIGH_COST),
        description="High-cost destinations (ISO 3166-1 alpha-2), refused unless a tenant's allowed_countries names "
        "them; [] turns the check off",
    )
    receipt_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Per-gateway HMAC secrets for receipt callbacks, as JSON: {\"gateway\": \"secret\"}; none by "
        "default, and a published, placeholder or short (< 16 characters) secret stops ingest at start",
    )
    receipt_tolerance_s: int = Field(300, ge=1, description="Oldest receipt signature timestamp accepted")
    rate_limit_requests_per_minute: int = Field(
        300_000, ge=1,
        description="Default requests per minute per API key (a key may carry its own): 5,000 single sends a second",
    )
    rate_limit_messages_per_minute: int = Field(
        600_000, ge=1, description="Default messages per minute per API key (a key may carry its own)"
    )
    rate_limit_lease: bool = Field(
        True,
        description="Single sends draw on a leased chunk of the key's budget (0.5 % of its limit, at most 100)"
        " instead of a database round trip each; keys with limits under 400 a minute are always counted one by one",
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0,
        description="How long an API key is kept in memory at most; changes drop it at once (LISTEN/NOTIFY). 0: read"
        " the key from the database on every request",
    )
    public_url: str = Field("http://127.0.0.1:28080", description="Where upstream systems reach this API")
    twilio_auth_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Auth token of each Twilio gateway, as JSON {\"gateway\": \"token\"}: checks X-Twilio-Signature on /v1/callbacks/twilio/{gateway}/*",
    )
    link_tracking: bool = Field(
        True, description="Rewrite URLs in marketing messages to tracked short links (a request may opt out)"
    )
    link_domain: str = Field(
        "links.herald.invalid",
        description="Host (and optional path) of short links, https://{domain}/{code}; route it to ingest's"
        " /l/{code}. The default never resolves: set it per deployment",
    )
    link_cache_size: int = Field(100_000, ge=0, description="Links the redirect keeps in memory (LRU)")
    link_cache_ttl_s: float = Field(
        30.0, ge=0, le=3600,
        description="How long the redirect keeps a link in memory: a takedown reaches every instance within it",
    )
    link_takedown_poll_s: float = Field(
        5.0, gt=0, le=300,
        description="How often each instance looks for new link takedowns (they answer 410 at once after it)",
    )
    link_ttl_s: int = Field(
        90 * 86400, ge=60, le=3650 * 86400,
        description="How long a short link lives after its message was accepted (90 days); then it answers 410"
        " link_expired. A tenant's link_ttl_s (herald admin tenant policy --link-ttl) overrides it",
    )
    link_bot_min_delay_s: float = Field(
        1.0, ge=0, description="A click this soon after the message was submitted (its link activated) is flagged as a"
        " bot (too_fast)"
    )
    click_flush_interval_ms: int = Field(200, ge=1, description="How often buffered click events are published")
    click_buffer_max: int = Field(
        50_000, ge=1, description="Clicks buffered for publishing at most; beyond it clicks are dropped (and counted)"
    )

    @field_validator("geo_high_cost_countries")
    @classmethod
    def _high_cost(cls, value: list[str]) -> list[str]:
        return country_codes(value)

    @field_validator("link_domain")
    @classmethod
    def _link_domain(cls, value: str) -> str:
        from services.ingest.links import check_domain

        return check_domain(value)

    def geo_rules(self) -> GeoRules:
        """What a tenant's geo permissions are read with (shared/geo.py)."""
        return GeoRules(self.geo_default, frozenset(self.geo_high_cost_countries))

    def unsafe_secrets(self) -> list[str]:
        """What is wrong with the configured signing secrets (never their values)."""
        from shared.signatures import unsafe_secret

        problems = []
        for gateway, secret in self.receipt_secrets.items():
            why = unsafe_secret(secret.get_secret_value())
            if why:
                problems.append(f"HERALD_RECEIPT_SECRETS[{gateway}]: {why}")
        return problems + self.erasure_key_problems()
    retention_inbound_days: float = Field(
        400.0, ge=1, le=3650,
        description="Messages received (inbound_messages) are deleted this many days after they arrived; a tenant's "
        "own age (tenants.retention, kind inbound) overrides it",
    )
    idempotency_window_days: float = Field(
        30.0, ge=4, le=3650,
        description="An idempotency key returns the same message id for this many days after its first use, then is "
        "deleted (at least 4: longer than the trigger topic keeps a record, so a redelivered trigger is still known)",
    )
