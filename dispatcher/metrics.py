"""Prometheus metrics, all under ``paydispatch_``; labels never carry an order id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS_CREATED = Counter("paydispatch_orders_created", "Orders created", ["adapter"])
TRANSITIONS = Counter(
    "paydispatch_transitions", "Order status changes", ["adapter", "from_status", "to_status"]
)
PSP_REQUESTS = Counter(
    "paydispatch_psp_requests",
    "HTTP calls to payment systems by outcome (ok, 4xx, 5xx, 429, timeout, network)",
    ["adapter", "operation", "outcome"],
)
PSP_DURATION = Histogram(
    "paydispatch_psp_request_duration_seconds",
    "Duration of HTTP calls to payment systems",
    ["adapter", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STEP_ERRORS = Counter(
    "paydispatch_step_errors",
    "Dispatcher steps that ended in an error, by kind (transient, malformed, permanent)",
    ["adapter", "operation", "kind"],
)
LATE_PAYMENTS = Counter(
    "paydispatch_late_payments", "Payments seen after expired/rejected/cancelled", ["adapter"]
)
TIME_TO_PAID = Histogram(
    "paydispatch_time_to_paid_seconds",
    "From order creation to paid",
    ["adapter"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 86400),
)
BREAKER_STATE = Gauge(
    "paydispatch_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["adapter"]
)
CREDENTIALS_REJECTED = Counter(
    "paydispatch_psp_credentials_rejected",
    "Answers in which a payment system refused our own credentials (HTTP 401/403): the "
    "adapter's breaker opens and an alert fires",
    ["adapter"],
)
CLAIMED = Counter("paydispatch_sweeper_claimed", "Orders claimed by the sweeper", ["adapter"])
IN_FLIGHT = Gauge("paydispatch_steps_in_flight", "Dispatcher steps running in this process")

# Read from the database by one process (the sweeper), every few seconds: see dbstats.py.
ORDERS_BY_STATUS = Gauge(
    "paydispatch_orders", "Orders in the database by adapter and status", ["adapter", "status"]
)
OLDEST_DUE_AGE = Gauge(
    "paydispatch_oldest_due_order_age_seconds", "How long the most overdue order has waited"
)
OVERDUE_ORDERS = Gauge(
    "paydispatch_orders_past_deadline",
    "Active orders more than 5 minutes past their deadline (should be zero)",
    ["adapter"],
)
# Every claim and step leaves a dead version of its order's row; only vacuum takes them away
# (README, "Database").
UPKEEP_PROBLEMS = Gauge(
    "paydispatch_db_upkeep_problems",
    "Server settings that keep orders from being vacuumed (autovacuum, track_counts off)",
)
ORDERS_DEAD_ROWS = Gauge(
    "paydispatch_db_orders_dead_rows", "Dead row versions in the orders table (its statistics)"
)
ORDERS_VACUUM_AGE = Gauge(
    "paydispatch_db_orders_vacuum_age_seconds",
    "Seconds since the orders table was last vacuumed (+Inf: never)",
)
NEEDS_REVIEW = Gauge("paydispatch_needs_review_orders", "Orders waiting for a person", ["adapter"])

# Money going out (issue #14). Counted where a transfer reaches the status: the worker (its
# steps), the API and CLI (cancelled), the callbacks (refunds the payment system reported).
REFUNDS = Counter(
    "paydispatch_refunds",
    "Refunds by the status they reached (succeeded, failed, cancelled, needs_review) and who "
    "asked (origin: site, operator, user, psp)",
    ["adapter", "origin", "status"],
)
PAYOUTS = Counter(
    "paydispatch_payouts",
    "Payouts by the status they reached (succeeded, failed, cancelled, needs_review)",
    ["adapter", "status"],
)
CHARGEBACKS = Counter(
    "paydispatch_chargebacks",
    "Chargebacks the payment system reported (money taken back by the payer's bank)",
    ["adapter"],
)
CHARGEBACK_REVERSALS = Counter(
    "paydispatch_chargeback_reversals",
    "Chargebacks the payment system gave back (a dispute won), credited to the wallet again",
    ["adapter"],
)
REPORTED_REFUNDS_REFUSED = Counter(
    "paydispatch_reported_refunds_refused",
    "Refunds or chargebacks the payment system reported that were not recorded because they "
    "disagree with ours (more than is left while our refund is sent, another currency): a "
    "person records them (`paydispatch orders refund ID --record`)",
    ["adapter"],
)
SWEEPER_LAST_TICK = Gauge(
    "paydispatch_sweeper_last_tick_timestamp_seconds", "Unix time of the sweeper's last sweep"
)

# Billing webhook outbox: the gauges are read from the database by the sweeper.
BILLING_OUTBOX_BACKLOG = Gauge(
    "paydispatch_billing_outbox_backlog", "Billing webhook events waiting to be delivered"
)
BILLING_OUTBOX_OLDEST_AGE = Gauge(
    "paydispatch_billing_outbox_oldest_age_seconds",
    "Age of the oldest billing webhook event not yet delivered",
)
BILLING_OUTBOX_PARKED = Gauge(
    "paydispatch_billing_outbox_parked", "Billing webhook events parked after 3 days of retries"
)
BILLING_PARKED = Counter(
    "paydispatch_billing_events_parked", "Billing webhook events parked (retries ran out)"
)
BILLING_DELIVERIES = Counter(
    "paydispatch_billing_deliveries",
    "Billing webhook delivery attempts by outcome (delivered, retry, parked, skipped)",
    ["outcome"],
)
# Refund billing (issue #14): entries that left a wallet below zero, and bonus reversals that
# could take back less than their share (policy refuse). Counted when written; a transaction
# rolled back and retried counts again.
WALLET_OVERDRAFTS = Counter(
    "paydispatch_wallet_overdrafts",
    "Refund entries that left a wallet's balance below zero (flagged overdrawn)",
    ["kind"],
)
BONUS_REVERSAL_SHORTFALLS = Counter(
    "paydispatch_bonus_reversal_shortfalls",
    "Bonus reversals of a refund that took back less than their share (the balance was spent)",
)

# Wallet withdrawals (issue #14). The counter counts in the process where a withdrawal reaches
# the status: the API or CLI (requested, approved, refused, cancelled before approval) and the
# worker (succeeded, failed, cancelled payouts, from the payout hook). The gauges are read
# from the database by the sweeper (dbstats).
WITHDRAWALS = Counter(
    "paydispatch_withdrawals",
    "Withdrawals by the status they reached (requested, approved, succeeded, failed, "
    "cancelled) and requests refused (refused)",
    ["status"],
)
WITHDRAWALS_HELD = Gauge(
    "paydispatch_withdrawals_held",
    "Minor units open withdrawals hold in wallets (amount + fee), by currency",
    ["currency"],
)
WITHDRAWALS_OLDEST_AGE = Gauge(
    "paydispatch_withdrawals_oldest_age_seconds",
    "How long the oldest open withdrawal of each status has stood in it",
    ["status"],
)

# dramatiq's own view, per queue (adapter) and actor (operation), from MessageMetrics below.
DRAMATIQ_MESSAGES = Counter(
    "paydispatch_dramatiq_messages",
    "dramatiq messages handled by this worker, by outcome (ok, error, skipped)",
    ["adapter", "operation", "outcome"],
)
DRAMATIQ_DURATION = Histogram(
    "paydispatch_dramatiq_message_duration_seconds",
    "Time an actor took, including waiting for a free engine slot (back-pressure)",
    ["adapter", "operation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
