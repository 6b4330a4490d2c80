from prometheus_client import Counter

MESSAGES_ACCEPTED = Counter(
    "herald_ingest_messages_accepted_total", "Messages accepted by ingest", ["type", "source"]
)
REQUESTS_REJECTED = Counter(
    "herald_ingest_messages_rejected_total", "Messages refused by ingest, by reason", ["reason_code"]
)
RECEIPTS = Counter("herald_ingest_receipts_total", "Gateway receipts received, by outcome", ["gateway", "outcome"])
RATE_LIMITED = Counter("herald_ingest_rate_limited_total", "Requests refused by a per-key rate limit", ["limit"])
