//! What Billing reports to Prometheus, through the `metrics` facade (the process that serves
//! `/metrics` installs the recorder; without one every call here is a no-op): admissions refused
//! by reason (Metering), and from the ledger writer the rows each batch commits, the commit's
//! time, the queue's depth, and for every row it newly stores (never a duplicate settlement) its
//! tokens by kind, its cost and its settlement kind. So the counters follow the ledger, which
//! stays the money truth.
//!
//! Handles with fixed labels are registered once (per reason, per model) and reused; per-key
//! labels ([`set_per_key_labels`]) allocate theirs per row.

use std::sync::{
    LazyLock,
    atomic::{AtomicBool, Ordering},
};

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};

use crate::{
    error::BillingError,
    ledger::{LedgerRow, Outcome},
};

/// Admissions refused, by `reason`.
pub const ADMISSION_REFUSALS_TOTAL: &str = "tollgate_admission_refusals_total";
/// Tokens settled, by `model` and `kind` (prompt, cached_prompt, cache_write, completion,
/// reasoning).
pub const TOKENS_TOTAL: &str = "tollgate_tokens_total";
/// USD settled, by `model`.
pub const COST_USD_TOTAL: &str = "tollgate_cost_usd_total";
/// Rows settled, by `kind` (final, estimated, cancelled, failed).
pub const SETTLEMENTS_TOTAL: &str = "tollgate_settlements_total";
/// Rows per committed ledger batch.
pub const LEDGER_BATCH_ROWS: &str = "tollgate_ledger_batch_rows";
/// Time of one ledger commit (the transaction, its retries included).
pub const LEDGER_COMMIT_SECONDS: &str = "tollgate_ledger_commit_seconds";
/// Rows waiting for the ledger writer.
pub const LEDGER_QUEUE_DEPTH: &str = "tollgate_ledger_queue_depth";

static PER_KEY_LABELS: AtomicBool = AtomicBool::new(false);

/// Adds a `key` label (the key id) to `tollgate_tokens_total` and `tollgate_cost_usd_total`: one
/// series per key, so off by default.
pub fn set_per_key_labels(on: bool) {
    PER_KEY_LABELS.store(on, Ordering::Relaxed);
}

/// Why an admission was refused, its `reason` label; `None` for failures that are not a
/// refusal of the request (a database or Redis error, a bad argument).
fn refusal_reason(err: &BillingError) -> Option<&'static str> {
    Some(match err {
        BillingError::MissingKey
        | BillingError::InvalidKey
        | BillingError::RevokedKey
        | BillingError::ExpiredKey(_) => "invalid_key",
        BillingError::RateLimited { .. } | BillingError::TooManyStreams { .. } => "rate_limited",
        BillingError::QuotaExceeded { .. } => "monthly_quota",
        BillingError::InsufficientBalance { .. } | BillingError::BudgetExceeded { .. } => {
            "insufficient_quota"
        }
        BillingError::ModelNotAllowed { .. } => "model_not_allowed",
        _ => return None,
    })
}

const REFUSAL_REASONS: [&str; 5] = [
    "invalid_key",
    "rate_limited",
    "monthly_quota",
    "insufficient_quota",
    "model_not_allowed",
];

static REFUSALS: LazyLock<[Counter; 5]> = LazyLock::new(|| {
    REFUSAL_REASONS.map(|reason| counter!(ADMISSION_REFUSALS_TOTAL, "reason" => reason))
});

/// Counts an Admit that failed with `err`, if it is a refusal.
pub(crate) fn admission_failed(err: &BillingError) {
    let Some(reason) = refusal_reason(err) else {
        return;
    };
    if let Some(at) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
        REFUSALS[at].increment(1);
    }
}

/// The settlement kind of a row: a failed or cancelled request, else a final count or an
/// estimate.
fn settlement_kind(row: &LedgerRow) -> &'static str {
    match row.outcome {
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Succeeded if row.estimated => "estimated",
        Outcome::Succeeded => "final",
    }
}

const SETTLEMENT_KINDS: [&str; 4] = ["final", "estimated", "cancelled", "failed"];

