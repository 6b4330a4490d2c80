from __future__ import annotations

from pydantic import Field

from shared.settings import ConsumerSettings, RetentionSettings, WebhookEgressSettings


class ReportsSettings(ConsumerSettings, WebhookEgressSettings, RetentionSettings):
    http_port: int = Field(28083, ge=1, le=65535, description="Port of the reports API (public)")
    ops_port: int = Field(28183, ge=1, le=65535, description="Port of /healthz, /readyz and /metrics (not public)")
    consumer_max_records: int = Field(2000, ge=1, description="Most events handled in one batch")
    pending_sweep_interval_s: float = Field(2.0, gt=0, description="How often parked receipts are matched again")
    receipt_match_window_h: float = Field(
        168.0, gt=0,
        description="A receipt goes to the most recent submission of its gateway id made at most this long before it "
        "(gateways reuse ids); a receipt parked this long is dropped",
    )
    receipt_match_skew_s: float = Field(
        10.0, ge=0,
        description="A submission recorded up to this long after its receipt still counts as before it (clock and "
        "publish delays)",
    )
    receipt_parked_max_per_gateway: int = Field(
        100_000, ge=1,
        description="Most receipts parked (waiting for their submission) per gateway; beyond it a new unmatched receipt "
        "is dropped, counted in herald_receipts_parked_dropped_total{gateway} and logged, so a gateway sending receipts "
        "for messages Herald never sent cannot fill the database; a receipt whose gateway id the dispatcher submitted "
        "within the matching window is kept all the same (reports is behind on its status events). Approximate: "
        "concurrent batches may overshoot by one batch each",
    )
    receipt_settled_wait_s: float = Field(
        60.0, ge=0,
        description="A receipt for a gateway id whose submissions all have a final receipt waits this long for a newer "
        "submission of the id, then goes to the timeline of the most recent one",
    )
    webhooks_enabled: bool = Field(
        True, description="Run the status webhook worker in this instance (changes are queued in the outbox either way)"
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Attempts before a status webhook is dead-lettered")
    webhook_backoff_base_s: float = Field(5.0, gt=0, description="Delay before the first webhook retry; doubles each time")
    webhook_backoff_max_s: float = Field(600.0, gt=0, description="Longest delay between two webhook attempts")
    webhook_backoff_jitter: float = Field(
        0.1, ge=0, le=1, description="Random share added to each webhook retry delay (0.1: up to +10%)"
    )
    webhook_timeout_s: float = Field(5.0, gt=0, description="Bound on one webhook POST (connect, write, read)")
    webhook_concurrency: int = Field(
        128, ge=1, description="Webhook POSTs in flight per reports instance (the HTTP client's connection pool)"
    )
    webhook_tenant_concurrency: int = Field(
        16, ge=1, description="Webhook POSTs in flight per tenant in one reports instance (the rest wait their turn)"
    )
    webhook_host_concurrency: int = Field(
        8, ge=1, description="Webhook POSTs in flight per receiver (host and port) in one reports instance"
    )
    webhook_circuit_failures: int = Field(
        5, ge=1, description="Consecutive failed posts (timeouts, connection errors, 408/429/5xx) that open a "
        "receiver's circuit: its webhooks wait, unposted, for the cooldown",
    )
    webhook_circuit_cooldown_s: float = Field(
        30.0, gt=0, description="How long an open circuit holds a receiver's webhooks before one is tried again"
    )
    webhook_poll_interval_s: float = Field(0.5, gt=0, description="How often an idle webhook worker looks for due rows")
    webhook_lease_s: float = Field(
        60.0, gt=0, description="A claimed webhook is due again after this long if its worker died"
    )
    webhook_retention_h: float = Field(72.0, gt=0, description="Delivered webhook rows are deleted after this many hours")
    attribution_window_h: float = Field(
        168.0, gt=0, description="A conversion is attributed to a message clicked (else delivered) this many hours before it"
    )
    click_bot_min_delay_s: float = Field(
        1.0, ge=0, description="A click this soon after its message's submission is flagged as a bot (too_fast)"
    )
    ab_alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the A/B two-proportion test")
    search_timeout_ms: int = Field(
        5000, ge=100, le=120_000,
        description="Longest a page of GET /v1/messages (or of its export) may run; past it the search is 422 query_too_broad",
    )
    ab_winner_interval_s: float = Field(
        5.0, gt=0, description="How often campaigns in A/B testing are checked for a due decision"
    )
    ab_winner_enabled: bool = Field(True, description="Run the A/B auto-winner worker in this instance")
    retention_messages_days: float = Field(
        400.0, ge=1, le=3650,
        description="Messages (status, timeline, status webhook rows) are deleted this many days after they were "
        "accepted; a tenant's own age (tenants.retention, kind messages) overrides it. Timeline partitions are "
        "dropped once past the longest age any tenant keeps",
    )
    retention_clicks_days: float = Field(
        400.0, ge=1, le=3650,
        description="Clicks and conversions are deleted this many days after they happened; a tenant's own age "
        "(kind clicks) overrides it",
    )
    retention_dead_webhooks_days: float = Field(
        30.0, ge=1, le=3650, description="Dead-lettered status and reply webhook rows are deleted after this many days"
    )
    retention_partitions_ahead_days: int = Field(
        7, ge=1, le=60,
        description="Day partitions of message_events created ahead (a run that fails for this long sends "
        "timeline rows to the default partition, still kept)",
    )
    ab_winner_republish_s: float = Field(
        60.0, gt=0, description="A campaign still testing this long after its winner was published is judged and published again"
    )
