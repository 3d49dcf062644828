//! Money per key: prepaid balances, monthly budgets, reservations and spend totals, all in
//! `key_accounts` and `reservations`, and all changed by conditional SQL so that concurrent
//! requests (in one process or in many, on one database) can never spend money that is not there.
//!
//! - [`hold`] holds a request's worst-case cost before the upstream call: the `reservations` row
//!   and one `UPDATE` that succeeds only if the balance (and the month's budget) still covers
//!   everything reserved plus this amount, inside the ledger writer's batch transaction.
//! - [`apply_settlements`] runs inside the ledger's group-commit transaction for the rows it newly
//!   inserted: it deletes their reservations, releases them, debits the real cost and adds it to
//!   the spend totals. A row and its money move together or not at all.
//! - [`release_expired`] sweeps reservations whose request never settled (the process died).
//!
//! Keys without a balance or budget never reach [`hold`]; their spend totals are still kept by
//! settlement, so `spent_total_picodollars` equals the sum of the key's ledger costs for every key.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, EntityTrait, Statement,
    TransactionTrait, Value,
};

use crate::clock::{Period, now_ms};
use crate::entity::key_account;
use crate::error::BillingError;
use crate::keys::refresh::record_change;

/// The money of one key, as stored.
pub type KeyAccount = key_account::Model;

impl key_account::Model {
    /// Whether admissions of this key must reserve money (it has a balance or a budget).
    pub fn is_metered(&self) -> bool {
        self.balance_picodollars.is_some() || self.monthly_budget_picodollars.is_some()
    }

    /// What the key spent in `period`.
    pub fn spent_in(&self, period: Period) -> i64 {
        if self.spent_period == period.label() {
            self.spent_month_picodollars
        } else {
            0
        }
    }
}

/// Money given to a new key: a prepaid balance and a monthly budget, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyMoney {
    pub balance_picodollars: Option<i64>,
    pub monthly_budget_picodollars: Option<i64>,
}

/// `sql` with `?` placeholders, numbered `$1, $2, ...` for PostgreSQL. The SQL in this module
/// holds no `?` other than placeholders.
pub(crate) fn statement(backend: DatabaseBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DatabaseBackend::Postgres => {
            let mut numbered = String::with_capacity(sql.len() + 16);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    numbered.push('$');
                    numbered.push_str(&n.to_string());
                } else {
                    numbered.push(c);
                }
            }
            numbered
        }
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

async fn execute(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    let stmt = statement(db.get_database_backend(), sql, values);
    Ok(db.execute(stmt).await?.rows_affected())
}