static SETTLEMENTS: LazyLock<[Counter; 4]> =
    LazyLock::new(|| SETTLEMENT_KINDS.map(|kind| counter!(SETTLEMENTS_TOTAL, "kind" => kind)));

const TOKEN_KINDS: [&str; 5] = [
    "prompt",
    "cached_prompt",
    "cache_write",
    "completion",
    "reasoning",
];

/// A row's tokens in [`TOKEN_KINDS`] order.
fn tokens(row: &LedgerRow) -> [i64; 5] {
    [
        row.prompt_tokens,
        row.cached_prompt_tokens,
        row.cache_write_tokens,
        row.completion_tokens,
        row.reasoning_tokens,
    ]
}

/// One model's token and cost handles.
struct ModelMeters {
    tokens: [Counter; 5],
    /// A gauge only raised: `metrics` counters count integers, and the cost is fractional USD.
    cost_usd: Gauge,
}

impl ModelMeters {
    fn new(model: &str, key_id: Option<&str>) -> Self {
        let labels = |extra: Option<Label>| {
            let mut labels = vec![Label::new("model", model.to_owned())];
            labels.extend(key_id.map(|k| Label::new("key", k.to_owned())));
            labels.extend(extra);
            labels
        };
        Self {
            tokens: TOKEN_KINDS
                .map(|kind| counter!(TOKENS_TOTAL, labels(Some(Label::new("kind", kind))))),
            cost_usd: gauge!(COST_USD_TOTAL, labels(None)),
        }
    }

    fn record(&self, row: &LedgerRow) {
        for (counter, count) in self.tokens.iter().zip(tokens(row)) {
            counter.increment(u64::try_from(count).unwrap_or(0));
        }
        // Picodollars to USD; an f64 keeps 15 significant digits, plenty for watching.
        #[allow(clippy::cast_precision_loss)]
        self.cost_usd
            .increment(row.cost_picodollars as f64 / 1_000_000_000_000.0);
    }
}

static MODELS: LazyLock<DashMap<String, ModelMeters>> = LazyLock::new(DashMap::new);

/// Records a row the ledger newly stored: its settlement kind, tokens and cost.
pub(crate) fn settled(row: &LedgerRow) {
    if let Some(at) = SETTLEMENT_KINDS
        .iter()
        .position(|k| *k == settlement_kind(row))
    {
        SETTLEMENTS[at].increment(1);
    }
    if PER_KEY_LABELS.load(Ordering::Relaxed) {
        ModelMeters::new(&row.model_id, Some(&row.key_id)).record(row);
        return;
    }
    match MODELS.get(&row.model_id) {
        Some(meters) => meters.record(row),
        None => MODELS
            .entry(row.model_id.clone())
            .or_insert_with(|| ModelMeters::new(&row.model_id, None))
            .record(row),
    }
}

static BATCH_ROWS: LazyLock<Histogram> = LazyLock::new(|| histogram!(LEDGER_BATCH_ROWS));
static COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| histogram!(LEDGER_COMMIT_SECONDS));
static QUEUE_DEPTH: LazyLock<Gauge> = LazyLock::new(|| gauge!(LEDGER_QUEUE_DEPTH));

/// A batch of `rows` committed in `seconds`.
pub(crate) fn batch_committed(rows: usize, seconds: f64) {
    #[allow(clippy::cast_precision_loss)]
    BATCH_ROWS.record(rows as f64);
    COMMIT_SECONDS.record(seconds);
}

/// Rows still queued for the writer.
pub(crate) fn queue_depth(rows: usize) {
    #[allow(clippy::cast_precision_loss)]
    QUEUE_DEPTH.set(rows as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_by_reason() {
        assert_eq!(
            refusal_reason(&BillingError::InvalidKey),
            Some("invalid_key")
        );
        assert_eq!(
            refusal_reason(&BillingError::BudgetExceeded {
                needed: 2,
                available: 1
            }),
            Some("insufficient_quota")
        );
        assert_eq!(refusal_reason(&BillingError::LedgerClosed), None);
    }
}
