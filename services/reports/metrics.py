from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

MESSAGES_FINAL = Counter(
    "herald_messages_final_total", "Messages that reached a final status", ["status", "type", "gateway"]
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