/// Creates the account row of `key_id` with `money` (inside the key's creation transaction).
pub(crate) async fn open(
    db: &impl ConnectionTrait,
    key_id: &str,
    money: KeyMoney,
    now: i64,
) -> Result<(), DbErr> {
    let credited = money.balance_picodollars.unwrap_or(0);
    execute(
        db,
        "INSERT INTO key_accounts (key_id, balance_picodollars, monthly_budget_picodollars, \
         credited_total_picodollars, spent_period, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            key_id.into(),
            money.balance_picodollars.into(),
            money.monthly_budget_picodollars.into(),
            credited.into(),
            Period::current().label().into(),
            now.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Marks the key's row changed, so every gateway's key cache reloads it (and learns that the key
/// now reserves money) within its refresh interval.
async fn touch_key(db: &impl ConnectionTrait, key_id: &str, now: i64) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE api_keys SET updated_at = ? WHERE id = ?",
        vec![now.into(), key_id.into()],
    )
    .await?;
    record_change(db, key_id).await
}

async fn ensure_account(db: &impl ConnectionTrait, key_id: &str, now: i64) -> Result<(), DbErr> {
    execute(
        db,
        "INSERT INTO key_accounts (key_id, spent_period, updated_at) VALUES (?, ?, ?) \
         ON CONFLICT (key_id) DO NOTHING",
        vec![key_id.into(), Period::current().label().into(), now.into()],
    )
    .await?;
    Ok(())
}

/// Adds `amount` to the prepaid balance of `key_id` (a key without one gets one) and returns the
/// account after the change.
pub async fn top_up(
    db: &DatabaseConnection,
    key_id: &str,
    amount: i64,
) -> Result<KeyAccount, BillingError> {
    if amount <= 0 {
        return Err(BillingError::invalid(
            "amount",
            "a top-up must be more than 0 USD",
        ));
    }
    let now = now_ms();
    let txn = db.begin().await?;
    ensure_account(&txn, key_id, now).await?;
    let changed = execute(
        &txn,
        "UPDATE key_accounts SET balance_picodollars = COALESCE(balance_picodollars, 0) + ?, \
         credited_total_picodollars = credited_total_picodollars + ?, updated_at = ? \
         WHERE key_id = ? AND COALESCE(balance_picodollars, 0) <= ? \
         AND credited_total_picodollars <= ?",
        vec![
            amount.into(),
            amount.into(),
            now.into(),
            key_id.into(),
            (i64::MAX - amount).into(),
            (i64::MAX - amount).into(),
        ],
    )
    .await?;
    if changed == 0 {
        return Err(BillingError::invalid(
            "amount",
            "the balance would exceed the largest amount a key can hold",
        ));
    }
    touch_key(&txn, key_id, now).await?;
    txn.commit().await?;
    account(db, key_id)
        .await?
        .ok_or_else(|| BillingError::KeyNotFound(key_id.to_owned()))
}

/// Sets (or with `None` removes) the monthly budget of `key_id`.
pub async fn set_monthly_budget(
    db: &DatabaseConnection,
    key_id: &str,
    budget: Option<i64>,
) -> Result<KeyAccount, BillingError> {
    let now = now_ms();
    let txn = db.begin().await?;
    ensure_account(&txn, key_id, now).await?;
    execute(
        &txn,
        "UPDATE key_accounts SET monthly_budget_picodollars = ?, updated_at = ? WHERE key_id = ?",
        vec![budget.into(), now.into(), key_id.into()],
    )
    .await?;
    touch_key(&txn, key_id, now).await?;
    txn.commit().await?;
    account(db, key_id)
        .await?
        .ok_or_else(|| BillingError::KeyNotFound(key_id.to_owned()))
}

/// The account of `key_id`, if it has one.
pub async fn account(
    db: &impl ConnectionTrait,
    key_id: &str,
) -> Result<Option<KeyAccount>, BillingError> {
    Ok(key_account::Entity::find_by_id(key_id).one(db).await?)
}

/// Every account, by key id.
pub async fn all_accounts(
    db: &DatabaseConnection,
) -> Result<HashMap<String, KeyAccount>, BillingError> {
    Ok(key_account::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|a| (a.key_id.clone(), a))
        .collect())
}

/// One reservation to make: `amount` held for `request_id` of `key_id` until `expires_at`.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub request_id: String,
    pub key_id: String,
    pub amount: i64,
    pub period: Period,
    /// Unix milliseconds after which a sweep may release it.
    pub expires_at: i64,
}

