from prometheus_client import Counter, Gauge, Histogram

SUBMISSIONS = Counter(
    "herald_dispatcher_submissions_total", "Submission results per gateway", ["gateway", "outcome"]
)
SUBMIT_SECONDS = Histogram(
    "herald_dispatcher_submit_seconds",
    "Time to submit one group of messages to a gateway (throttle waits included)",
    ["gateway"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
THROTTLE_WAIT = Histogram(
    "herald_dispatcher_throttle_wait_seconds",
    "How long the token bucket held a chunk back",
    ["gateway"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SENDER_THROTTLE_WAIT = Histogram(
    "herald_dispatcher_sender_throttle_wait_seconds",
    "How long a sender's contracted rate held a chunk back (by sender kind and lane, never the number)",
    ["kind", "lane"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SKIPPED_CLAIMED = Counter(
    "herald_dispatcher_skipped_claimed_total", "Redelivered messages skipped because a claim exists"
)
REGATED = Counter(
    "herald_dispatcher_regated_total", "Messages of paused or cancelled campaigns sent back to the scheduler unsent"
)
RECONCILED = Counter("herald_dispatcher_reconciled_total", "Stale claims resolved by the reconciler")
GATEWAY_OPEN = Gauge("herald_dispatcher_gateway_open", "1 while a gateway's circuit is open (skipped)", ["gateway"])
GATEWAY_TRANSITIONS = Counter(
    "herald_dispatcher_gateway_transitions_total", "Gateway health state changes", ["gateway", "state"]
)
ROUTE_DECISIONS = Counter(
    "herald_dispatcher_route_decisions_total", "Routing decisions by route, gateway and failover", ["route", "gateway", "failover"]
)
EXPIRED = Counter("herald_dispatcher_expired_total", "Messages not sent because their validity ended")
OUTCOME_UNKNOWN = Counter(
    "herald_dispatcher_outcome_unknown_total",
    "Messages ended with status unknown: the gateway could not tell whether it received them",
    ["gateway"],
)
OLDEST_CLAIM_AGE = Gauge(
    "herald_dispatcher_oldest_claim_age_seconds",
    "Age of the oldest unfinished claim (a message claimed but with no final outcome yet); refreshed by the reconciler",
)
RELEASED_CLAIMS = Counter(
    "herald_dispatcher_released_claims_total",
    "Claims handed to the reconciler because a batch failed after claiming or was redelivered with its claims open",
    ["reason"],
)
PARKED = Gauge(
    "herald_dispatcher_parked_messages",
    "Messages parked because every gateway of their route refused them past the retry budget (all instances)",
)
PARKED_OLDEST = Gauge(
    "herald_dispatcher_parked_oldest_seconds", "Time since the oldest parked message was first parked"
)
PARKINGS = Counter(
    "herald_dispatcher_parkings_total", "Messages parked (or parked again) after retriable refusals, by the gateway that refused last",
    ["gateway"],
)
UNPARKED = Counter(
    "herald_dispatcher_unparked_total",
    "Parked messages taken out of the parking, by what became of them (resent, expired, max_age)",
    ["outcome"],
)
RESULT_WRITE_RETRIES = Counter(
    "herald_dispatcher_result_write_retries_total",
    "Writes of what a gateway answered (outcomes, finished claims) retried in place after a transient database error",
    ["what"],
)
