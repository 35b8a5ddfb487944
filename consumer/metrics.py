"""Prometheus metrics of the consumer, on a registry of our own.

The names are a contract with the dashboards (docs/architecture.md#observability and
ops/grafana-dashboard.json): do not rename them.
prometheus_client appends `_total` to counters itself, so counters are declared without it.

A private `REGISTRY` (not the process-wide default) keeps the exposition to exactly our
metrics and lets tests import the module any number of times without "duplicated timeseries".
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

# Content type of the text exposition format that render() produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# --- scheduler / runner (names kept from upstream) ---

TICKS = Counter("mana_ai_ticks", "Scheduler ticks run.", registry=REGISTRY)
TICK_DURATION = Histogram(
    "mana_ai_tick_duration_seconds",
    "Wall time of one scheduler tick.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
PLANS_PRODUCED = Counter(
    "mana_ai_plans_produced", "Plans the planner returned and we parsed.", registry=REGISTRY
)
PLANS_WRITTEN_BACK = Counter(
    "mana_ai_plans_written_back", "Iterations written back to sync_changes.", registry=REGISTRY
)
PARSE_FAILURES = Counter(
    "mana_ai_parse_failures", "Planner replies that did not parse.", registry=REGISTRY
)
MISSION_ERRORS = Counter(
    "mana_ai_mission_errors", "Mission runs that failed with an error.", registry=REGISTRY
)
PLANNER_REQUEST_DURATION = Histogram(
    "mana_ai_planner_request_duration_seconds",
    "Duration of one planner HTTP request.",
    # LLM calls: sub-second is rare, minutes are possible.
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
SNAPSHOTS_NEW = Counter(
    "mana_ai_snapshots_new", "Records that entered the projection.", registry=REGISTRY
)
SNAPSHOTS_UPDATED = Counter(
    "mana_ai_snapshots_updated", "Projected records changed by a row.", registry=REGISTRY
)
SNAPSHOT_ROWS_APPLIED = Counter(
    "mana_ai_snapshot_rows_applied", "Log rows applied to the projection.", registry=REGISTRY
)
AGENT_DECISIONS = Counter(
    "mana_ai_agent_decisions",
    "Scheduler decisions for missions that name an agent.",
    ["decision"],
    registry=REGISTRY,
)

# --- stream consumer ---

APPLY_LAG = Gauge(
    "mana_ai_apply_lag_seconds",
    "Age of the oldest committed-but-unapplied log row; 0 when caught up.",
    registry=REGISTRY,
)
CHECKPOINT_AGE = Gauge(
    "mana_ai_checkpoint_age_seconds",
    "Seconds since the checkpoint last advanced.",
    registry=REGISTRY,
)
QUARANTINED_ROWS = Counter(
    "mana_ai_quarantined_rows",
    "Log rows sent to quarantine, by coarse reason category (see quarantine_category).",
    ["reason"],
    registry=REGISTRY,
)
LISTENER_RECONNECTS = Counter(
    "mana_ai_listener_reconnects",
    "Times the LISTEN connection was re-established.",
    registry=REGISTRY,
)
LISTENER_CONNECTED = Gauge(
    "mana_ai_listener_connected",
    "1 while the LISTEN connection is up, else 0.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "mana_ai_leader",
    "1 while this process holds the leader lock (applies and decides), else 0.",
    registry=REGISTRY,
)
BAD_STAMPS = Counter(
    "mana_ai_bad_stamps", "Field stamps that could not be parsed or compared.", registry=REGISTRY
)
APPLY_BATCH = Histogram(
    "mana_ai_apply_batch_seconds",
    "Wall time of applying one batch of log rows (one transaction).",
    # Batches are usually sub-millisecond to tens of ms: resolve that range finely.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
DECISION_LATENESS = Histogram(
    "mana_ai_decision_lateness_seconds",
    "How long after a mission's nextRunAt the scheduler decided on it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
RUNS_IN_FLIGHT = Gauge(
    "mana_ai_runs_in_flight", "Mission runs this process holds a lease for.", registry=REGISTRY
)
RUNS = Counter(
    "mana_ai_runs",
    "Run attempts that ended, by outcome: written-back, ok, retry (tried again later), "
    "failed (after the last attempt), lost (the lease went to another process), stopped, "
    "released (a gate closed before the attempt ran: decided again by the scheduler).",
    ["outcome"],
    registry=REGISTRY,
)
RUN_ATTEMPTS = Histogram(
    "mana_ai_run_attempts",
    "Attempts an occurrence took, observed when it ends done or failed.",
    buckets=(1, 2, 3, 4, 5, 8, 13),
    registry=REGISTRY,
)
LEASES_EXPIRED = Counter(
    "mana_ai_run_leases_expired",
    "Occurrences taken over from a lease that ran out (its process died or stalled).",
    registry=REGISTRY,
)
LEDGER_PRUNED = Counter(
    "mana_ai_ledger_pruned_rows",
    "Rows pruned by the leader's housekeeping, by table (dispatch_ledger, token_usage).",
    ["table"],
    registry=REGISTRY,
)

_CATEGORY_MAX = 32
_NOT_LABEL = re.compile(r"[^a-z0-9_]+")


def quarantine_category(reason: str) -> str:
    """Coarse label value for a free-text quarantine reason.

    The label is the reason's first word (text before the first space or colon), lowercased,
    reduced to [a-z0-9_] and cut to 32 characters; empty becomes "other". So reasons should
    start with a stable keyword, e.g. "payload_too_large: 2.1 MiB" -> "payload_too_large".
    This keeps label cardinality bounded by the code, not by the data; the full reason goes
    to the quarantine table.
    """
    head = re.split(r"[\s:]", reason.strip(), maxsplit=1)[0].lower()
    head = _NOT_LABEL.sub("_", head).strip("_")[:_CATEGORY_MAX]
    return head or "other"


def count_quarantined(reason: str) -> None:
    QUARANTINED_ROWS.labels(reason=quarantine_category(reason)).inc()


def render() -> bytes:
    """The registry in the Prometheus text exposition format (version 0.0.4)."""
    return generate_latest(REGISTRY)