/// Holds `r.amount` against the key's balance and monthly budget inside `txn`, the ledger
/// writer's batch transaction ([`crate::ledger::Ledger::reserve`]), so reservations share the
/// batch's one commit with settlements. First the reservation row, `ON CONFLICT DO NOTHING`: a
/// request id that already holds one for this key answers with the amount it holds (a retried
/// or concurrent Admit of one request reserves once), and one held by another key is refused.
/// Then one conditional `UPDATE`, which the database serialises per row (across processes too);
/// when the balance or budget does not cover it, the row is deleted again and the refusal
/// ([`BillingError::InsufficientBalance`] or [`BillingError::BudgetExceeded`]) answered: nothing
/// stays held. The outer `Err` is a database failure, which fails the whole batch.
pub(crate) async fn hold(
    txn: &impl ConnectionTrait,
    r: &Reservation,
) -> Result<Result<i64, BillingError>, DbErr> {
    let inserted = execute(
        txn,
        "INSERT INTO reservations (request_id, key_id, amount_picodollars, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        vec![
            r.request_id.as_str().into(),
            r.key_id.as_str().into(),
            r.amount.into(),
            now_ms().into(),
            r.expires_at.into(),
        ],
    )
    .await?;
    if inserted == 0 {
        return held_before(txn, r).await;
    }
    let period = r.period.label();
    let held = execute(
        txn,
        "UPDATE key_accounts SET reserved_picodollars = reserved_picodollars + ? \
         WHERE key_id = ? \
         AND (balance_picodollars IS NULL \
              OR balance_picodollars - reserved_picodollars >= ?) \
         AND (monthly_budget_picodollars IS NULL \
              OR monthly_budget_picodollars - reserved_picodollars \
                 - (CASE WHEN spent_period = ? THEN spent_month_picodollars ELSE 0 END) >= ?)",
        vec![
            r.amount.into(),
            r.key_id.as_str().into(),
            r.amount.into(),
            period.as_str().into(),
            r.amount.into(),
        ],
    )
    .await?;
    if held == 0 {
        execute(
            txn,
            "DELETE FROM reservations WHERE request_id = ?",
            vec![r.request_id.as_str().into()],
        )
        .await?;
        return Ok(Err(refusal(txn, r).await));
    }
    Ok(Ok(r.amount))
}

/// The answer for a request id that already holds a reservation: its amount when it is this
/// key's, a refusal when another key's request holds it.
async fn held_before(
    txn: &impl ConnectionTrait,
    r: &Reservation,
) -> Result<Result<i64, BillingError>, DbErr> {
    let row = txn
        .query_one(statement(
            txn.get_database_backend(),
            "SELECT key_id, amount_picodollars FROM reservations WHERE request_id = ?",
            vec![r.request_id.as_str().into()],
        ))
        .await?;
    let Some(row) = row else {
        // Released between the two statements (another process's sweep): hold afresh.
        return Box::pin(hold(txn, r)).await;
    };
    let key_id: String = row.try_get("", "key_id")?;
    if key_id != r.key_id {
        return Ok(Err(BillingError::InvalidArgument {
            param: "request_id",
            message: "already used by another request".to_owned(),
        }));
    }
    Ok(Ok(row.try_get("", "amount_picodollars")?))
}

/// Why a reservation was refused, read after the fact (for the message only).
async fn refusal(txn: &impl ConnectionTrait, r: &Reservation) -> BillingError {
    let account = match account(txn, &r.key_id).await {
        Ok(Some(account)) => account,
        Ok(None) => return BillingError::KeyNotFound(r.key_id.clone()),
        Err(err) => return err,
    };
    let budget_left = account
        .monthly_budget_picodollars
        .map(|budget| budget - account.reserved_picodollars - account.spent_in(r.period));
    match budget_left {
        Some(left) if left < r.amount => BillingError::BudgetExceeded {
            needed: r.amount,
            available: left.max(0),
        },
        _ => BillingError::InsufficientBalance {
            needed: r.amount,
            available: account
                .balance_picodollars
                .map_or(0, |b| (b - account.reserved_picodollars).max(0)),
        },
    }
}

/// A ledger row the settlement transaction just inserted: what its money effect needs.
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    pub request_id: String,
    pub key_id: String,
    pub cost: i64,
    pub period: String,
    /// Its reservation is looked for (see [`crate::ledger::LedgerRow::may_hold_reservation`]).
    pub may_hold_reservation: bool,
}

