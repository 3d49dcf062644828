//! Prepaid balances and monthly budgets through the Metering API: concurrent admissions never
//! reserve more than the money there is, settlement debits the exact cost and releases the rest
//! in the ledger transaction, and every key's totals equal the sums of its ledger rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::future::join_all;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tollgate::v1::{AdmitRequest, Outcome, Pricing, SettleRequest, Usage};
use tollgate_billing::{KeyMoney, KeyRecord, SecretKey, accounts, create_key_with};
use tonic::Code;

use support::{Harness, Setup, error_code, tier, with_key};

/// The catalogue prices of model `m`: 0.22 / 0.005 / 0.44 USD per 1M tokens, cache writes at 0.275.
const PRICING: Pricing = Pricing {
    input_micros_per_mtok: 220_000,
    cached_input_micros_per_mtok: 5_000,
    output_micros_per_mtok: 440_000,
    cache_write_micros_per_mtok: 275_000,
};

/// The worst case of one admission below: 1000 prompt tokens at the dearest prompt price (the
/// cache-write price), 1000 completion tokens at the output price.
const RESERVE: i64 = 1000 * 275_000 + 1000 * 440_000;

fn admit(request_id: &str) -> AdmitRequest {
    AdmitRequest {
        model_id: "m".to_owned(),
        request_id: request_id.to_owned(),
        model: "m".into(),
        max_prompt_tokens: 1000,
        max_completion_tokens: 1000,
        reservation_ttl_ms: 60_000,
        streamed: false,
        fallbacks: vec![],
        retry: false,
    }
}

fn settle(request_id: &str, key_id: &str, i: u64) -> SettleRequest {
    SettleRequest {
        request_id: request_id.to_owned(),
        key_id: key_id.to_owned(),
        model_id: "m".to_owned(),
        usage: Some(Usage {
            prompt_tokens: 100 + i,
            cached_prompt_tokens: 30,
            cache_write_tokens: 20 + i % 7,
            completion_tokens: 50 + 3 * i,
            ..Default::default()
        }),
        outcome: Outcome::Succeeded as i32,
        ..Default::default()
    }
}

async fn scalar(db: &DatabaseConnection, sql: &str, key_id: &str) -> i64 {
    let stmt = accounts_statement(db, sql, key_id);
    let row = db.query_one(stmt).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

fn accounts_statement(db: &DatabaseConnection, sql: &str, key_id: &str) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => sql.replace('?', "$1"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, [key_id.into()])
}

/// The ledger's sums for `key_id` against the account row, and no reservation left.
async fn assert_books_balance(db: &DatabaseConnection, key_id: &str, credited: i64) -> i64 {
    let ledger_sum = scalar(
        db,
        "SELECT CAST(COALESCE(SUM(cost_picodollars), 0) AS BIGINT) FROM usage_ledger WHERE key_id = ?",
        key_id,
    )
    .await;
    let account = accounts::account(db, key_id).await.unwrap().unwrap();
    assert_eq!(account.spent_total_picodollars, ledger_sum);
    assert_eq!(account.spent_month_picodollars, ledger_sum);
    assert_eq!(account.reserved_picodollars, 0);
    assert_eq!(account.written_off_picodollars, 0);
    assert_eq!(account.credited_total_picodollars, credited);
    assert_eq!(account.balance_picodollars, Some(credited - ledger_sum));
    assert_eq!(
        scalar(
            db,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM reservations WHERE key_id = ?",
            key_id
        )
        .await,
        0
    );
    ledger_sum
}

