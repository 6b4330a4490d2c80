from prometheus_client import Counter, Histogram

RUNS_STARTED = Counter("herald_journey_runs_started_total", "Contacts that entered a journey")
RUNS_ENDED = Counter("herald_journey_runs_ended_total", "Journey runs that ended, by how", ["state", "reason"])
SENDS = Counter("herald_journey_sends_total", "Send steps reached, by result and type", ["result", "type"])
TIMER_LATENESS = Histogram(
    "herald_journey_timer_lateness_seconds", "How late due journey runs were advanced",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
