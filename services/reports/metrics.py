from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

MESSAGES_FINAL = Counter(
    "herald_messages_final_total", "Messages that reached a final status (or unknown: the outcome cannot be told)",
    ["status", "type", "gateway"],
)
UNKNOWN_RESOLVED = Counter(
    "herald_messages_unknown_resolved_total", "Messages that left status unknown, by the status they moved to",
    ["status", "gateway"],
)
MESSAGES_SUBMITTED = Counter("herald_messages_submitted_total", "Messages submitted to a gateway", ["type", "gateway"])
ACCEPT_TO_SUBMIT = Histogram(
    "herald_accept_to_submit_seconds", "From acceptance by ingest to submission to a gateway", ["type"],
    buckets=LATENCY_BUCKETS,
)
SUBMIT_TO_FINAL = Histogram(
    "herald_submit_to_final_seconds", "From submission to the final status (delivery receipt)", ["status"],
    buckets=LATENCY_BUCKETS,
)
RECEIPTS_PARKED = Counter(
    "herald_receipts_parked_total", "Receipts that arrived before their submission was recorded"
)
RECEIPTS_UNPARKED = Counter("herald_receipts_unparked_total", "Parked receipts applied later")
RECEIPTS_EXPIRED = Counter(
    "herald_receipts_parked_expired_total", "Parked receipts dropped unmatched after the receipt matching window"
)
RECEIPTS_PARK_DROPPED = Counter(
    "herald_receipts_parked_dropped_total",
    "Unmatched receipts not parked because their gateway already has HERALD_RECEIPT_PARKED_MAX_PER_GATEWAY parked",
    ["gateway"],
)

WEBHOOKS_DELIVERED = Counter("herald_webhooks_delivered_total", "Status webhooks the customer answered with 2xx")
WEBHOOKS_FAILED_ATTEMPTS = Counter(
    "herald_webhooks_failed_attempts_total", "Status webhook attempts that failed", ["reason"]
)
WEBHOOKS_DEAD_LETTERS = Counter(
    "herald_webhooks_dead_letters_total", "Status webhooks given up on (refused or out of attempts)", ["reason"]
)
WEBHOOK_SECONDS = Histogram(
    "herald_webhook_request_seconds", "Duration of one status webhook POST", ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_LAG = Histogram(
    "herald_webhook_delivery_lag_seconds", "From the status change to its webhook's successful delivery",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_POSTS = Counter(
    "herald_webhook_posts_total", "Webhook POSTs (and URLs refused unposted) by kind (status, reply) and outcome",
    ["kind", "outcome"],
)
REPLY_WEBHOOKS_QUEUED = Counter("herald_reply_webhooks_queued_total", "Replies queued in the webhook outbox")
WEBHOOK_OUTBOX_DEPTH = Gauge("herald_webhook_outbox_depth", "Status webhooks waiting to be delivered (pending rows)")

# Results (services/reports/results.py, winner.py; docs/results.md)
CLICKS_RECORDED = Counter("herald_clicks_total", "Link clicks recorded, by kind (human, bot)", ["kind"])
CONVERSIONS = Counter(
    "herald_conversions_total", "Conversions recorded, by attribution (click, delivery, none)", ["attribution"]
)
REVENUE = Counter(
    "herald_conversion_revenue_total", "Value of attributed conversions, by currency", ["currency"]
)
AB_WINNERS = Counter(
    "herald_ab_winners_total", "A/B test winners picked, by how (significant, best_rate, no_data)", ["picked_by"]
)
WEBHOOKS_DEFERRED = Counter(
    "herald_webhooks_deferred_total",
    "Claimed webhooks put back without posting: tenant_cap, host_cap (posts in flight) or circuit_open",
    ["reason"],
)
WEBHOOK_CIRCUITS_OPENED = Counter(
    "herald_webhook_circuits_opened_total", "Times a webhook host's circuit opened (consecutive failures)"
)
WEBHOOK_CIRCUITS_OPEN = Gauge("herald_webhook_circuits_open", "Webhook hosts whose circuit is open now (this worker)")
