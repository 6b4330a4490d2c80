from prometheus_client import Counter, Histogram

MESSAGES_ACCEPTED = Counter(
    "herald_ingest_messages_accepted_total", "Messages accepted by ingest", ["type", "source"]
)
REQUESTS_REJECTED = Counter(
    "herald_ingest_messages_rejected_total", "Messages refused by ingest, by reason", ["reason_code"]
)
RECEIPTS = Counter("herald_ingest_receipts_total", "Gateway receipts received, by outcome", ["gateway", "outcome"])
RATE_LIMITED = Counter("herald_ingest_rate_limited_total", "Requests refused by a per-key rate limit", ["limit"])

# Tracked links (services/ingest/redirect.py, docs/results.md)
LINK_CLICKS = Counter("herald_link_clicks_total", "Requests on tracked short links, by kind (human, bot)", ["kind"])
LINK_NOT_FOUND = Counter(
    "herald_link_not_found_total", "Short-link requests answered 404, by reason", ["reason"]
)
LINK_REFUSED = Counter(
    "herald_link_redirects_refused_total",
    "Requests on a stored short link that did not redirect, by reason (not_active, wrong_domain, taken_down, expired)",
    ["reason"],
)
LINKS_ACTIVATED = Counter(
    "herald_links_activated_total", "Short links activated because their message was submitted to a gateway"
)
LINK_TAKEDOWNS = Counter(
    "herald_link_takedowns_total",
    "Short links taken down by an operator, as this instance found them (and dropped them from its cache)",
)
LINK_LOOKUPS = Counter(
    "herald_link_lookups_total", "Short-link code lookups, by where they were answered", ["source"]
)
CLICKS_DROPPED = Counter(
    "herald_link_clicks_dropped_total", "Click events dropped because the publish buffer was full"
)
BOT_CLICKS_FOLDED = Counter(
    "herald_link_bot_clicks_folded_total",
    "Bot clicks folded into an event already buffered for the same link, reason and day (no event of their own)",
)
REDIRECT_SECONDS = Histogram(
    "herald_link_redirect_seconds", "Time to answer a short-link request (lookup, bot check, buffering)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
PRIORITY_SHARE_EXCEEDED = Counter(
    "herald_ingest_priority_share_exceeded_total",
    "Transactional messages sent on the campaign lanes because their tenant was past its share of the transactional lanes",
)
KAFKA_INPUT_REFUSED = Counter(
    "herald_ingest_kafka_input_refused_total",
    "Trigger and contact events refused for their signature (unsigned, unknown key, bad signature, another tenant)",
    ["reason"],
)
