"""Prometheus metrics shared by the services. Names are stable: dashboards depend on them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("herald_consumer_records_total", "Kafka records consumed", ["service", "topic"])
PUBLISHED = Counter("herald_published_events_total", "Events published to Kafka", ["service", "topic"])
REJECTED = Counter(
    "herald_rejected_events_total", "Events sent to the rejected topic", ["service", "reason_code"]
)
HANDLER_ERRORS = Counter(
    "herald_consumer_handler_errors_total", "Batch handler failures (transient or not)", ["service", "kind"]
)
BATCH_SECONDS = Histogram(
    "herald_consumer_batch_seconds",
    "Time to handle, publish and commit one batch",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_AGE_SECONDS = Histogram(
    "herald_consumer_event_age_seconds",
    "Time from an event's occurred_at (when its producer published it) to its batch being handled: "
    "the wait in Kafka and in this consumer, per stage",
    ["service", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
ASSIGNED = Gauge(
    "herald_consumer_assigned_partitions", "Partitions this process owns now, per topic", ["service", "topic"]
)
LAG = Gauge("herald_consumer_lag", "Records behind the end of the partition", ["service", "topic", "partition"])
LOOP_LAG_SECONDS = Histogram(
    "herald_event_loop_lag_seconds",
    "How late the event loop woke a timer (time the loop was busy with other work or waiting for CPU)",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GC_PAUSE_SECONDS = Histogram(
    "herald_gc_pause_seconds",
    "Time the garbage collector stopped the process, per generation collected",
    ["service", "generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WAITING = Gauge(
    "herald_consumer_waiting_for_dependency",
    "1 while a consumer's batch waits for its database or broker to answer again (retried without bound), else 0",
    ["service"],
)

# Erasures (shared/erasure_store.py, docs/data-map.md): applied once per service; a redelivered one is not counted.
ERASURES = Counter("herald_erasures_total", "Erasures applied to a service's own tables", ["service"])
ERASED_ROWS = Counter("herald_erased_rows_total", "Rows deleted or redacted by erasures, per table", ["service", "table"])
# Subject-access exports (shared/subject_access_store.py, docs/data-map.md): each service's parts, and ingest's exports.
SUBJECT_ACCESS_PARTS = Counter("herald_subject_access_parts_total", "Subject-access parts a service gathered and published", ["service"])
SUBJECT_ACCESS_ROWS = Counter("herald_subject_access_rows_total", "Rows a service put into subject-access parts, per table",
                              ["service", "table"])
SUBJECT_ACCESS_EXPORTS = Counter("herald_subject_access_exports_total", "Subject-access exports requested (ingest)")
RETENTION_ROWS = Counter(
    "herald_retention_rows_total", "Rows deleted (or bodies redacted) by the retention job, per table", ["service", "table"]
)
RETENTION_PARTITIONS = Counter(
    "herald_retention_partitions_total", "Day partitions created ahead or dropped by the retention job",
    ["service", "table", "action"],
)
RETENTION_LAST_SUCCESS = Gauge(
    "herald_retention_last_success_timestamp_seconds",
    "When the service's retention job last finished a whole run (any instance: read from retention_runs)",
    ["service"],
)
RETENTION_RUN_SECONDS = Histogram(
    "herald_retention_run_seconds", "Duration of one retention run", ["service"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800),
)
RETENTION_RUNS = Counter(
    "herald_retention_runs_total", "Retention runs by outcome (success, behind: stopped at its budget, failed)",
    ["service", "outcome"],
)
PERIODIC_RUNS = Counter(
    "herald_periodic_runs_total", "Passes of a periodic worker (shared/periodic.py), by outcome: ok, error",
    ["task", "outcome"],
)
PERIODIC_LAST_SUCCESS = Gauge(
    "herald_periodic_last_success_timestamp_seconds", "Unix time of a periodic worker's last pass that ended without error",
    ["task"],
)
