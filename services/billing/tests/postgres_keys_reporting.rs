//! Key expiry, overrides, rotation and the daily usage report on PostgreSQL: the new columns and
//! the grouped-by-day query must work there as on SQLite. Runs only when
//! `TOLLGATE_TEST_POSTGRES_URL` names a database; everything it writes is scoped to its own keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sea_orm::{ActiveValue, EntityTrait};
use tollgate::v1::GetUsageRequest;
use tollgate_billing::entity::usage_ledger;
use tollgate_billing::{KeyUpdate, NewKey, create_key_with, rotate_key, update_key};

use support::{Setup, tier, with_key};

#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn keys_and_daily_reports_work_on_postgres() {
    let h = Setup::new(vec![tier("pg-pro", 30, 3000)])
        .refresh(Duration::from_millis(50))
        .postgres()
        .await;
    let new = NewKey {
        tier: "pg-pro".into(),
        expires_at: Some(chrono::Utc::now() + chrono::Duration::days(1)),
        rpm: Some(2),
        monthly_requests: Some(5),
        ..Default::default()
    };
    let (key, _) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    assert_eq!(key.overrides.rpm.map(|r| r.get()), Some(2));
    let update = KeyUpdate {
        expires_at: Some(None),
        rpm: Some(None),
        ..Default::default()
    };
    let key = update_key(&h.db, &h.tiers, &key.id, &update).await.unwrap();
    assert_eq!((key.expires_at, key.overrides.rpm), (None, None));
    assert_eq!(key.overrides.monthly_requests, Some(5));
    let (key, secret) = rotate_key(&h.db, &key.id).await.unwrap();

    let day = chrono::NaiveDate::from_ymd_opt(2026, 2, 3).unwrap();
    let midnight = day
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    for (i, (model, offset, cost)) in [("a", 0, 5), ("b", 1, 7), ("a", 86_399_999, 11)]
        .into_iter()
        .enumerate()
    {
        insert_row(
            &h.db,
            &key.id,
            format!("pg-{}-{i}", key.id),
            model,
            midnight + offset,
            cost,
        )
        .await;
    }
    let report = h
        .client
        .clone()
        .get_usage(with_key(
            GetUsageRequest {
                start_date: "2026-02-03".into(),
                end_date: "2026-02-05".into(),
            },
            secret.expose_secret(),
        ))
        .await
        .unwrap()
        .into_inner();
    let items: Vec<_> = report.daily_costs[0]
        .line_items
        .iter()
        .map(|i| (i.model.as_str(), i.requests, i.cost_picodollars))
        .collect();
    assert_eq!(items, [("a", 2, 16), ("b", 1, 7)]);
    assert!(report.daily_costs[1].line_items.is_empty());
    assert_eq!(report.total_cost_picodollars, 23);
    assert_eq!(report.monthly_limit, 5);
    h.stop().await;
}

/// The console's queries on PostgreSQL: a key's own requests, newest first and keyset-paged
/// (`ListRequests`), and the admin report's days and top spenders (`GetUsageReport`), whose
/// grouped and ordered SQL must run there as on SQLite. Its rows sit on days no other test uses.
#[tokio::test]
#[ignore = "needs a PostgreSQL server in TOLLGATE_TEST_POSTGRES_URL"]
async fn the_consoles_request_list_and_admin_report_work_on_postgres() {
    use tollgate::v1::{ListRequestsRequest, UsageReportRequest};

    let h = Setup::new(vec![tier("pg-console", 30, 3000)])
        .postgres()
        .await;
    let new = NewKey {
        tier: "pg-console".into(),
        ..Default::default()
    };
    let (mine, secret) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    let (other, _) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    // A day of its own, somewhere after 2100.
    let offset = u64::from(uuid::Uuid::now_v7().as_u128() as u16);
    let day = chrono::NaiveDate::from_ymd_opt(2100, 1, 1).unwrap() + chrono::Days::new(offset);
    let midnight = day
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let rows = [
        (&mine.id, "a", 1, 5),
        (&mine.id, "b", 2, 7),
        (&other.id, "a", 3, 40),
        (&mine.id, "a", 4, 11),
    ];
    for (i, (key_id, model, at, cost)) in rows.into_iter().enumerate() {
        insert_row(
            &h.db,
            key_id,
            format!("pgc-{}-{i}", mine.id),
            model,
            midnight + at,
            cost,
        )
        .await;
    }
    // The key's own rows, two per page, newest first, never the other key's.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..4 {
        let page = h
            .client
            .billing
            .clone()
            .list_requests(with_key(
                ListRequestsRequest {
                    page_size: 2,
                    cursor,
                },
                secret.expose_secret(),
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.requests.iter().map(|r| r.cost_picodollars));
        cursor = page.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(seen, [11, 7, 5]);
    // Both keys' day, and the top spender first.
    let report = h
        .client
        .admin
        .clone()
        .get_usage_report(with_key(
            UsageReportRequest {
                start_date: day.to_string(),
                end_date: (day + chrono::Days::new(1)).to_string(),
                top_keys: 2,
            },
            support::ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (report.total_requests, report.total_cost_picodollars),
        (4, 63)
    );
    let top: Vec<_> = report
        .top_keys
        .iter()
        .map(|k| (k.id.clone(), k.cost_picodollars))
        .collect();
    assert_eq!(top, [(other.id.clone(), 40), (mine.id.clone(), 23)]);
    h.stop().await;
}

/// One succeeded ledger row of 1 prompt and 1 completion token, in the month of `created_at`.
async fn insert_row(
    db: &sea_orm::DatabaseConnection,
    key_id: &str,
    request_id: String,
    model: &str,
    created_at: i64,
    cost: i64,
) {
    let period = chrono::DateTime::from_timestamp_millis(created_at)
        .unwrap()
        .format("%Y-%m")
        .to_string();
    usage_ledger::Entity::insert(usage_ledger::ActiveModel {
        id: ActiveValue::NotSet,
        request_id: ActiveValue::Set(request_id),
        key_id: ActiveValue::Set(key_id.to_owned()),
        requested_model: ActiveValue::Set(model.into()),
        model_id: ActiveValue::Set(model.into()),
        provider: ActiveValue::Set("p".into()),
        upstream_model: ActiveValue::Set(model.into()),
        prompt_tokens: ActiveValue::Set(1),
        cached_prompt_tokens: ActiveValue::Set(0),
        completion_tokens: ActiveValue::Set(1),
        reasoning_tokens: ActiveValue::Set(0),
        cost_picodollars: ActiveValue::Set(cost),
        outcome: ActiveValue::Set("succeeded".into()),
        streamed: ActiveValue::Set(false),
        created_at: ActiveValue::Set(created_at),
        period: ActiveValue::Set(period),
        cache_write_tokens: ActiveValue::Set(0),
        estimated: ActiveValue::Set(false),
        deployment: ActiveValue::NotSet,
        attempts: ActiveValue::NotSet,
    })
    .exec_without_returning(db)
    .await
    .unwrap();
}
