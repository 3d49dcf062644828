//! `Billing.GetUsage` over a date range (daily, per-model costs) and `Billing.GetSubscription`,
//! through the generated client over a real tonic server on 127.0.0.1:0. Ledger rows of past
//! days are inserted into the SQLite file directly: the service has no clock to turn back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{Duration as Days, NaiveDate, Utc};
use sea_orm::{ActiveValue, EntityTrait};
use tollgate::error::ApiError;
use tollgate::v1::{GetSubscriptionRequest, GetUsageRequest};
use tollgate_billing::entity::usage_ledger;
use tollgate_billing::{NewKey, create_key_with};
use tonic::Code;

use support::{Harness, tier, with_key};

fn midnight_ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

async fn insert_row(
    h: &Harness,
    key_id: &str,
    request_id: &str,
    model: &str,
    at_ms: i64,
    cost: i64,
) {
    let period = chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap()
        .format("%Y-%m")
        .to_string();
    usage_ledger::Entity::insert(usage_ledger::ActiveModel {
        id: ActiveValue::NotSet,
        request_id: ActiveValue::Set(request_id.to_owned()),
        key_id: ActiveValue::Set(key_id.to_owned()),
        requested_model: ActiveValue::Set(model.to_owned()),
        model_id: ActiveValue::Set(model.to_owned()),
        provider: ActiveValue::Set("deepseek".to_owned()),
        upstream_model: ActiveValue::Set(model.to_owned()),
        prompt_tokens: ActiveValue::Set(10),
        cached_prompt_tokens: ActiveValue::Set(0),
        completion_tokens: ActiveValue::Set(5),
        reasoning_tokens: ActiveValue::Set(0),
        cost_picodollars: ActiveValue::Set(cost),
        outcome: ActiveValue::Set("succeeded".to_owned()),
        streamed: ActiveValue::Set(false),
        created_at: ActiveValue::Set(at_ms),
        period: ActiveValue::Set(period),
        cache_write_tokens: ActiveValue::Set(0),
        estimated: ActiveValue::Set(false),
        deployment: ActiveValue::NotSet,
        attempts: ActiveValue::NotSet,
    })
    .exec_without_returning(&h.db)
    .await
    .unwrap();
}

fn range(start: NaiveDate, end: NaiveDate) -> GetUsageRequest {
    GetUsageRequest {
        start_date: start.to_string(),
        end_date: end.to_string(),
    }
}

