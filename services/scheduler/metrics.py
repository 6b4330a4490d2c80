from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "herald_scheduler_decisions_total", "Scheduler decisions by verdict and reason", ["verdict", "reason_code", "type"]
)
HELD = Counter("herald_scheduler_held_total", "Messages held for later (send_at, quiet hours)")
RELEASED = Counter("herald_scheduler_released_total", "Held messages released when due")
RELEASE_LATENESS = Histogram(
    "herald_scheduler_release_lateness_seconds",
    "How late the oldest message of a released batch was",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
COMMANDS = Counter(
    "herald_scheduler_commands_total",
    "Clients' cancel and reschedule commands, by outcome (applied, or not_held: already released or unknown)",
    ["action", "outcome"],
)
