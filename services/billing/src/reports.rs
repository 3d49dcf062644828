//! Shaping the ledger's grouped rows into the usage report: every day of a range with its
//! per-model line items, and the exact integer totals over them.

use tollgate::v1::{DailyUsage, UsageLineItem};

use crate::clock::{DateRange, day_start_ms};
use crate::ledger;

/// A count as the proto's unsigned field (a negative count, which the ledger never holds, is 0).
pub(crate) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Every day of `range` with its line items (from `rows`, ordered by day), and the sums over all
/// of them. Sums are of integers, so the days add up to the total exactly.
pub(crate) fn daily_report(
    range: DateRange,
    rows: Vec<ledger::DailyModelUsage>,
) -> (Vec<DailyUsage>, ledger::UsageTotals) {
    let mut totals = ledger::UsageTotals::default();
    let mut rows = rows.into_iter().peekable();
    let days = range
        .iter_days()
        .map(|date| {
            let start_ms = day_start_ms(date);
            let mut day = DailyUsage {
                timestamp: start_ms / 1000,
                date: date.format("%Y-%m-%d").to_string(),
                ..Default::default()
            };
            while let Some(row) = rows.next_if(|r| r.day * ledger::DAY_MS == start_ms) {
                totals.requests += row.requests;
                totals.prompt_tokens += row.prompt_tokens;
                totals.cached_prompt_tokens += row.cached_prompt_tokens;
                totals.completion_tokens += row.completion_tokens;
                totals.reasoning_tokens += row.reasoning_tokens;
                totals.cost_picodollars += row.cost_picodollars;
                day.cost_picodollars += row.cost_picodollars;
                day.line_items.push(UsageLineItem {
                    model: row.model_id,
                    requests: unsigned(row.requests),
                    prompt_tokens: unsigned(row.prompt_tokens),
                    completion_tokens: unsigned(row.completion_tokens),
                    cost_picodollars: row.cost_picodollars,
                });
            }
            day
        })
        .collect();
    (days, totals)
}
