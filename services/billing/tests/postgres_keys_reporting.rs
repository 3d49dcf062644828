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
        usage_ledger::Entity::insert(usage_ledger::ActiveModel {
            id: ActiveValue::NotSet,
            request_id: ActiveValue::Set(format!("pg-{}-{i}", key.id)),
            key_id: ActiveValue::Set(key.id.clone()),
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
            created_at: ActiveValue::Set(midnight + offset),
            period: ActiveValue::Set("2026-02".into()),
            cache_write_tokens: ActiveValue::Set(0),
            estimated: ActiveValue::Set(false),
            deployment: ActiveValue::NotSet,
            attempts: ActiveValue::NotSet,
        })
        .exec_without_returning(&h.db)
        .await
        .unwrap();
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