/// Applies newly inserted ledger rows to their keys' accounts, inside the ledger's transaction:
/// their reservations are deleted and released, their costs debited from the balance (which stops
/// at zero; any excess is written off and counted) and added to the spend totals. A cost above
/// its request's reservation is logged at WARN and counted in `over_reserved_*`.
pub(crate) async fn apply_settlements(
    txn: &impl ConnectionTrait,
    settled: &[Settled],
) -> Result<(), DbErr> {
    if settled.is_empty() {
        return Ok(());
    }
    let held: Vec<Value> = settled
        .iter()
        .filter(|s| s.may_hold_reservation)
        .map(|s| s.request_id.as_str().into())
        .collect();
    let reservations = if held.is_empty() {
        Vec::new()
    } else {
        let placeholders = vec!["?"; held.len()].join(", ");
        delete_reservations(txn, &format!("request_id IN ({placeholders})"), held).await?
    };
    let mut released = per_key(&reservations);
    let reserved: HashMap<&str, i64> = reservations
        .iter()
        .map(|r| (r.request_id.as_str(), r.amount))
        .collect();
    // One statement per key and month in the batch, in key order: every writer locks account
    // rows in the same order, so two replicas' batches cannot deadlock on them.
    let mut spent: BTreeMap<(String, String), KeySettlement> = BTreeMap::new();
    for s in settled {
        let total = spent
            .entry((s.key_id.clone(), s.period.clone()))
            .or_default();
        total.cost = total.cost.saturating_add(s.cost);
        // The reservation was the request's worst case: a cost above it means a bound was
        // wrong, and is counted, not absorbed.
        if let Some(&amount) = reserved.get(s.request_id.as_str())
            && s.cost > amount
        {
            tracing::warn!(
                request_id = %s.request_id,
                key_id = %s.key_id,
                cost_picodollars = s.cost,
                reserved_picodollars = amount,
                "a settlement cost more than its reservation"
            );
            total.over_reserved = total.over_reserved.saturating_add(s.cost - amount);
            total.over_reserved_count += 1;
        }
    }
    for ((key_id, period), total) in spent {
        let KeySettlement {
            cost,
            over_reserved,
            over_reserved_count,
        } = total;
        let release = released.remove(&key_id).unwrap_or(0);
        execute(
            txn,
            "INSERT INTO key_accounts (key_id, spent_total_picodollars, spent_month_picodollars, \
             spent_period) VALUES (?, ?, ?, ?) \
             ON CONFLICT (key_id) DO UPDATE SET \
             over_reserved_picodollars = key_accounts.over_reserved_picodollars + ?, \
             over_reserved_count = key_accounts.over_reserved_count + ?, \
             written_off_picodollars = key_accounts.written_off_picodollars + \
               CASE WHEN key_accounts.balance_picodollars < ? \
                    THEN ? - key_accounts.balance_picodollars ELSE 0 END, \
             balance_picodollars = CASE WHEN key_accounts.balance_picodollars < ? THEN 0 \
               ELSE key_accounts.balance_picodollars - ? END, \
             reserved_picodollars = key_accounts.reserved_picodollars - ?, \
             spent_total_picodollars = key_accounts.spent_total_picodollars + ?, \
             spent_month_picodollars = CASE WHEN key_accounts.spent_period = ? \
               THEN key_accounts.spent_month_picodollars + ? \
               WHEN key_accounts.spent_period > ? THEN key_accounts.spent_month_picodollars \
               ELSE ? END, \
             spent_period = CASE WHEN key_accounts.spent_period > ? \
               THEN key_accounts.spent_period ELSE ? END",
            vec![
                key_id.as_str().into(),
                cost.into(),
                cost.into(),
                period.as_str().into(),
                over_reserved.into(),
                over_reserved_count.into(),
                cost.into(),
                cost.into(),
                cost.into(),
                cost.into(),
                release.into(),
                cost.into(),
                period.as_str().into(),
                cost.into(),
                period.as_str().into(),
                cost.into(),
                period.as_str().into(),
                period.as_str().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// What one key's rows in a settlement batch move, for one month.
#[derive(Debug, Default)]
struct KeySettlement {
    cost: i64,
    /// The costs above their reservations, summed.
    over_reserved: i64,
    over_reserved_count: i64,
}

/// A reservation deleted (and so released).
#[derive(Debug)]
struct Released {
    request_id: String,
    key_id: String,
    amount: i64,
}

/// Deletes the reservations matching `condition` (SQL with `?` placeholders for `values`) and
/// returns them.
async fn delete_reservations(
    txn: &impl ConnectionTrait,
    condition: &str,
    values: Vec<Value>,
) -> Result<Vec<Released>, DbErr> {
    let rows = txn
        .query_all(statement(
            txn.get_database_backend(),
            &format!(
                "DELETE FROM reservations WHERE {condition} \
                 RETURNING request_id, key_id, amount_picodollars"
            ),
            values,
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Released {
                request_id: row.try_get("", "request_id")?,
                key_id: row.try_get("", "key_id")?,
                amount: row.try_get("", "amount_picodollars")?,
            })
        })
        .collect()
}

/// Released amounts summed per key, in key order.
fn per_key(released: &[Released]) -> BTreeMap<String, i64> {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for r in released {
        *sums.entry(r.key_id.clone()).or_default() += r.amount;
    }
    sums
}

/// Keeps the reservation of `request_id` out of the expiry sweep ([`release_expired`] before
/// `i64::MAX`): its request was served but its ledger row could not be written, so its money
/// stays held until an operator settles it. Start-up on SQLite still releases it.
pub(crate) async fn hold_reservation(
    db: &impl ConnectionTrait,
    request_id: &str,
) -> Result<u64, DbErr> {
    execute(
        db,
        "UPDATE reservations SET expires_at = ? WHERE request_id = ?",
        vec![(i64::MAX - 1).into(), request_id.into()],
    )
    .await
}

/// Releases the reservations that expired before `before` (Unix ms; `i64::MAX` releases all):
/// their requests never settled, so their money goes back. Returns how many were released.
pub async fn release_expired(db: &DatabaseConnection, before: i64) -> Result<u64, BillingError> {
    let txn = db.begin().await?;
    let count = release_expired_in(&txn, before).await?;
    txn.commit().await?;
    Ok(count)
}

/// [`release_expired`] inside `txn` (the ledger writer's sweep: [`crate::ledger::Ledger::release_expired`]).
pub(crate) async fn release_expired_in(
    txn: &impl ConnectionTrait,
    before: i64,
) -> Result<u64, DbErr> {
    let released = delete_reservations(txn, "expires_at < ?", vec![before.into()]).await?;
    let count = released.len() as u64;
    for (key_id, amount) in per_key(&released) {
        execute(
            txn,
            "UPDATE key_accounts SET reserved_picodollars = reserved_picodollars - ? \
             WHERE key_id = ?",
            vec![amount.into(), key_id.into()],
        )
        .await?;
    }
    Ok(count)
}

/// The amount `request_id` of `key_id` holds, if it holds a reservation: a retried Admit of an
/// admitted request finds its reservation here (and reserves nothing more).
pub async fn reserved_for(
    db: &DatabaseConnection,
    request_id: &str,
    key_id: &str,
) -> Result<Option<i64>, BillingError> {
    let row = db
        .query_one(statement(
            db.get_database_backend(),
            "SELECT amount_picodollars FROM reservations WHERE request_id = ? AND key_id = ?",
            vec![request_id.into(), key_id.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get("", "amount_picodollars")?),
        None => None,
    })
}

/// Reservations still held (all keys).
pub async fn open_reservations(db: &DatabaseConnection) -> Result<u64, BillingError> {
    let row = db
        .query_one(statement(
            db.get_database_backend(),
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM reservations",
            vec![],
        ))
        .await?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let s = statement(DatabaseBackend::Postgres, "a = ? AND b = ?", vec![]);
        assert_eq!(s.sql, "a = $1 AND b = $2");
        let s = statement(DatabaseBackend::Sqlite, "a = ? AND b = ?", vec![]);
        assert_eq!(s.sql, "a = ? AND b = ?");
    }
}
