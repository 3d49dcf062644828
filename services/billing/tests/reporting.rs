//! `Billing.GetUsage` over a date range (daily, per-model costs), `Billing.GetSubscription`,
//! `Billing.ListRequests` (a key's own rows, paged), `Billing.RotateOwnKey` and
//! `Admin.GetUsageReport` (all keys), through the generated client over a real tonic server on 127.0.0.1:0. Ledger rows of past
//! days are inserted into the SQLite file directly: the service has no clock to turn back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{Duration as Days, NaiveDate, Utc};
use sea_orm::{ActiveValue, EntityTrait};
use tollgate::error::ApiError;
use tollgate::v1::{
    AuthenticateRequest, GetSubscriptionRequest, GetUsageRequest, ListRequestsRequest,
    RotateOwnKeyRequest, UsageReportRequest,
};
use tollgate_billing::entity::usage_ledger;
use tollgate_billing::{NewKey, create_key_with};
use tonic::Code;

use support::{ADMIN_TOKEN, Harness, error_code, error_param, tier, with_key};

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

async fn new_key(h: &Harness, name: &str) -> (String, String) {
    let new = NewKey {
        tier: "pro".into(),
        name: Some(name.into()),
        ..Default::default()
    };
    let (key, secret) = create_key_with(&h.db, &h.tiers, &new).await.unwrap();
    (key.id, secret.expose_secret().to_owned())
}

#[tokio::test]
async fn a_key_lists_only_its_own_requests_newest_first_page_by_page() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let (mine, secret) = new_key(&h, "mine").await;
    let (theirs, _) = new_key(&h, "theirs").await;
    let t0 = midnight_ms(Utc::now().date_naive());
    for i in 0..5 {
        insert_row(
            &h,
            &mine,
            &format!("mine-{i}"),
            "deepseek-v4-flash",
            t0 + i,
            10 + i,
        )
        .await;
        insert_row(
            &h,
            &theirs,
            &format!("theirs-{i}"),
            "deepseek-v4-pro",
            t0 + i,
            99,
        )
        .await;
    }
    let page = |cursor: String| {
        let mut billing = h.client.billing.clone();
        let secret = secret.clone();
        async move {
            billing
                .list_requests(with_key(
                    ListRequestsRequest {
                        page_size: 2,
                        cursor,
                    },
                    &secret,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let got = page(cursor).await.unwrap();
        assert!(got.requests.len() <= 2);
        seen.extend(got.requests.iter().map(|r| {
            assert_eq!(r.model, "deepseek-v4-flash");
            assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 5));
            assert_eq!(r.status, "succeeded");
            (r.request_id.clone(), r.cost_picodollars)
        }));
        cursor = got.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        (0..5)
            .rev()
            .map(|i| (format!("mine-{i}"), 10 + i))
            .collect::<Vec<_>>()
    );
    let err = page("not-a-cursor".into()).await.unwrap_err();
    assert_eq!(error_param(&err).as_deref(), Some("cursor"));
    let err = h
        .client
        .billing
        .clone()
        .list_requests(tonic::Request::new(ListRequestsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    h.stop().await;
}

#[tokio::test]
async fn a_key_rotates_itself_once_a_minute_and_its_old_secret_stops_at_once() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let (id, old) = new_key(&h, "leaked").await;
    insert_row(&h, &id, "before", "deepseek-v4-flash", 1_000, 5).await;
    // Cached before the rotation: the cache must forget it at once.
    h.client
        .clone()
        .authenticate(with_key(AuthenticateRequest {}, &old))
        .await
        .unwrap();
    let rotated = h
        .client
        .billing
        .clone()
        .rotate_own_key(with_key(RotateOwnKeyRequest {}, &old))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, old);
    assert!(
        rotated
            .secret
            .starts_with(rotated.key_prefix.trim_end_matches("..."))
    );
    assert_eq!(rotated.tier, "pro");
    let refused = h
        .client
        .clone()
        .authenticate(with_key(AuthenticateRequest {}, &old))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let info = h
        .client
        .clone()
        .authenticate(with_key(AuthenticateRequest {}, &rotated.secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.key_id, id);
    // The same key, so the same history.
    let page = h
        .client
        .billing
        .clone()
        .list_requests(with_key(ListRequestsRequest::default(), &rotated.secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.requests[0].request_id, "before");
    let again = h
        .client
        .billing
        .clone()
        .rotate_own_key(with_key(RotateOwnKeyRequest {}, &rotated.secret))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&again).as_deref(), Some("rate_limit_exceeded"));
    assert!(
        again.message().contains("once a minute"),
        "{}",
        again.message()
    );
    h.stop().await;
}

#[tokio::test]
async fn the_admin_report_sums_all_keys_by_day_and_ranks_top_spenders() {
    let h = Harness::sqlite(tier("pro", 30, 3000)).await;
    let (a, _) = new_key(&h, "alpha").await;
    let (b, _) = new_key(&h, "beta").await;
    let (c, _) = new_key(&h, "gamma").await;
    let day1 = NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
    let d1 = midnight_ms(day1);
    let d2 = d1 + 86_400_000;
    insert_row(&h, &a, "a1", "deepseek-v4-flash", d1 + 1, 100).await;
    insert_row(&h, &a, "a2", "deepseek-v4-pro", d2 + 1, 50).await;
    insert_row(&h, &b, "b1", "deepseek-v4-pro", d1 + 2, 400).await;
    insert_row(&h, &c, "c1", "deepseek-v4-flash", d2 + 3, 20).await;
    // Outside the range.
    insert_row(&h, &c, "c2", "deepseek-v4-flash", d1 - 1, 1 << 40).await;
    let ask = |top_keys: u32, token: &str| {
        let mut admin = h.client.admin.clone();
        let request = with_key(
            UsageReportRequest {
                start_date: day1.to_string(),
                end_date: (day1 + Days::days(2)).to_string(),
                top_keys,
            },
            token,
        );
        async move {
            admin
                .get_usage_report(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let report = ask(2, ADMIN_TOKEN).await.unwrap();
    assert_eq!(report.total_cost_picodollars, 570);
    assert_eq!(report.total_requests, 4);
    let days: Vec<_> = report
        .daily_costs
        .iter()
        .map(|d| {
            let items: Vec<_> = d
                .line_items
                .iter()
                .map(|i| (i.model.as_str(), i.requests, i.cost_picodollars))
                .collect();
            (d.date.as_str(), d.cost_picodollars, items)
        })
        .collect();
    assert_eq!(
        days,
        [
            (
                "2026-03-09",
                500,
                vec![("deepseek-v4-flash", 1, 100), ("deepseek-v4-pro", 1, 400)]
            ),
            (
                "2026-03-10",
                70,
                vec![("deepseek-v4-flash", 1, 20), ("deepseek-v4-pro", 1, 50)]
            ),
        ]
    );
    let top: Vec<_> = report
        .top_keys
        .iter()
        .map(|k| {
            (
                k.name.as_str(),
                k.id.as_str(),
                k.requests,
                k.cost_picodollars,
            )
        })
        .collect();
    assert_eq!(
        top,
        [("beta", b.as_str(), 1, 400), ("alpha", a.as_str(), 2, 150)]
    );
    assert!(report.top_keys[0].prefix.starts_with("sk-"));
    let err = ask(101, ADMIN_TOKEN).await.unwrap_err();
    assert_eq!(error_param(&err).as_deref(), Some("top_keys"));
    let (_, api_key) = new_key(&h, "not-an-operator").await;
    let err = ask(2, &api_key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_code(&err).as_deref(), Some("invalid_admin_token"));
    h.stop().await;
}