pub async fn concurrent_admissions_never_overdraw(h: &Harness) {
    // Money for exactly 7 worst cases, and a bit: 40 admissions race for it.
    let balance = 7 * RESERVE + RESERVE / 2;
    let (record, secret) = prepaid_key(h, balance).await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let ids: Vec<String> = (0..40).map(|i| format!("chatcmpl-{run}-{i}")).collect();
    let admissions = join_all(ids.iter().map(|id| {
        let mut client = h.client.clone();
        let req = with_key(admit(id), secret.expose_secret());
        async move { client.admit(req).await }
    }))
    .await;
    let mut admitted = Vec::new();
    for (id, result) in ids.iter().zip(admissions) {
        match result {
            Ok(a) => {
                assert_eq!(a.into_inner().reserved_picodollars, RESERVE);
                admitted.push(id.clone());
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(error_code(&status).as_deref(), Some("insufficient_quota"));
            }
        }
    }
    assert_eq!(
        admitted.len(),
        7,
        "exactly the worst cases the balance covers"
    );
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.reserved_picodollars, 7 * RESERVE);
    assert_eq!(account.balance_picodollars, Some(balance));

    // All settle at once (each twice: one row, one debit), with their real, smaller costs.
    let settlements = join_all(admitted.iter().enumerate().flat_map(|(i, id)| {
        let req = settle(id, &record.id, i as u64);
        [req.clone(), req].map(|req| {
            let mut client = h.client.clone();
            async move {
                client
                    .settle(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .cost_picodollars
            }
        })
    }))
    .await;
    let reported: i64 = settlements.iter().step_by(2).sum();
    let ledger_sum = assert_books_balance(&h.db, &record.id, balance).await;
    assert_eq!(
        reported, ledger_sum,
        "the costs reported are the costs booked"
    );
}

