from prometheus_client import Counter

DECISIONS = Counter(
    "herald_scheduler_decisions_total", "Scheduler decisions by verdict and reason", ["verdict", "reason_code", "type"]
)