#[tokio::test]
async fn usage_reports_daily_costs_by_model_over_a_date_range() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let new = NewKey {
        tier: "pro".into(),
        ..Default::default()
    };
    let (key, secret) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    let secret = secret.expose_secret();
    let day1 = NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
    let day2 = day1 + Days::days(1);
    let (d1, d2) = (midnight_ms(day1), midnight_ms(day2));
    insert_row(
        &h,
        &key.id,
        "a",
        "deepseek-v4-flash",
        d1 + 1_000,
        1_000_000_000,
    )
    .await;
    insert_row(&h, &key.id, "b", "deepseek-v4-flash", d2 - 1, 7).await;
    insert_row(
        &h,
        &key.id,
        "c",
        "deepseek-v4-pro",
        d1 + 2_000,
        30_000_000_000,
    )
    .await;
    insert_row(&h, &key.id, "d", "deepseek-v4-pro", d2 + 5, 11).await;
    // Outside the range on either side, and another key's row inside it.
    insert_row(&h, &key.id, "e", "deepseek-v4-pro", d1 - 1, 1 << 40).await;
    insert_row(
        &h,
        &key.id,
        "f",
        "deepseek-v4-pro",
        d2 + 86_400_000,
        1 << 41,
    )
    .await;
    insert_row(&h, "someone-else", "g", "deepseek-v4-pro", d1 + 5, 1 << 42).await;

    let report = h
        .client
        .clone()
        .get_usage(with_key(range(day1, day2 + Days::days(1)), secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.start_date, "2026-03-09");
    assert_eq!(report.end_date, "2026-03-11");
    let days: Vec<_> = report
        .daily_costs
        .iter()
        .map(|d| {
            let items: Vec<_> = d
                .line_items
                .iter()
                .map(|i| (i.model.as_str(), i.requests, i.cost_picodollars))
                .collect();
            (d.timestamp, d.date.as_str(), items, d.cost_picodollars)
        })
        .collect();
    assert_eq!(
        days,
        [
            (
                d1 / 1000,
                "2026-03-09",
                vec![
                    ("deepseek-v4-flash", 2, 1_000_000_007),
                    ("deepseek-v4-pro", 1, 30_000_000_000)
                ],
                31_000_000_007
            ),
            (
                d2 / 1000,
                "2026-03-10",
                vec![("deepseek-v4-pro", 1, 11)],
                11
            ),
        ]
    );
    assert_eq!(report.total_cost_picodollars, 31_000_000_018);
    assert_eq!(report.total_requests, 4);
    assert_eq!(report.total_prompt_tokens, 40);
    assert_eq!(report.total_completion_tokens, 20);
    // The quota counters are this month's, not the range's.
    assert_eq!(report.monthly_limit, 3000);

    // A day without requests is listed, empty.
    let report = h
        .client
        .clone()
        .get_usage(with_key(
            range(day1 - Days::days(2), day1 - Days::days(1)),
            secret,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.daily_costs.len(), 1);
    assert!(report.daily_costs[0].line_items.is_empty());
    assert_eq!(report.total_cost_picodollars, 0);

    // Without dates: this month up to today.
    let report = h.usage(secret).await;
    let today = Utc::now().date_naive();
    assert_eq!(report.end_date, (today + Days::days(1)).to_string());
    assert!(report.start_date.ends_with("-01"));
    assert_eq!(
        report.daily_costs.len() as i64,
        (today + Days::days(1)
            - NaiveDate::parse_from_str(&report.start_date, "%Y-%m-%d").unwrap())
        .num_days()
    );
    h.stop().await;
}

#[tokio::test]
async fn usage_ranges_are_validated_naming_the_parameter() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let new = NewKey {
        tier: "pro".into(),
        ..Default::default()
    };
    let (_, secret) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    for (start, end, param) in [
        ("2026-03-xx", "2026-03-10", "start_date"),
        ("2026-03-01", "03/10/2026", "end_date"),
        ("2026-03-10", "2026-03-10", "end_date"),
        ("2026-03-10", "2026-03-01", "end_date"),
        ("2026-01-01", "2026-06-01", "end_date"),
        ("2026-01-01", "", "end_date"),
    ] {
        let err = h
            .client
            .clone()
            .get_usage(with_key(
                GetUsageRequest {
                    start_date: start.into(),
                    end_date: end.into(),
                },
                secret.expose_secret(),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{start} {end}");
        assert_eq!(
            ApiError::from_status(&err).param.as_deref(),
            Some(param),
            "{start} {end}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn subscription_reports_the_tier_limits_and_expiry() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let expires = Utc::now() + Days::days(30);
    let new = NewKey {
        tier: "pro".into(),
        expires_at: Some(expires),
        monthly_requests: Some(40),
        ..Default::default()
    };
    let (key, secret) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    let sub = h
        .client
        .billing
        .clone()
        .get_subscription(with_key(GetSubscriptionRequest {}, secret.expose_secret()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.tier, "pro");
    assert_eq!(sub.key_prefix, key.display_prefix());
    assert_eq!((sub.rpm_limit, sub.monthly_limit), (30, 40));
    assert_eq!(sub.expires_at, Some(expires.timestamp()));

    let err = h
        .client
        .billing
        .clone()
        .get_subscription(tonic::Request::new(GetSubscriptionRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    h.stop().await;
}