#[tokio::test]
async fn concurrent_admissions_never_overdraw_on_sqlite() {
    let h = money_harness().await;
    concurrent_admissions_never_overdraw(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn monthly_budget_caps_spend_and_keys_without_money_reserve_nothing() {
    let h = money_harness().await;
    // A budget of one worst case and a tenth: the first request fits, and so does a second after
    // the first settled at its (much smaller) real cost; after two, what is left does not.
    let (budgeted, budget_secret) = create_key_with(
        &h.db,
        &h.tiers,
        &new_key(
            "wide",
            KeyMoney {
                balance_picodollars: None,
                monthly_budget_picodollars: Some(RESERVE + RESERVE / 10),
            },
        ),
    )
    .await
    .unwrap();
    let mut client = h.client.clone();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut admitted = 0;
    let err = loop {
        assert!(admitted < 10, "the budget never refused");
        let id = format!("chatcmpl-{run}-b{admitted}");
        match client
            .admit(with_key(admit(&id), budget_secret.expose_secret()))
            .await
        {
            Ok(_) => {
                client.settle(settle(&id, &budgeted.id, 0)).await.unwrap();
                admitted += 1;
            }
            Err(err) => break err,
        }
    };
    assert_eq!(admitted, 2);
    assert_eq!(error_code(&err).as_deref(), Some("insufficient_quota"));
    assert!(
        err.message().contains("monthly budget"),
        "{}",
        err.message()
    );

    // An unlimited key: admitted with nothing reserved and no reservation row.
    let (free, free_secret) =
        create_key_with(&h.db, &h.tiers, &new_key("wide", KeyMoney::default()))
            .await
            .unwrap();
    let admission = client
        .admit(with_key(
            admit("chatcmpl-free"),
            free_secret.expose_secret(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admission.reserved_picodollars, 0);
    assert_eq!(accounts::open_reservations(&h.db).await.unwrap(), 0);
    client
        .settle(settle("chatcmpl-free", &free.id, 1))
        .await
        .unwrap();
    let account = accounts::account(&h.db, &free.id).await.unwrap().unwrap();
    assert_eq!(account.balance_picodollars, None);
    assert!(
        account.spent_total_picodollars > 0,
        "spend is tracked for every key"
    );
    h.stop().await;
}

#[tokio::test]
async fn unsettled_reservations_are_released_at_restart() {
    let h = money_harness().await;
    let (record, secret) = prepaid_key(&h, 2 * RESERVE).await;
    let mut client = h.client.clone();
    for i in 0..2 {
        client
            .admit(with_key(
                admit(&format!("lost-{i}")),
                secret.expose_secret(),
            ))
            .await
            .unwrap();
    }
    let refused = client
        .admit(with_key(admit("lost-2"), secret.expose_secret()))
        .await
        .unwrap_err();
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("insufficient_quota"),
        "the third request finds the balance fully reserved: {refused:?}"
    );
    // The process "dies" with two requests in flight: they never settle.
    let h = h.restart().await;
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.reserved_picodollars, 0);
    assert_eq!(accounts::open_reservations(&h.db).await.unwrap(), 0);
    let mut client = h.client.clone();
    client
        .admit(with_key(admit("after-restart"), secret.expose_secret()))
        .await
        .unwrap();
    h.stop().await;
}

/// The same race on PostgreSQL, where the conditional `UPDATE` is what replicas share. Run by
/// `scripts/test.sh` with the server `scripts/services.sh` starts.
#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn concurrent_admissions_never_overdraw_on_postgres() {
    let h = money_setup().postgres().await;
    concurrent_admissions_never_overdraw(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn the_sweep_releases_only_expired_reservations() {
    let h = money_harness().await;
    let (record, secret) = prepaid_key(&h, 10 * RESERVE).await;
    let mut client = h.client.clone();
    let mut short = admit("short-lived");
    short.reservation_ttl_ms = 1;
    client
        .admit(with_key(short, secret.expose_secret()))
        .await
        .unwrap();
    client
        .admit(with_key(admit("long-lived"), secret.expose_secret()))
        .await
        .unwrap();
    // As a replica on a shared database would: only what expired before "now" (1 s ahead here).
    let released = accounts::release_expired(&h.db, chrono::Utc::now().timestamp_millis() + 1_000)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.reserved_picodollars, RESERVE);
    // Settling the swept request later still books its cost, and releases nothing twice.
    client
        .settle(settle("short-lived", &record.id, 0))
        .await
        .unwrap();
    client
        .settle(settle("long-lived", &record.id, 1))
        .await
        .unwrap();
    assert_books_balance(&h.db, &record.id, 10 * RESERVE).await;
    h.stop().await;
}

/// The money tests' service: one wide tier, keys refreshed every 50 ms, model `m` at [`PRICING`].
fn money_setup() -> Setup {
    Setup::new(vec![tier("wide", 10_000, 10_000)])
        .refresh(Duration::from_millis(50))
        .model("m", PRICING)
}

async fn money_harness() -> Harness {
    money_setup().sqlite().await
}

/// A key of the wide tier with a prepaid balance of `balance` picodollars.
async fn prepaid_key(h: &Harness, balance: i64) -> (KeyRecord, SecretKey) {
    let money = KeyMoney {
        balance_picodollars: Some(balance),
        monthly_budget_picodollars: None,
    };
    create_key_with(&h.db, &h.tiers, &new_key("wide", money))
        .await
        .unwrap()
}

/// A new key of `tier` with `money`.
fn new_key(tier: &str, money: KeyMoney) -> tollgate_billing::NewKey {
    tollgate_billing::NewKey {
        tier: tier.to_owned(),
        money,
        ..Default::default()
    }
}

/// Every outcome releases its hold: a failed and a cancelled request settle their reservation to
/// their real cost exactly like a successful one.
#[tokio::test]
async fn failed_and_cancelled_requests_release_their_reservations() {
    let h = money_harness().await;
    let (record, secret) = prepaid_key(&h, 3 * RESERVE).await;
    let mut client = h.client.clone();
    for (i, outcome) in [Outcome::Failed, Outcome::Cancelled]
        .into_iter()
        .enumerate()
    {
        let id = format!("end-{i}");
        client
            .admit(with_key(admit(&id), secret.expose_secret()))
            .await
            .unwrap();
        let held = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
        assert_eq!(held.reserved_picodollars, RESERVE, "{outcome:?}");
        let mut request = settle(&id, &record.id, i as u64);
        request.outcome = outcome as i32;
        client.settle(request).await.unwrap();
    }
    assert_books_balance(&h.db, &record.id, 3 * RESERVE).await;
    h.stop().await;
}

/// A real cost above what is left of the balance (an upstream that overran its limit) empties the
/// balance, never below zero, and books the excess as written off.
#[tokio::test]
async fn a_cost_above_the_balance_stops_it_at_zero_and_writes_off_the_rest() {
    let h = money_harness().await;
    let (record, secret) = prepaid_key(&h, RESERVE).await;
    let mut client = h.client.clone();
    client
        .admit(with_key(admit("overrun"), secret.expose_secret()))
        .await
        .unwrap();
    // Ten times the reserved completion: the upstream ignored max_tokens.
    let mut request = settle("overrun", &record.id, 0);
    if let Some(usage) = request.usage.as_mut() {
        usage.completion_tokens = 10_000;
    }
    let cost = client
        .settle(request)
        .await
        .unwrap()
        .into_inner()
        .cost_picodollars;
    assert!(cost > RESERVE, "{cost} must exceed the balance {RESERVE}");
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.balance_picodollars, Some(0));
    assert_eq!(account.written_off_picodollars, cost - RESERVE);
    // The reservation was the whole balance here: the excess over it is counted as well.
    assert_eq!(
        (
            account.over_reserved_picodollars,
            account.over_reserved_count
        ),
        (cost - RESERVE, 1)
    );
    assert_eq!(account.spent_total_picodollars, cost);
    assert_eq!(account.reserved_picodollars, 0);
    assert_eq!(
        account.credited_total_picodollars - account.spent_total_picodollars
            + account.written_off_picodollars,
        0
    );
    h.stop().await;
}

/// One Admit of `request_id` for the key `secret`.
async fn admit_for(
    h: &Harness,
    secret: &SecretKey,
    request_id: &str,
) -> Result<tollgate::v1::Admission, tonic::Status> {
    let mut client = h.client.clone();
    client
        .admit(with_key(admit(request_id), secret.expose_secret()))
        .await
        .map(tonic::Response::into_inner)
}

/// A retried Admit (the caller lost the answer) is answered as the first was and counts nothing
/// again: neither the monthly slot nor the money. With `restart`, it holds across a restart of
/// billing too (PostgreSQL: the reservation row answers, as replicas' holds are not released).
async fn a_repeated_admit_returns_the_same_admission_and_counts_once(h: Harness, restart: bool) {
    let (record, secret) = prepaid_key(&h, 10 * RESERVE).await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let id = |n: u32| format!("chatcmpl-{run}-{n}");
    let first = admit_for(&h, &secret, &id(1)).await.unwrap();
    let again = admit_for(&h, &secret, &id(1)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first.reserved_picodollars, RESERVE);
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.reserved_picodollars, RESERVE, "reserved once");
    // The tier allows two requests a month: the retry took no slot, so a second request fits and
    // a third does not.
    admit_for(&h, &secret, &id(2)).await.unwrap();
    let refused = admit_for(&h, &secret, &id(3)).await.unwrap_err();
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("monthly_quota_exceeded")
    );

    let h = if restart {
        let h = h.restart().await;
        // The caller's retry says so: the restarted billing remembers nothing of the first
        // attempt, and finds its reservation.
        let mut client = h.client.clone();
        let retried = AdmitRequest {
            retry: true,
            ..admit(&id(1))
        };
        let after = client
            .admit(with_key(retried, secret.expose_secret()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.reserved_picodollars, RESERVE);
        // A repeat that does not say it is one is not looked for, but its money is still held
        // once: the writer finds the reservation its insert would duplicate.
        let unflagged = admit_for(&h, &secret, &id(2)).await.unwrap();
        assert_eq!(unflagged.reserved_picodollars, RESERVE);
        let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
        assert_eq!(
            account.reserved_picodollars,
            2 * RESERVE,
            "still one hold each"
        );
        h
    } else {
        h
    };
    // Settled once each: one row each, the holds released.
    let mut client = h.client.clone();
    for (i, n) in [1, 2].into_iter().enumerate() {
        client
            .settle(settle(&id(n), &record.id, i as u64))
            .await
            .unwrap();
    }
    assert_books_balance(&h.db, &record.id, 10 * RESERVE).await;
    h.stop().await;
}

fn two_a_month() -> Setup {
    Setup::new(vec![tier("wide", 10_000, 2)])
        .refresh(Duration::from_millis(50))
        .model("m", PRICING)
}

#[tokio::test]
async fn a_repeated_admit_returns_the_same_admission_and_counts_once_on_sqlite() {
    let h = two_a_month().sqlite().await;
    a_repeated_admit_returns_the_same_admission_and_counts_once(h, false).await;
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn a_repeated_admit_returns_the_same_admission_and_counts_once_on_postgres() {
    let h = two_a_month().postgres().await;
    a_repeated_admit_returns_the_same_admission_and_counts_once(h, true).await;
}

/// A cost above its reservation on a prepaid key whose balance covers it is debited in full
/// (nothing written off) and counted: the excess in `over_reserved_picodollars`, once in
/// `over_reserved_count`. A cost within its reservation counts nothing.
#[tokio::test]
async fn a_cost_above_its_reservation_is_counted_not_absorbed() {
    let h = money_harness().await;
    let credited = 100 * RESERVE;
    let (record, secret) = prepaid_key(&h, credited).await;
    let mut client = h.client.clone();
    for id in ["within", "beyond"] {
        client
            .admit(with_key(admit(id), secret.expose_secret()))
            .await
            .unwrap();
    }
    let within = client
        .settle(settle("within", &record.id, 0))
        .await
        .unwrap()
        .into_inner()
        .cost_picodollars;
    let reserved = accounts::account(&h.db, &record.id)
        .await
        .unwrap()
        .unwrap()
        .reserved_picodollars;
    assert_eq!(reserved, RESERVE, "one reservation left, of the worst case");
    let mut beyond = settle("beyond", &record.id, 0);
    if let Some(usage) = beyond.usage.as_mut() {
        usage.completion_tokens = 10_000;
    }
    let cost = client
        .settle(beyond)
        .await
        .unwrap()
        .into_inner()
        .cost_picodollars;
    assert!(
        cost > reserved,
        "{cost} must exceed its reservation {reserved}"
    );
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.balance_picodollars, Some(credited - within - cost));
    assert_eq!(account.written_off_picodollars, 0);
    assert_eq!(
        (
            account.over_reserved_picodollars,
            account.over_reserved_count
        ),
        (cost - reserved, 1)
    );
    assert_eq!(account.reserved_picodollars, 0);
    // Operators see it in the key's Admin view.
    let listed = client
        .admin
        .list_keys(with_key(
            tollgate::v1::ListKeysRequest {},
            support::ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let view = &listed.keys[0];
    assert_eq!(
        (
            view.over_reserved_picodollars,
            view.over_reserved_count,
            view.over_reserved_usd.as_str()
        ),
        (
            cost - reserved,
            1,
            tollgate::money::format_picodollars(cost - reserved).as_str()
        )
    );
    h.stop().await;
}

/// A ledger row the database refuses (a trigger RAISEs for one request id) fails only its own
/// request: the rows batched with it are written row by row after the batch's retries, and the
/// refused one answers INTERNAL and keeps its reservation out of the expiry sweep, so the request
/// never ends free.
#[tokio::test]
async fn a_poisoned_ledger_row_fails_alone_and_keeps_its_reservation() {
    let h = money_harness().await;
    h.db.execute_unprepared(
        "CREATE TRIGGER poison BEFORE INSERT ON usage_ledger WHEN NEW.request_id = 'poisoned' \
         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
    )
    .await
    .unwrap();
    let credited = 100 * RESERVE;
    let (record, secret) = prepaid_key(&h, credited).await;
    let ids: Vec<String> = (0..20)
        .map(|i| format!("good-{i}"))
        .chain(["poisoned".to_owned()])
        .collect();
    for id in &ids {
        h.client
            .clone()
            .admit(with_key(admit(id), secret.expose_secret()))
            .await
            .unwrap();
    }
    // Settled together, so the poisoned row shares a batch with good ones.
    let answers = join_all(ids.iter().enumerate().map(|(i, id)| {
        let mut client = h.client.clone();
        let request = settle(id, &record.id, i as u64);
        async move { client.settle(request).await }
    }))
    .await;
    let (poisoned, good) = answers.split_last().unwrap();
    assert_eq!(poisoned.as_ref().unwrap_err().code(), Code::Internal);
    let spent: i64 = good
        .iter()
        .map(|a| a.as_ref().unwrap().get_ref().cost_picodollars)
        .sum();
    let count = |sql: &'static str| {
        let db = h.db.clone();
        async move {
            let row = db
                .query_one(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM usage_ledger").await, 20);
    let account = accounts::account(&h.db, &record.id).await.unwrap().unwrap();
    assert_eq!(account.spent_total_picodollars, spent);
    assert_eq!(
        account.reserved_picodollars, RESERVE,
        "the poisoned request's hold stays"
    );
    // The sweep of everything expired by now leaves it alone.
    accounts::release_expired(&h.db, i64::MAX - 1)
        .await
        .unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM reservations WHERE request_id = 'poisoned'").await,
        1
    );
    h.stop().await;
}

#[tokio::test]
async fn a_late_row_of_the_previous_month_keeps_this_months_spend() {
    let h = Harness::sqlite(tier("basic", 100, 100)).await;
    support::assert_a_late_row_keeps_the_months_spend(&h.db).await;
    h.stop().await;
}
